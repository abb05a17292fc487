"""Vector stores. Chroma (embedded or client-server) is the one shipped backend;
this is the only module that imports chromadb.

Chroma keeps only vectors and the three fields deletes and filters need
(article, date, page); passage text and full metadata live in the keyword index's
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

    def close(self) -> None: ...


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
        self._settings = settings
        self._embedder_name = embedder_name
        self._dim = dim
        self._open()
        stored = (self.collection.metadata or {}).get("embedder")
        if stored and stored != embedder_name:
            raise StoreError(
                f"The index at {settings.chroma_url or settings.data_dir} was built with embedder "
                f"{stored!r}, not {embedder_name!r}.",
                "Use the same BAOKAN_EMBEDDER, or a new BAOKAN_DATA_DIR / BAOKAN_COLLECTION.",
            )

    def _open(self) -> None:
        settings, embedder_name, dim = self._settings, self._embedder_name, self._dim
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

    def add(self, passages: Sequence[Passage], vectors: np.ndarray) -> None:
        """Upsert, then read the keys back: the caller marks articles indexed only after this.

        An embedded Chroma that hit a full disk once was seen accepting later upserts
        without storing them; a write that did not land must fail here, not leave the
        manifest claiming passages the store lacks.
        """
        for i in range(0, len(passages), _BATCH):
            chunk = passages[i : i + _BATCH]
            ids = [p.key for p in chunk]
            self._call(
                "upsert",
                ids=ids,
                embeddings=vectors[i : i + _BATCH],
                metadatas=[_meta(p) for p in chunk],
            )
            stored = len(self._call("get", ids=ids, include=[])["ids"])
            if stored != len(ids):
                raise StoreError(
                    f"Chroma kept {stored} of {len(ids)} vectors just written.",
                    "Check free disk space, then re-run `baokan ingest` (it resumes).",
                )

    def delete_article(self, article_id: str) -> None:
        self._call("delete", where={"article_id": article_id})

    def query(self, vector: np.ndarray, k: int, flt: SearchFilter | None = None) -> list[tuple[str, float]]:
        if k <= 0:
            return []
        res = self._call(
            "query",
            query_embeddings=[vector],
            n_results=k,
            where=_where(flt),
            include=["distances"],
        )
        ids = res["ids"][0] if res["ids"] else []
        dists = res["distances"][0] if res.get("distances") else []
        return [(i, 1.0 - float(d)) for i, d in zip(ids, dists, strict=False)]

    def count(self) -> int:
        return int(self._call("count"))

    def ids(self, page: int = 5000) -> Iterator[str]:
        """Every stored passage key, paged (to check the store against the keyword index)."""
        offset = 0
        while True:
            res = self._call("get", include=[], limit=page, offset=offset)
            ids = list(res["ids"])
            if not ids:
                return
            yield from ids
            offset += len(ids)

    def close(self) -> None:
        """Release the client, so that opening the same path again starts a fresh Chroma
        system instead of chromadb's cached one (which may hold a failed state)."""
        try:
            self.client.close()
        except Exception:  # closing must not mask the error that led here
            logging.getLogger(__name__).debug("closing the Chroma client failed", exc_info=True)

    def keys_of(self, article_id: str) -> list[str]:
        res = self._call("get", where={"article_id": article_id}, include=[])
        return list(res["ids"])

    def _call(self, method: str, **kwargs: Any) -> Any:
        try:
            return getattr(self.collection, method)(**kwargs)
        except StoreError:
            raise
        except Exception as exc:
            if not self._settings.chroma_url:
                self._reopen()
            raise StoreError(
                f"Chroma request failed: {exc.__class__.__name__}: {exc}.",
                "If you use a Chroma server, check that it is running; then retry."
                if self._settings.chroma_url
                else "Check free disk space and permissions of BAOKAN_DATA_DIR; then retry.",
            ) from None

    def _reopen(self) -> None:
        """Start a fresh embedded Chroma after a failed request.

        After a write failed on a full disk, chromadb's cached system for the path
        sometimes blocked every later call (count() never returned). Dropping it
        and opening a new one makes the next call either work or fail cleanly.
        """
        self.close()
        try:
            self._open()
        except StoreError:
            logging.getLogger(__name__).warning("reopening the Chroma store failed; the next request retries")


def _meta(p: Passage) -> dict[str, Any]:
    return {
        "article_id": p.article_id,  # deletes and recovery select by it; no filter needs the language
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
