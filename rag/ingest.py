"""Ingestion: files -> articles -> aligned passages -> vectors + keyword postings.

Streaming and incremental: files are read lazily and processed in bounded
batches; a file whose content hash is already indexed costs one hash and no
embedding. Each batch is written in three steps — mark ``pending`` in the
manifest, upsert vectors into Chroma (deterministic IDs, so a repeat is
harmless), then write postings and mark ``done`` in one SQLite transaction —
so a run killed anywhere is finished by the next run with nothing lost or
duplicated.
"""

from __future__ import annotations

import hashlib
import os
import queue
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np

from rag.chunk import chunk_article, flatten, split_units
from rag.embed import Embedder, EmbedJob, EmbedPool
from rag.errors import ParseError, StoreError
from rag.keyword import KeywordIndex, passage_tokens
from rag.parse import parse_text, read_text
from rag.store import VectorStore
from rag.types import Article, Passage, Progress

ARTICLE_SUFFIXES = (".txt", ".md")
BATCH_PASSAGES = 1024
PREFETCH_FILES = 64
"""Files read and parsed ahead of the embedder by the reader thread: bounds memory
(at most this many parsed articles wait) while hiding file I/O behind embedding."""

EMBED_AHEAD = 2
"""Batches handed to the embedding workers beyond the one being written: enough that a
worker finishing its part early finds the next batch waiting."""


@dataclass
class IngestReport:
    """What an ingest run did; printed by the CLI and returned to callers."""

    files: int = 0
    articles_added: int = 0
    articles_replaced: int = 0
    unchanged: int = 0
    passages: int = 0
    removed: int = 0
    recovered: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: dict[str, float] = field(
        default_factory=lambda: {
            "read": 0.0,
            "parse": 0.0,
            "tokenize": 0.0,
            "embed": 0.0,
            "align": 0.0,
            "store": 0.0,
            "keyword": 0.0,
        }
    )

    @property
    def articles(self) -> int:
        return self.articles_added + self.articles_replaced

    def summary(self) -> dict[str, object]:
        return {
            "files": self.files,
            "articles": self.articles,
            "articles_added": self.articles_added,
            "articles_replaced": self.articles_replaced,
            "unchanged": self.unchanged,
            "passages": self.passages,
            "removed": self.removed,
            "recovered": self.recovered,
            "skipped": len(self.skipped),
            "seconds": {k: round(v, 3) for k, v in self.seconds.items()},
        }


@dataclass
class _Embedding:
    """A batch whose vectors worker processes are computing."""

    batch: list[_Pending]
    job: EmbedJob


@dataclass
class _Pending:
    article: Article
    en: list[list[str]]
    zh: list[list[str]]
    replaces: bool = False
    tokens: dict[str, list[list[str]]] = field(default_factory=dict)

    @property
    def texts(self) -> list[str]:
        return flatten(self.en) + flatten(self.zh)

    @property
    def size(self) -> int:
        return sum(map(len, self.en)) + sum(map(len, self.zh))


def iter_files(paths: Sequence[str | Path], skipped: list[tuple[str, str]]) -> Iterator[Path]:
    """Files named directly, and article files (.txt/.md) under folders, in a stable order.

    Symlink loops and unreadable folders are reported, not followed forever.
    """
    seen_dirs: set[tuple[int, int]] = set()
    for raw in paths:
        p = Path(raw)
        if not p.exists():
            skipped.append((str(p), "no such file or folder" + (" (broken symlink)" if p.is_symlink() else "")))
            continue
        if p.is_file():
            yield p
            continue
        if not p.is_dir():
            skipped.append((str(p), "not a regular file or folder"))
            continue

        def unreadable(e: OSError) -> None:
            skipped.append((str(e.filename), f"unreadable folder ({e.strerror})"))

        for root, dirs, files in os.walk(p, followlinks=True, onerror=unreadable):
            st = os.stat(root)
            ident = (st.st_dev, st.st_ino)
            if ident in seen_dirs:
                skipped.append((root, "symlink loop (folder already visited)"))
                dirs[:] = []
                continue
            seen_dirs.add(ident)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith(".") or not name.endswith(ARTICLE_SUFFIXES):
                    continue
                yield Path(root) / name


