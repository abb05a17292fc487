"""Hybrid retrieval: dense (both languages) + BM25 (jieba), fused by rank, grouped by article.

Dense search carries cross-lingual questions (an English question finds a
Chinese-only article); BM25 carries names and numbers. Reciprocal rank
fusion needs no score calibration between the two. Results are grouped so
that one long article cannot fill every slot, and a passage already shown as
the translation of a better one is not shown twice.
"""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass
from typing import Literal

from rag.embed import Embedder
from rag.errors import FilterError, QuestionError
from rag.keyword import KeywordIndex
from rag.store import VectorStore
from rag.text import detect_lang
from rag.types import Hit, Passage, SearchFilter

Mode = Literal["hybrid", "dense", "bm25"]
MODES: tuple[Mode, ...] = ("hybrid", "dense", "bm25")
MAX_QUERY_CHARS = 2000
"""Longer questions are cut for search (a pasted article is not a question)."""


def check_question(question: str) -> str:
    """Clean a question or raise ``QuestionError`` saying what is wrong with it."""
    if not isinstance(question, str) or not question.strip():
        raise QuestionError("The question is empty.", "Type a question, e.g. 'What did Hongqiao District do?'")
    cleaned = "".join(ch if ch.isprintable() or ch in "\n\t" else " " for ch in question)
    cleaned = " ".join(cleaned.split())
    if not any(ch.isalnum() for ch in cleaned):
        raise QuestionError(
            f"The question {cleaned[:40]!r} has no words to search for.",
            "Ask with words or names, not only punctuation.",
        )
    return cleaned[:MAX_QUERY_CHARS]


def make_filter(
    date_from: str | dt.date | None = None,
    date_to: str | dt.date | None = None,
    page: int | str | None = None,
) -> SearchFilter:
    """Build a filter from user input, rejecting malformed or contradictory values."""

    def as_date(v: str | dt.date | None, name: str) -> dt.date | None:
        if v is None or (isinstance(v, str) and not v.strip()):
            return None
        if isinstance(v, dt.date):
            return v
        text = v.strip()
        for fmt in ("%Y-%m-%d", "%Y-%m", "%Y"):
            try:
                d = dt.datetime.strptime(text, fmt).date()
            except ValueError:
                continue
            if fmt != "%Y-%m-%d" and name == "to":
                # '1959' as an upper bound means the end of 1959.
                if fmt == "%Y":
                    return dt.date(d.year, 12, 31)
                nxt = dt.date(d.year + (d.month == 12), d.month % 12 + 1, 1)
                return nxt - dt.timedelta(days=1)
            return d
        raise FilterError(f"Bad {name} date {text!r}.", "Use YYYY-MM-DD, YYYY-MM or YYYY.")

    lo, hi = as_date(date_from, "from"), as_date(date_to, "to")
    if lo and hi and lo > hi:
        raise FilterError(
            f"The date range is reversed ({lo.isoformat()} is after {hi.isoformat()}).",
            "Swap the from and to dates.",
        )
    pg: int | None = None
    if page is not None and str(page).strip():
        try:
            pg = int(str(page).strip())
        except ValueError:
            raise FilterError(f"Bad page {page!r}.", "Give the page as a number, e.g. 2.") from None
        if pg < 1:
            raise FilterError(f"Bad page {pg}.", "Pages start at 1.")
    return SearchFilter(lo, hi, pg)


@dataclass
class _Cand:
    passage: Passage | None
    fused: float = 0.0
    dense: float | None = None
    bm25: float | None = None
    dense_rank: int | None = None
    bm25_rank: int | None = None


