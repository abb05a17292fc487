"""Cut an article into paragraph-level passages and link the two languages.

Passages are paragraphs (historians want the paragraph, not a shard). Very
short lines (sub-headings, bylines) are merged into a neighbour, very long
paragraphs are cut at sentence ends. The English translation and the Chinese
original are then aligned monotonically (a Gale-Church-style dynamic program
over lengths, sharpened by cross-lingual embedding similarity when vectors
are given), so a hit in either language can show its counterpart.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from rag.text import pack_sentences, split_sentences
from rag.types import Article, Lang, Passage

ZH_MIN, ZH_MAX = 20, 400
EN_MIN, EN_MAX = 60, 1200
EN_PER_ZH = 3.2
"""English characters per Chinese character in the archive's translations (measured
on paragraph pairs of the seed and corpus articles)."""

Bead = tuple[list[int], list[int]]
_MOVES: list[tuple[int, int]] = [(1, 1), (1, 2), (2, 1), (1, 3), (3, 1), (2, 2), (1, 0), (0, 1)]
_SKIP = -0.25
_MERGE = -0.04
_LEN_WEIGHT = 0.12


def split_units(paragraphs: list[str], lang: Lang) -> list[list[str]]:
    """Paragraphs -> pieces per paragraph: tiny lines merged forward, long ones cut.

    The paragraph grouping is kept because alignment works on whole
    paragraphs: the two languages cut a long paragraph at different sentences.
    """
    lo, hi = (ZH_MIN, ZH_MAX) if lang == "zh" else (EN_MIN, EN_MAX)
    joiner = "" if lang == "zh" else " "
    merged: list[str] = []
    carry = ""
    for para in paragraphs:
        text = f"{carry}{joiner}{para}" if carry else para
        carry = ""
        if len(text) < lo:
            carry = text
            continue
        merged.append(text)
    if carry:
        if merged:
            merged[-1] = merged[-1] + joiner + carry
        else:
            merged.append(carry)
    return [
        [text] if len(text) <= hi else pack_sentences(split_sentences(text, lang), int(hi * 0.75)) for text in merged
    ]


def flatten(groups: list[list[str]]) -> list[str]:
    return [t for g in groups for t in g]


def group_vectors(groups: list[list[str]], vecs: np.ndarray) -> np.ndarray:
    """One vector per paragraph: the mean of its pieces' vectors."""
    out = np.zeros((len(groups), vecs.shape[1] if vecs.ndim == 2 else 0), dtype=np.float32)
    i = 0
    for g, pieces in enumerate(groups):
        out[g] = vecs[i : i + len(pieces)].mean(axis=0)
        i += len(pieces)
    return out


def align(
    en: Sequence[str],
    zh: Sequence[str],
    en_vecs: np.ndarray | None = None,
    zh_vecs: np.ndarray | None = None,
) -> list[Bead]:
    """Monotonic alignment of English and Chinese units into beads.

    Each bead pairs 0-3 English units with 0-3 Chinese units. The score of a
    bead is the cosine of the mean vectors (0.5 without vectors) minus a
    length-ratio penalty; unmatched units (a truncated translation) cost a
    fixed penalty, so the DP prefers real pairs.
    """
    n, m = len(en), len(zh)
    if n == 0 or m == 0:
        return [([i], []) for i in range(n)] + [([], [j]) for j in range(m)]
    en_cum = np.concatenate([[0], np.cumsum([max(1, len(t)) for t in en])])
    zh_cum = np.concatenate([[0], np.cumsum([max(1, len(t)) for t in zh])])
    sims = _span_sims(en_vecs, zh_vecs) if en_vecs is not None and zh_vecs is not None else None
    neg = -1e18
    best = [[neg] * (m + 1) for _ in range(n + 1)]
    back: dict[tuple[int, int], tuple[int, int]] = {}
    best[0][0] = 0.0
    for i in range(n + 1):
        row = best[i]
        for j in range(m + 1):
            base = row[j]
            if base == neg:
                continue
            for di, dj in _MOVES:
                ni, nj = i + di, j + dj
                if ni > n or nj > m:
                    continue
                if di == 0 or dj == 0:
                    score = _SKIP
                else:
                    le = float(en_cum[ni] - en_cum[i])
                    lz = float(zh_cum[nj] - zh_cum[j])
                    length_cost = abs(math.log(le / (EN_PER_ZH * lz)))
                    sim = float(sims[di - 1][dj - 1][i, j]) if sims is not None else 0.5
                    score = sim - _LEN_WEIGHT * length_cost
                    if di + dj > 2:
                        score += _MERGE * (di + dj - 2)
                if base + score > best[ni][nj]:
                    best[ni][nj] = base + score
                    back[(ni, nj)] = (i, j)
    beads: list[Bead] = []
    cur = (n, m)
    while cur != (0, 0):
        prev = back[cur]
        beads.append((list(range(prev[0], cur[0])), list(range(prev[1], cur[1]))))
        cur = prev
    beads.reverse()
    return beads


