"""How well one text supports another: lexical overlap plus embedding similarity.

Used three ways: to pick answer sentences for a question (extractive
answers), to check after generation that each answer sentence is backed by
the passage it cites, and by the evaluation's offline citation judge. There
is no offline NLI model, so this is a calibrated similarity, not entailment;
the README says so.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from rag.embed import Embedder
from rag.text import detect_lang, normalize_numbers
from rag.tokenize import tokenize

_NUM_CHARS = set("0123456789")


def _tokens(text: str) -> set[str]:
    return set(tokenize(normalize_numbers(text)))


def _numbers(tokens: set[str]) -> set[str]:
    return {t for t in tokens if t and set(t) <= _NUM_CHARS}


def lexical_support(claim: str, source: str) -> float:
    """Share of the claim's content tokens found in the source (numbers must match).

    Across languages only numbers can be compared lexically; the embedding
    part of ``SupportScorer`` carries the rest.
    """
    ct, st = _tokens(claim), _tokens(source)
    if not ct:
        return 0.0
    if detect_lang(claim) != detect_lang(source):
        nums = _numbers(ct)
        return len(nums & _numbers(st)) / len(nums) if nums else 0.0
    return len(ct & st) / len(ct)


class SupportScorer:
    """Combines lexical overlap and cosine similarity into one 0..1 score."""

    def __init__(self, embedder: Embedder, lexical_weight: float = 0.5) -> None:
        self.embedder = embedder
        self.lexical_weight = lexical_weight

    def scores(
        self,
        claim: str,
        sources: Sequence[str],
        claim_vec: np.ndarray | None = None,
        source_vecs: np.ndarray | None = None,
    ) -> np.ndarray:
        """Support of ``claim`` by each source, in [0, 1]."""
        if not sources:
            return np.zeros(0, dtype=np.float32)
        if claim_vec is None:
            claim_vec = self.embedder.embed([claim])[0]
        if source_vecs is None:
            source_vecs = self.embedder.embed(list(sources))
        cos = np.clip(source_vecs @ claim_vec, 0.0, 1.0)
        lex = np.array([lexical_support(claim, s) for s in sources], dtype=np.float32)
        same = np.array([detect_lang(claim) == detect_lang(s) for s in sources])
        w = self.lexical_weight
        # Across languages the lexical part is numbers only: lean on the embedding.
        mixed = np.where(same, (1 - w) * cos + w * lex, 0.85 * cos + 0.15 * lex)
        return mixed.astype(np.float32)
