"""Wires the stages together from settings; the CLI, the UI and the evaluation
all go through one ``Baokan`` object. Components can be injected (tests pass
small real ones); otherwise they are built lazily from settings, so a command
that only needs the keyword index never loads the embedder.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

from rag.answer import ExtractiveAnswerer
from rag.config import Settings, get_settings
from rag.embed import Embedder, get_embedder, make_pool
from rag.ingest import Ingestor, IngestReport
from rag.keyword import KeywordIndex
from rag.retrieve import HybridRetriever, Mode, check_question
from rag.store import VectorStore, get_store
from rag.types import Answer, Hit, Progress, SearchFilter


class Baokan:
    """The application: ingest, search and ask over one index."""

    def __init__(
        self,
        settings: Settings | None = None,
        embedder: Embedder | None = None,
        store: VectorStore | None = None,
        index: KeywordIndex | None = None,
    ) -> None:
        self.settings = settings or get_settings()
        self._embedder = embedder
        self._store = store
        self._index = index
        self._lock = threading.Lock()

    @property
    def embedder(self) -> Embedder:
        with self._lock:
            if self._embedder is None:
                self._embedder = get_embedder(self.settings)
            return self._embedder

    @property
    def store(self) -> VectorStore:
        emb = self.embedder
        with self._lock:
            if self._store is None:
                self._store = get_store(self.settings, emb.name, emb.dim)
            return self._store

    @property
    def index(self) -> KeywordIndex:
        with self._lock:
            if self._index is None:
                self._index = KeywordIndex(self.settings.index_path, self.settings.bm25_postings_budget)
            return self._index

    @cached_property
    def retriever(self) -> HybridRetriever:
        s = self.settings
        return HybridRetriever(
            self.embedder,
            self.store,
            self.index,
            mode=s.retrieval,
            candidates=s.candidates,
            rrf_k=s.rrf_k,
            top_k=s.top_k,
            passages_per_article=s.passages_per_article,
        )

    @cached_property
    def extractive(self) -> ExtractiveAnswerer:
        return ExtractiveAnswerer(self.embedder, self.settings.min_evidence)

    def ingest(
        self,
        paths: Sequence[str | Path],
        prune: bool = False,
        progress: Progress | None = None,
    ) -> IngestReport:
        ingestor = Ingestor(
            self.embedder,
            self.store,
            self.index,
            batch_passages=self.settings.ingest_batch,
            pool_factory=lambda files: make_pool(self.settings, files),
        )
        return ingestor.ingest(paths, prune=prune, progress=progress)

    def search(
        self, query: str, k: int | None = None, flt: SearchFilter | None = None, mode: Mode | None = None
    ) -> list[Hit]:
        return self.retriever.search(query, k=k, flt=flt, mode=mode)

    def ask(
        self, question: str, k: int | None = None, flt: SearchFilter | None = None, mode: Mode | None = None
    ) -> Answer:
        """Retrieve and answer extractively (the LLM chain builds on the same steps)."""
        question = check_question(question)
        hits = self.search(question, k=k, flt=flt, mode=mode)
        return self.extractive.answer(question, hits)

    def ask_llm(
        self,
        question: str,
        k: int | None = None,
        flt: SearchFilter | None = None,
        llm: str | None = None,
        history: Sequence[Mapping[str, Any]] | None = None,
        mode: Mode | None = None,
    ) -> Answer:
        """Answer through the grounded chain with backend ``llm`` (default: settings.llm).

        Model failures come back as ``Answer.error`` with the sources kept; see rag.chain.
        """
        from rag.chain import ask

        return ask(self, question, k=k, flt=flt, llm=llm, history=history, mode=mode)

    def ask_stream(
        self,
        question: str,
        k: int | None = None,
        flt: SearchFilter | None = None,
        llm: str | None = None,
        history: Sequence[Mapping[str, Any]] | None = None,
        mode: Mode | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Events ``sources`` (before any token), ``token`` (0+), ``answer`` (last)."""
        from rag.chain import ask_stream

        return ask_stream(self, question, k=k, flt=flt, llm=llm, history=history, mode=mode)

    def is_empty(self) -> bool:
        return self.index.counts()["articles"] == 0

    def close(self) -> None:
        if self._index is not None:
            self._index.close()
        if self._store is not None:
            self._store.close()
            self._store = None