def _span_sims(en_vecs: np.ndarray, zh_vecs: np.ndarray) -> list[list[np.ndarray]]:
    """``sims[a-1][b-1][i, j]``: cosine of the mean of English units i..i+a-1 and the mean of
    Chinese units j..j+b-1, for every span length a, b up to 3, in nine matrix products
    (the DP then only looks numbers up; per-cell numpy calls made alignment 10% of ingest)."""

    def spans(v: np.ndarray) -> list[np.ndarray]:
        cum = np.concatenate([np.zeros((1, v.shape[1]), dtype=np.float64), np.cumsum(v, axis=0, dtype=np.float64)])
        out = []
        for d in (1, 2, 3):
            s = cum[d:] - cum[:-d] if len(v) >= d else np.zeros((0, v.shape[1]))
            norms = np.linalg.norm(s, axis=1, keepdims=True)
            out.append(np.divide(s, norms, out=np.zeros_like(s), where=norms > 0))
        return out

    e, z = spans(en_vecs), spans(zh_vecs)
    return [[e[a] @ z[b].T for b in range(3)] for a in range(3)]


def make_passages(article: Article, en: list[list[str]], zh: list[list[str]], beads: list[Bead]) -> list[Passage]:
    """Passages of both languages, each carrying the keys of its translation.

    ``en``/``zh`` are pieces grouped by paragraph and ``beads`` align paragraphs;
    every piece links to every piece of the paragraph(s) it is aligned with.
    """
    en_keys = _keys(article.article_id, "en", en)
    zh_keys = _keys(article.article_id, "zh", zh)
    links: dict[str, tuple[str, ...]] = {}
    for e_idx, z_idx in beads:
        e_all = tuple(k for i in e_idx for k in en_keys[i])
        z_all = tuple(k for j in z_idx for k in zh_keys[j])
        for k in e_all:
            links[k] = z_all
        for k in z_all:
            links[k] = e_all
    out: list[Passage] = []
    for lang, groups, keys, author in (
        ("en", en, en_keys, article.author_en or article.author_zh),
        ("zh", zh, zh_keys, article.author_zh or article.author_en),
    ):
        flat_keys = [k for ks in keys for k in ks]
        for pos, (text, key) in enumerate(zip(flatten(groups), flat_keys, strict=True)):
            out.append(
                Passage(
                    key=key,
                    article_id=article.article_id,
                    lang=lang,  # type: ignore[arg-type]
                    position=pos,
                    text=text,
                    title_en=article.title_en,
                    title_zh=article.title_zh,
                    date=article.date,
                    page=article.page,
                    author=author,
                    column=article.column,
                    source_path=article.source_path,
                    links=links.get(key, ()),
                )
            )
    return out


def _keys(article_id: str, lang: Lang, groups: list[list[str]]) -> list[list[str]]:
    out: list[list[str]] = []
    pos = 0
    for g in groups:
        out.append([passage_key(article_id, lang, pos + i) for i in range(len(g))])
        pos += len(g)
    return out


def passage_key(article_id: str, lang: Lang, position: int) -> str:
    """Stable citation key: same article, same language, same position -> same key."""
    return f"{article_id}:{lang}{position}"


def chunk_article(article: Article, vectors: np.ndarray | None = None) -> list[Passage]:
    """Split, align and build passages; ``vectors`` are the pieces' embeddings
    (English pieces first, then Chinese), or None for length-only alignment."""
    en = split_units(article.body_en, "en")
    zh = split_units(article.body_zh, "zh")
    en_v = zh_v = None
    if vectors is not None:
        n_en = len(flatten(en))
        en_v = group_vectors(en, vectors[:n_en])
        zh_v = group_vectors(zh, vectors[n_en:])
    en_text = [" ".join(g) for g in en]
    zh_text = ["".join(g) for g in zh]
    return make_passages(article, en, zh, align(en_text, zh_text, en_v, zh_v))
