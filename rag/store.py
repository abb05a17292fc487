"""Vector stores. Chroma (embedded or client-server) is the one shipped backend;
this is the only module that imports chromadb.

Chroma keeps only vectors and the few fields filters need (article, date,
page, language); passage text and full metadata live in the keyword index's
SQLite file, so Chroma does not build a second full-text index on ingest.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol
from urllib.parse import urlparse

import numpy as np

from rag.config import Settings
from rag.errors import StoreError
from rag.types import Passage, SearchFilter, date_to_int

os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")
logging.getLogger("chromadb.telemetry").setLevel(logging.CRITICAL)

import chromadb  # noqa: E402
from chromadb.api.types import Documents, EmbeddingFunction, Embeddings  # noqa: E402
from chromadb.config import Settings as ChromaSettings  # noqa: E402

_BATCH = 1000


class VectorStore(Protocol):
    """Nearest-neighbour search over passage vectors, with date/page filters."""

    def add(self, passages: Sequence[Passage], vectors: np.ndarray) -> None: ...

    def delete_article(self, article_id: str) -> None: ...

    def query(self, vector: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[tuple[str, float]]:
        """(passage key, cosine similarity) best first."""
        ...

    def count(self) -> int: ...


class _RefuseToEmbed(EmbeddingFunction[Documents]):
    """Handed to Chroma so its default embedder (which downloads a model) never loads.

    Baokan always passes vectors itself; if anything ever asks Chroma to embed
    text, this fails loudly instead of fetching weights from the network.
    """

    def __init__(self) -> None:
        pass

    def __call__(self, input: Documents) -> Embeddings:
        raise StoreError("Chroma was asked to embed text itself.", "Pass Baokan's vectors.")

    @staticmethod
    def name() -> str:
        return "baokan-external"

    def get_config(self) -> dict[str, Any]:
        return {}

    @staticmethod
    def build_from_config(config: dict[str, Any]) -> _RefuseToEmbed:
        return _RefuseToEmbed()


class ChromaStore:
    """Chroma collection with cosine space; embedded or talking to `chroma run`."""

    def __init__(self, settings: Settings, embedder_name: str, dim: int) -> None:
        chroma_settings = ChromaSettings(anonymized_telemetry=False, allow_reset=False)
        try:
            if settings.chroma_url:
                u = urlparse(settings.chroma_url)
                self.client: Any = chromadb.HttpClient(
                    host=u.hostname or "127.0.0.1",
                    port=u.port or (443 if u.scheme == "https" else 8000),
                    ssl=u.scheme == "https",
                    settings=chroma_settings,
                )
                self.client.heartbeat()
            else:
                settings.chroma_dir.mkdir(parents=True, exist_ok=True)
                self.client = chromadb.PersistentClient(path=str(settings.chroma_dir), settings=chroma_settings)
            self.collection = self.client.get_or_create_collection(
                name=settings.collection,
                embedding_function=_RefuseToEmbed(),  # type: ignore[arg-type]
                metadata={"hnsw:space": "cosine", "embedder": embedder_name, "dim": dim},
            )
        except StoreError:
            raise
        except Exception as exc:
            where = settings.chroma_url or str(settings.chroma_dir)
            raise StoreError(
                f"Cannot open the Chroma store at {where}: {exc.__class__.__name__}: {exc}.",
                "Start the server (`chroma run --path DIR`) or unset BAOKAN_CHROMA_URL."
                if settings.chroma_url
                else "Check that BAOKAN_DATA_DIR is a writable folder.",
            ) from None
        stored = (self.collection.metadata or {}).get("embedder")
        if stored and stored != embedder_name:
            raise StoreError(
                f"The index at {settings.chroma_url or settings.data_dir} was built with embedder "
                f"{stored!r}, not {embedder_name!r}.",
                "Use the same BAOKAN_EMBEDDER, or a new BAOKAN_DATA_DIR / BAOKAN_COLLECTION.",
            )

    def add(self, passages: Sequence[Passage], vectors: np.ndarray) -> None:
        for i in range(0, len(passages), _BATCH):
            chunk = passages[i : i + _BATCH]
            self._call(
                self.collection.upsert,
                ids=[p.key for p in chunk],
                embeddings=vectors[i : i + _BATCH],
                metadatas=[_meta(p) for p in chunk],
            )

    def delete_article(self, article_id: str) -> None:
        self._call(self.collection.delete, where={"article_id": article_id})

    def query(self, vector: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[tuple[str, float]]:
        if k <= 0:
            return []
        res = self._call(
            self.collection.query,
            query_embeddings=[vector],
            n_results=k,
            where=_where(flt),
            include=["distances"],
        )
        ids = res["ids"][0] if res["ids"] else []
        dists = res["distances"][0] if res.get("distances") else []
        return [(i, 1.0 - float(d)) for i, d in zip(ids, dists, strict=False)]

    def count(self) -> int:
        return int(self._call(self.collection.count))

    def ids(self, page: int = 5000) -> Iterator[str]:
        """Every stored passage key, paged (to check the store against the keyword index)."""
        offset = 0
        while True:
            res = self._call(self.collection.get, include=[], limit=page, offset=offset)
            ids = list(res["ids"])
            if not ids:
                return
            yield from ids
            offset += len(ids)

    def keys_of(self, article_id: str) -> list[str]:
        res = self._call(self.collection.get, where={"article_id": article_id}, include=[])
        return list(res["ids"])

    @staticmethod
    def _call(fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except StoreError:
            raise
        except Exception as exc:
            raise StoreError(
                f"Chroma request failed: {exc.__class__.__name__}: {exc}.",
                "If you use a Chroma server, check that it is running; then retry.",
            ) from None


def _meta(p: Passage) -> dict[str, Any]:
    return {
        "article_id": p.article_id,
        "lang": p.lang,
        "date_int": date_to_int(p.date),
        "page": p.page if p.page is not None else -1,
    }


def _where(flt: SearchFilter | None) -> dict[str, Any] | None:
    if flt is None or flt.empty:
        return None
    parts: list[dict[str, Any]] = []
    if flt.date_from is not None:
        parts.append({"date_int": {"$gte": date_to_int(flt.date_from)}})
    if flt.date_to is not None:
        parts.append({"date_int": {"$lte": date_to_int(flt.date_to)}})
    if flt.page is not None:
        parts.append({"page": {"$eq": flt.page}})
    return parts[0] if len(parts) == 1 else {"$and": parts}


STORES = {"chroma": ChromaStore}


def get_store(settings: Settings, embedder_name: str, dim: int) -> ChromaStore:
    return ChromaStore(settings, embedder_name, dim)
