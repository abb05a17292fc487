"""The typed objects passed between pipeline stages.

Every stage (parse, chunk, embed, store, retrieve, answer, evaluate) speaks in
these types only, so a stage can be swapped or tested without knowing how its
neighbours are built.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Lang = Literal["en", "zh"]
Progress = Callable[[Iterable[Path], int], Iterable[Path]]
"""Wraps the files of an ingest run (with their count) to show progress, e.g. with tqdm."""


@dataclass(frozen=True)
class Article:
    """One archive article as parsed from its file (both languages)."""

    article_id: str
    title_en: str
    title_zh: str
    date: dt.date
    page: int | None
    author_en: str
    author_zh: str
    column: str
    body_en: list[str]
    """English paragraphs in order (may be empty: Chinese-only years)."""
    body_zh: list[str]
    """Chinese paragraphs in order, headline and byline lines removed."""
    source_path: str
    content_hash: str
    """sha256 of the file bytes: drives incremental ingestion."""
    entities: list[str] = field(default_factory=list)

    @property
    def title(self) -> str:
        return self.title_en or self.title_zh


@dataclass(frozen=True)
class Passage:
    """A paragraph-level unit of one language, the unit that is embedded and cited.

    ``key`` is the stable citation key: ``{article_id}:{lang}{position}``. It does not
    change when the same file is re-ingested, so citations keep pointing at the
    same text across runs.
    """

    key: str
    article_id: str
    lang: Lang
    position: int
    text: str
    title_en: str
    title_zh: str
    date: dt.date
    page: int | None
    author: str
    column: str
    source_path: str
    links: tuple[str, ...] = ()
    """Keys of the passage(s) in the other language that translate this one."""

    def metadata(self) -> dict[str, Any]:
        """Flat, store-friendly metadata (Chroma and the keyword index share it)."""
        return {
            "article_id": self.article_id,
            "lang": self.lang,
            "position": self.position,
            "title_en": self.title_en,
            "title_zh": self.title_zh,
            "date": self.date.isoformat(),
            "date_int": date_to_int(self.date),
            "page": self.page if self.page is not None else -1,
            "author": self.author,
            "column": self.column,
            "source_path": self.source_path,
            "links": "|".join(self.links),
        }

    @classmethod
    def from_metadata(cls, key: str, text: str, meta: dict[str, Any]) -> Passage:
        page = int(meta.get("page", -1))
        links = str(meta.get("links") or "")
        return cls(
            key=key,
            article_id=str(meta["article_id"]),
            lang="zh" if meta.get("lang") == "zh" else "en",
            position=int(meta.get("position", 0)),
            text=text,
            title_en=str(meta.get("title_en", "")),
            title_zh=str(meta.get("title_zh", "")),
            date=dt.date.fromisoformat(str(meta["date"])),
            page=None if page < 0 else page,
            author=str(meta.get("author", "")),
            column=str(meta.get("column", "")),
            source_path=str(meta.get("source_path", "")),
            links=tuple(k for k in links.split("|") if k),
        )


@dataclass(frozen=True)
class SearchFilter:
    """Date range (inclusive) and page restriction applied to every index alike."""

    date_from: dt.date | None = None
    date_to: dt.date | None = None
    page: int | None = None

    @property
    def empty(self) -> bool:
        return self.date_from is None and self.date_to is None and self.page is None


@dataclass
class Hit:
    """A retrieved passage with its fused score and its translation, if any."""

    passage: Passage
    score: float
    linked: list[Passage] = field(default_factory=list)
    dense_score: float | None = None
    """Cosine similarity between question and passage (None: not in dense list)."""
    bm25_score: float | None = None
    dense_rank: int | None = None
    bm25_rank: int | None = None

    @property
    def en(self) -> str:
        """English text of this hit (its own or its translation's)."""
        if self.passage.lang == "en":
            return self.passage.text
        return "\n".join(p.text for p in self.linked if p.lang == "en")

    @property
    def zh(self) -> str:
        if self.passage.lang == "zh":
            return self.passage.text
        return "\n".join(p.text for p in self.linked if p.lang == "zh")

    def to_json(self) -> dict[str, Any]:
        p = self.passage
        return {
            "key": p.key,
            "article_id": p.article_id,
            "title_en": p.title_en,
            "title_zh": p.title_zh,
            "date": p.date.isoformat(),
            "page": p.page,
            "lang": p.lang,
            "text": p.text,
            "score": round(self.score, 6),
            "source_path": p.source_path,
            "linked": [{"key": q.key, "lang": q.lang, "text": q.text} for q in self.linked],
        }


@dataclass(frozen=True)
class Citation:
    """One numbered source of an answer, as shown to the user."""

    n: int
    key: str
    article_id: str
    title_en: str
    title_zh: str
    date: dt.date
    page: int | None
    quote_en: str
    quote_zh: str
    source_path: str
    author: str = ""
    column: str = ""
    support: float | None = None
    """How well the answer sentences citing it are supported (0..1), when checked."""
    highlight_en: str = ""
    """The sentence(s) of quote_en that support the answer, for highlighting."""
    highlight_zh: str = ""

    @classmethod
    def from_hit(cls, n: int, hit: Hit, passage: Passage | None = None, support: float | None = None) -> Citation:
        """Citation ``n`` for a hit; ``passage`` is the hit's passage or one of its
        translations (either way the hit holds both languages of the unit)."""
        p = passage or hit.passage
        return cls(
            n=n,
            key=p.key,
            article_id=p.article_id,
            title_en=p.title_en,
            title_zh=p.title_zh,
            date=p.date,
            page=p.page,
            quote_en=hit.en,
            quote_zh=hit.zh,
            source_path=p.source_path,
            author=p.author,
            column=p.column,
            support=support,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "n": self.n,
            "key": self.key,
            "article_id": self.article_id,
            "title_en": self.title_en,
            "title_zh": self.title_zh,
            "date": self.date.isoformat(),
            "page": self.page,
            "quote_en": self.quote_en,
            "quote_zh": self.quote_zh,
            "source_path": self.source_path,
            "author": self.author,
            "column": self.column,
            "highlight_en": self.highlight_en,
            "highlight_zh": self.highlight_zh,
        }


@dataclass
class Answer:
    """An answer with its citations and the passages it was built from."""

    question: str
    answer: str
    refused: bool
    citations: list[Citation] = field(default_factory=list)
    hits: list[Hit] = field(default_factory=list)
    backend: str = "extractive"
    support: float | None = None
    """Share of answer sentences supported by their cited passage (None: not checked)."""
    standalone_question: str | None = None
    """The question as rewritten for retrieval (follow-ups), when it differs."""
    error: str | None = None
    """A one-line error from the answer backend; sources are still present."""
    incomplete: bool = False
    alt_answer: str = ""
    """The same answer in the other language, where the sources allow."""
    lang: Lang = "en"

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "question": self.question,
            "answer": self.answer,
            "refused": self.refused,
            "citations": [c.to_json() for c in self.citations],
            "backend": self.backend,
            "support": self.support,
            "lang": self.lang,
        }
        if self.alt_answer:
            out["alt_answer"] = self.alt_answer
        if self.standalone_question:
            out["standalone_question"] = self.standalone_question
        if self.error:
            out["error"] = self.error
        if self.incomplete:
            out["incomplete"] = True
        return out


def date_to_int(d: dt.date) -> int:
    """Dates as YYYYMMDD integers: Chroma's where-filters compare numbers only."""
    return d.year * 10000 + d.month * 100 + d.day
