"""The one settings object. Only this module reads the environment.

Every field can be set as ``BAOKAN_<FIELD>`` (e.g. ``BAOKAN_DATA_DIR``) or in a
``.env`` / ``baokan.env`` file in the working directory. Secrets are kept as
``SecretStr`` so they never print.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from rag.errors import ConfigError


def _default_data_dir() -> Path:
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "baokan"


class Settings(BaseSettings):
    """Baokan settings; see the README's *Settings* table for examples."""

    model_config = SettingsConfigDict(
        env_prefix="BAOKAN_",
        env_file=(".env", "baokan.env"),
        env_file_encoding="utf-8",
        extra="forbid",
        validate_default=True,
    )

    # --- storage -------------------------------------------------------------
    data_dir: Path = Field(
        default_factory=_default_data_dir,
        description="Where the Chroma store, keyword index and ingest manifest live.",
    )
    chroma_url: str | None = Field(
        default=None,
        description="URL of a Chroma server (`chroma run`), e.g. http://127.0.0.1:8000. "
        "Unset: an embedded PersistentClient under data_dir.",
    )
    collection: str = Field(default="baokan", description="Chroma collection name.")

    # --- embedding -----------------------------------------------------------
    embedder: str = Field(
        default="use-multilingual",
        description="Embedder backend: 'use-multilingual' (bundled, Chinese+English), "
        "'minilm' (bundled, English only) or 'sentence-transformers' (any model in embed_model).",
    )
    embed_model: str | None = Field(
        default=None,
        description="Local path or hub name for the 'sentence-transformers' embedder.",
    )
    embed_threads: int = Field(
        default_factory=lambda: max(1, os.cpu_count() or 1),
        ge=1,
        description="CPU threads for embedding (the USE embedder is ~8x slower when oversubscribed).",
    )
    embed_batch_size: int = Field(default=64, ge=1, description="Passages per embedding batch.")
    ingest_batch: int = Field(
        default=1024,
        ge=1,
        description="Passages per ingestion write batch (one Chroma upsert and one SQLite transaction; "
        "the unit a killed run redoes). 1024 spends ~12% less in Chroma than 256.",
    )
    embed_processes: int = Field(
        default=-1,
        ge=-1,
        le=32,
        description="Worker processes that embed during ingestion (one BLAS thread each, "
        "embed_threads split among them). -1: one per core, at most 8, for runs of 500+ files on CPU; "
        "0: embed in the ingesting process; N: always N workers.",
    )
    device: str = Field(default="cpu", description="Torch device for sentence-transformers models: cpu, cuda, auto.")

    # --- retrieval -----------------------------------------------------------
    retrieval: Literal["hybrid", "dense", "bm25"] = Field(
        default="hybrid", description="Which indexes answer a search."
    )
    top_k: int = Field(default=5, ge=1, le=100, description="Articles returned per search.")
    passages_per_article: int = Field(
        default=3, ge=1, le=20, description="Best passages kept per article (stops crowding)."
    )
    candidates: int = Field(default=60, ge=1, le=2000, description="Passages fetched from each index before fusion.")
    bm25_postings_budget: int = Field(
        default=100_000,
        ge=0,
        description="On large indexes a keyword query keeps its rarest terms while their document counts "
        "sum to at most this (FTS5 scores every posting: 114 -> 56 ms p50 at 1M passages, top-10 overlap "
        "0.96 with exact BM25). 0: always use every term.",
    )
    rrf_k: int = Field(default=60, ge=1, description="Reciprocal-rank-fusion constant.")
    min_evidence: float = Field(
        default=0.35,
        ge=0.0,
        le=1.0,
        description="Evidence score below which Baokan refuses before answering.",
    )

    # --- answering -----------------------------------------------------------
    llm: str = Field(
        default="extractive",
        description="Answer backend: 'extractive' (no LLM), 'local' (llama.cpp GGUF), 'openai'.",
    )
    llm_model_path: Path | None = Field(
        default=None,
        description="GGUF file for the 'local' backend; unset: the bundled SmolLM2-135M.",
    )
    openai_base_url: str = Field(
        default="https://api.openai.com/v1",
        description="Base URL of any OpenAI-compatible server.",
    )
    openai_model: str = Field(default="gpt-4o-mini", description="Model name on that server.")
    openai_api_key: SecretStr | None = Field(
        default=None, description="API key (from the environment or a settings file only)."
    )
    llm_timeout: float = Field(default=60.0, gt=0, description="Seconds before an LLM call fails.")
    llm_max_tokens: int = Field(default=400, ge=16, description="Most tokens an answer may use.")
    llm_temperature: float = Field(default=0.1, ge=0.0, le=2.0, description="Sampling temperature.")
    llm_fallback: bool = Field(
        default=False,
        description="When the LLM fails, answer with the extractive backend instead.",
    )
    llm_context_size: int = Field(default=4096, ge=512, description="Context for the local model.")
    prompts_dir: Path | None = Field(
        default=None,
        description="Folder with answer_{en,zh}.txt and rewrite_{en,zh}.txt to use instead of the shipped "
        "prompts (try a prompt without editing the installed package).",
    )

    # --- serving -------------------------------------------------------------
    host: str = Field(default="127.0.0.1", description="Address the UI binds to.")
    port: int = Field(default=7860, ge=1, le=65535, description="UI port.")
    auth: SecretStr | None = Field(
        default=None, description="'user:password' pairs, comma-separated, for the UI login."
    )
    allow_public: bool = Field(
        default=False,
        description="Allow a non-loopback host without auth (explicit opt-in).",
    )

    @field_validator("chroma_url")
    @classmethod
    def _check_url(cls, v: str | None) -> str | None:
        if v in (None, ""):
            return None
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https:// (got {v!r})")
        return v.rstrip("/")

    @field_validator("openai_base_url")
    @classmethod
    def _check_base_url(cls, v: str) -> str:
        if not v.startswith(("http://", "https://")):
            raise ValueError(f"must start with http:// or https:// (got {v!r})")
        return v.rstrip("/")

    @property
    def chroma_dir(self) -> Path:
        return self.data_dir / "chroma"

    @property
    def index_path(self) -> Path:
        """SQLite file holding the keyword index and the ingest manifest."""
        return self.data_dir / "baokan.sqlite3"


def get_settings(overrides: Settings | dict[str, Any] | None = None) -> Settings:
    """Build settings from the environment plus explicit overrides.

    Validation problems become a ``ConfigError`` naming the field and its
    ``BAOKAN_`` variable, so the CLI can print one clear line.
    """
    if isinstance(overrides, Settings):
        return overrides
    unknown = sorted(
        k for k in os.environ if k.startswith("BAOKAN_") and k[len("BAOKAN_") :].lower() not in Settings.model_fields
    )
    if unknown:
        raise ConfigError(
            f"Unknown setting {', '.join(unknown)}.",
            "Valid settings: " + ", ".join(f"BAOKAN_{n.upper()}" for n in sorted(Settings.model_fields)) + ".",
        )
    try:
        return Settings(**(overrides or {}))
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            name = ".".join(str(p) for p in err["loc"]) or "settings"
            problems.append(f"{name} (BAOKAN_{name.upper()}): {err['msg']}")
        valid = ", ".join(sorted(Settings.model_fields))
        raise ConfigError(
            "Invalid setting: " + "; ".join(problems) + ".",
            f"Valid settings: {valid}.",
        ) from None