class HybridRetriever:
    """Searches the vector store and the keyword index and fuses them."""

    def __init__(
        self,
        embedder: Embedder,
        store: VectorStore,
        index: KeywordIndex,
        mode: Mode = "hybrid",
        candidates: int = 60,
        rrf_k: int = 60,
        top_k: int = 5,
        passages_per_article: int = 2,
    ) -> None:
        if candidates <= 0 or top_k <= 0 or passages_per_article <= 0:
            raise ValueError(
                f"candidates, top_k and passages_per_article must be > 0 (got {candidates}, {top_k}, {passages_per_article})"
            )
        self.embedder = embedder
        self.store = store
        self.index = index
        self.mode: Mode = mode
        self.candidates = candidates
        self.rrf_k = rrf_k
        self.top_k = top_k
        self.passages_per_article = passages_per_article

    def search(
        self,
        query: str,
        k: int | None = None,
        flt: SearchFilter | None = None,
        mode: Mode | None = None,
    ) -> list[Hit]:
        query = check_question(query)
        mode = mode or self.mode
        if mode not in MODES:
            raise QuestionError(f"Unknown retrieval mode {mode!r}.", f"Use one of: {', '.join(MODES)}.")
        k = k or self.top_k
        cands: dict[str, _Cand] = {}
        if mode in ("hybrid", "dense"):
            self._dense(query, flt, cands)
        if mode in ("hybrid", "bm25"):
            self._bm25(query, flt, cands)
        if not cands:
            return []
        missing = [key for key, c in cands.items() if c.passage is None]
        if missing:
            found = self.index.get(missing)
            for key in missing:
                cands[key].passage = found.get(key)
        if mode == "hybrid":
            self._impute_keyword_rank(detect_lang(query), cands)
        live = self.index.done_articles(c.passage.article_id for c in cands.values() if c.passage)
        ranked = sorted(
            (c for c in cands.values() if c.passage is not None and c.passage.article_id in live),
            key=lambda c: -c.fused,
        )
        return self._group(ranked, k)

    def _dense(self, query: str, flt: SearchFilter | None, cands: dict[str, _Cand]) -> None:
        vec = self.embedder.embed([query])[0]
        for rank, (key, sim) in enumerate(self.store.query(vec, self.candidates, flt)):
            c = cands.setdefault(key, _Cand(None))
            c.dense, c.dense_rank = sim, rank
            c.fused += 1.0 / (self.rrf_k + rank + 1)

    def _bm25(self, query: str, flt: SearchFilter | None, cands: dict[str, _Cand]) -> None:
        for rank, (p, score) in enumerate(self.index.search(query, self.candidates, flt)):
            c = cands.setdefault(p.key, _Cand(p))
            c.passage = p
            c.bm25, c.bm25_rank = score, rank
            c.fused += 1.0 / (self.rrf_k + rank + 1)

    def _impute_keyword_rank(self, lang: str, cands: dict[str, _Cand]) -> None:
        """Give untranslated passages in the other language their dense rank as keyword rank.

        BM25 cannot match an English question against a Chinese-only article (or
        the reverse): without this, such articles lose every fusion against
        translated ones, and cross-lingual questions fail (ragflow #7376).
        """
        for c in cands.values():
            p = c.passage
            if p is None or c.bm25_rank is not None or c.dense_rank is None:
                continue
            if p.lang != lang and not p.links:
                c.fused += 1.0 / (self.rrf_k + c.dense_rank + 1)

    def _group(self, ranked: list[_Cand], k: int) -> list[Hit]:
        by_article: dict[str, list[_Cand]] = defaultdict(list)
        order: list[str] = []
        for c in ranked:
            assert c.passage is not None
            aid = c.passage.article_id
            if aid not in by_article:
                order.append(aid)
            by_article[aid].append(c)

        def article_score(aid: str) -> float:
            # Best passage first; a second matching passage adds a little (an article
            # about the subject beats one stray mention), but long articles must not
            # win on length alone.
            scores = [c.fused for c in by_article[aid]]
            return scores[0] + 0.1 * sum(scores[1:2])

        order.sort(key=lambda a: -article_score(a))
        hits: list[Hit] = []
        link_keys: list[str] = []
        chosen: list[tuple[float, _Cand]] = []
        for aid in order[:k]:
            taken: set[str] = set()
            score = article_score(aid)
            for c in by_article[aid]:
                p = c.passage
                assert p is not None
                if p.key in taken:
                    continue
                taken.add(p.key)
                taken.update(p.links)
                chosen.append((score, c))
                link_keys.extend(p.links)
                if sum(1 for _, x in chosen if x.passage and x.passage.article_id == aid) >= self.passages_per_article:
                    break
        linked = self.index.get(link_keys) if link_keys else {}
        for score, c in chosen:
            p = c.passage
            assert p is not None
            hits.append(
                Hit(
                    passage=p,
                    score=score,
                    linked=[linked[x] for x in p.links if x in linked],
                    dense_score=c.dense,
                    bm25_score=c.bm25,
                    dense_rank=c.dense_rank,
                    bm25_rank=c.bm25_rank,
                )
            )
        return hits