@dataclass
class _Read:
    """What the reader thread learnt about one file, before any index write."""

    path: Path
    source: str
    content_hash: str = ""
    article: Article | None = None
    en: list[list[str]] = field(default_factory=list)
    zh: list[list[str]] = field(default_factory=list)
    tokens: dict[str, list[list[str]]] = field(default_factory=dict)
    """Keyword tokens (title + piece) per language, per piece: computed here, on the
    reader thread, while the embedder holds the cores in native code."""
    known: tuple[str, str] | None = None
    error: str = ""
    unchanged: bool = False
    seconds: dict[str, float] = field(default_factory=dict)


_DONE = object()


class Ingestor:
    """Runs ingestion against injected components (so tests pass small real ones).

    A reader thread reads, hashes, parses and tokenizes files into a bounded
    queue while the calling thread embeds and writes. With an embedding pool
    (large runs) the calling thread writes batch k while worker processes embed
    the next ones. Only the calling thread writes, one batch at a time and always in
    the same order (pending, vectors, postings + done), so the crash-safety
    argument stays a sequential one; batches still embedding when a run dies
    were never marked and are simply embedded again.
    """

    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        index: KeywordIndex,
        batch_passages: int = BATCH_PASSAGES,
        prefetch: int = PREFETCH_FILES,
        pool_factory: Callable[[int], EmbedPool | None] | None = None,
    ) -> None:
        self.embedder = embedder
        self.store = store
        self.index = index
        self.batch_passages = batch_passages
        self.prefetch = prefetch
        self.pool_factory = pool_factory
        """Given a run's file count, the worker pool to embed with (or None): see rag.embed.make_pool."""
        self._files = 0
        self._pool: EmbedPool | None = None
        self._pool_checked = False
        self._embedding: deque[_Embedding] = deque()

    # ------------------------------------------------------------------------
    def recover(self, report: IngestReport | None = None) -> int:
        """Undo articles a killed run left half-written; they are re-ingested later."""
        n = 0
        for state in self.index.unfinished():
            self.store.delete_article(state.article_id)
            self.index.delete_article(state.article_id)
            n += 1
        if report is not None:
            report.recovered += n
        return n

    def ingest(
        self,
        paths: Sequence[str | Path],
        prune: bool = False,
        progress: Progress | None = None,
    ) -> IngestReport:
        report = IngestReport()
        self.recover(report)
        # Only the paths are materialised (~100 bytes each); file contents stream.
        files = list(iter_files(paths, report.skipped))
        report.files = self._files = len(files)
        items = self._read_ahead(files) if self.prefetch > 0 else (self._read(p) for p in files)
        # The progress wrapper only counts what passes through it (tqdm: files/s and ETA).
        bar: Any = progress(cast(Iterable[Path], items), len(files)) if progress else None
        ordered = cast(Iterable[_Read], bar if bar is not None else items)
        batch: list[_Pending] = []
        batch_size = 0
        seen_ids: dict[str, str] = {}
        try:
            for read in ordered:
                item = self._prepare(read, report, seen_ids)
                if item is None:
                    continue
                batch.append(item)
                batch_size += item.size
                if batch_size >= self.batch_passages:
                    self._flush(batch, report)
                    batch, batch_size = [], 0
                    if bar is not None and hasattr(bar, "set_postfix"):
                        bar.set_postfix(passages=report.passages, refresh=False)
            if batch:
                self._flush(batch, report)
            self._settle(report)
        finally:
            close = getattr(items, "close", None)
            if close:
                close()
            self._embedding.clear()  # after an error: unmarked batches, embedded again next run
            if self._pool is not None:
                self._pool.close()
            self._pool, self._pool_checked = None, False
        if prune:
            report.removed += self.prune(paths)
        return report

    def _read_ahead(self, files: list[Path]) -> Iterator[_Read]:
        """Yield ``_read(path)`` for each file, computed by a reader thread up to
        ``prefetch`` files ahead. Closing the generator stops the thread."""
        q: queue.Queue[object] = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def put(obj: object) -> bool:
            while not stop.is_set():
                try:
                    q.put(obj, timeout=0.2)
                    return True
                except queue.Full:
                    continue
            return False

        def work() -> None:
            try:
                for path in files:
                    if not put(self._read(path)):
                        return
            except BaseException as exc:  # re-raised in the consumer
                put(exc)
                return
            put(_DONE)

        thread = threading.Thread(target=work, name="baokan-reader", daemon=True)
        thread.start()
        try:
            while True:
                obj = q.get()
                if obj is _DONE:
                    return
                if isinstance(obj, BaseException):
                    raise obj
                assert isinstance(obj, _Read)
                yield obj
        finally:
            stop.set()
            thread.join(timeout=5)

    def _read(self, path: Path) -> _Read:
        """Read, hash, and (unless the file is known and unchanged) parse one file.

        Reads the index but never writes it, so it is safe on the reader thread.
        """
        source = str(path.resolve()) if not path.is_symlink() else str(path.absolute())
        out = _Read(path, source)
        t0 = time.perf_counter()
        try:
            text, data = read_text(path)
        except ParseError as exc:
            out.error = exc.reason
            return out
        out.content_hash = hashlib.sha256(data).hexdigest()
        out.seconds["read"] = time.perf_counter() - t0
        out.known = self.index.source_state(source)
        if out.known and out.known[0] == out.content_hash:
            state = self.index.article_state(out.known[1])
            if state and state.status == "done" and state.content_hash == out.content_hash:
                out.unchanged = True
                return out
        t0 = time.perf_counter()
        try:
            out.article = parse_text(text, source_path=source, content_hash=out.content_hash)
            out.en = split_units(out.article.body_en, "en")
            out.zh = split_units(out.article.body_zh, "zh")
        except ParseError as exc:
            out.error = exc.reason
        out.seconds["parse"] = time.perf_counter() - t0
        if out.article is not None and not out.error:
            t0 = time.perf_counter()
            a = out.article
            out.tokens = {
                "en": passage_tokens(a.title_en, flatten(out.en)),
                "zh": passage_tokens(a.title_zh, flatten(out.zh)),
            }
            out.seconds["tokenize"] = time.perf_counter() - t0
        return out

    def _prepare(self, read: _Read, report: IngestReport, seen_ids: dict[str, str]) -> _Pending | None:
        for k, v in read.seconds.items():
            report.seconds[k] += v
        if read.error:
            report.skipped.append((str(read.path), read.error))
            return None
        if read.unchanged:
            # Re-checked here: the reader looked before earlier batches were written.
            state = self.index.article_state(read.known[1]) if read.known else None
            if state and state.status == "done":
                report.unchanged += 1
                seen_ids.setdefault(state.article_id, str(read.path))
                return None
            return self._prepare(self._read(read.path), report, seen_ids)
        article, source, content_hash, known = read.article, read.source, read.content_hash, read.known
        assert article is not None
        if article.article_id in seen_ids:
            report.skipped.append((str(read.path), f"duplicate of {seen_ids[article.article_id]} (same article)"))
            return None
        seen_ids[article.article_id] = str(read.path)
        existing = self.index.article_state(article.article_id)
        if existing and existing.status == "done":
            recorded = self.index.sources_of(article.article_id)
            others = [s for s in recorded if s != source and os.path.exists(s)]
            if existing.content_hash == content_hash:
                # Same bytes already indexed: remember this path too (prune keeps the article
                # while any of its files exists), but embed nothing.
                self._settle(report)
                self.index.record_source(source, content_hash, article.article_id)
                if others:
                    report.skipped.append((str(read.path), f"duplicate of {others[0]} (same article)"))
                else:
                    report.unchanged += 1
                return None
            if others and source not in recorded:
                # Another live file holds this article (different bytes): keep that version,
                # or two copies would replace each other on every run.
                report.skipped.append((str(read.path), f"duplicate of {others[0]} (same article)"))
                return None
        # A changed file's new source row is written only with its passages (commit_articles):
        # recorded earlier, a crash in between would make the next run think it was done.
        replaces = bool(existing)
        if known and known[1] != article.article_id:
            # The file now holds a different article: drop the old one unless another file has it.
            self._settle(report)
            self.index.forget_source(source)
            if not self.index.sources_of(known[1]):
                self._delete(known[1])
                replaces = True
        return _Pending(article, read.en, read.zh, replaces, read.tokens)

    def _delete(self, article_id: str) -> None:
        self.index.mark(article_id, "", "deleting")
        self.store.delete_article(article_id)
        self.index.delete_article(article_id)

    def _flush(self, batch: list[_Pending], report: IngestReport) -> None:
        texts = [t for item in batch for t in item.texts]
        pool = self._get_pool() if texts else None
        if pool is None:
            self._settle(report)  # batches go to the stores in the order they were read
            t0 = time.perf_counter()
            vecs = self.embedder.embed(texts) if texts else np.zeros((0, 1), dtype=np.float32)
            report.seconds["embed"] += time.perf_counter() - t0
            self._write(batch, vecs, report)
            return
        # Keep the workers fed: batches k-1 and k are queued while batch k-2 is written.
        self._embedding.append(_Embedding(batch, pool.submit(texts)))
        while len(self._embedding) > EMBED_AHEAD:
            self._finish_oldest(report)

    def _get_pool(self) -> EmbedPool | None:
        """Started at the first batch that needs embedding, so a re-run over unchanged files starts no workers."""
        if not self._pool_checked:
            self._pool_checked = True
            self._pool = self.pool_factory(self._files) if self.pool_factory else None
        return self._pool

    def _finish_oldest(self, report: IngestReport) -> None:
        pending = self._embedding.popleft()
        t0 = time.perf_counter()
        vecs = pending.job.result()
        report.seconds["embed"] += time.perf_counter() - t0  # time spent waiting for the workers
        self._write(pending.batch, vecs, report)

    def _settle(self, report: IngestReport) -> None:
        """Write every batch still embedding (before a write outside the batch order)."""
        while self._embedding:
            self._finish_oldest(report)

    def _write(self, batch: list[_Pending], vecs: np.ndarray, report: IngestReport) -> None:
        t0 = time.perf_counter()
        passages: list[Passage] = []
        rows: list[np.ndarray] = []
        per_article: list[tuple[str, list[Passage], list[tuple[str, str]]]] = []
        tokens: dict[str, list[str]] = {}
        offset = 0
        for item in batch:
            item_vecs = vecs[offset : offset + item.size]
            offset += item.size
            ps = chunk_article(item.article, item_vecs)
            passages.extend(ps)
            if item.tokens:  # a passage is one piece; its position indexes its language's pieces
                tokens.update((p.key, item.tokens[p.lang][p.position]) for p in ps)
            rows.append(item_vecs)  # chunk_article keeps the order: English pieces, then Chinese
            a = item.article
            per_article.append((a.article_id, ps, [(a.source_path, a.content_hash)]))
        matrix = np.concatenate(rows) if rows else np.zeros((0, 1), dtype=np.float32)
        report.seconds["align"] += time.perf_counter() - t0

        self.index.mark_many(
            [(a.article_id, a.content_hash, a.title, a.date.isoformat()) for a in (i.article for i in batch)],
            "pending",
        )
        t0 = time.perf_counter()
        for item in batch:
            if item.replaces:  # a new version may have fewer passages: clear the old vectors
                self.store.delete_article(item.article.article_id)
        if passages:
            self.store.add(passages, matrix)
        report.seconds["store"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        self.index.commit_articles(per_article, tokens)
        report.seconds["keyword"] += time.perf_counter() - t0
        report.articles_replaced += sum(1 for i in batch if i.replaces)
        report.articles_added += sum(1 for i in batch if not i.replaces)
        report.passages += len(passages)

    def prune(self, roots: Sequence[str | Path]) -> int:
        """Forget sources under ``roots`` that no longer exist; drop orphaned articles."""
        prefixes = [str(Path(r).resolve()) for r in roots]
        removed = 0
        for path, article_id in self.index.all_sources():
            if not any(path == p or path.startswith(p.rstrip(os.sep) + os.sep) for p in prefixes):
                continue
            if os.path.exists(path):
                continue
            self.index.forget_source(path)
            if not self.index.sources_of(article_id):
                try:
                    self._delete(article_id)
                except StoreError:
                    raise
                removed += 1
        return removed
