"""Citation checking after generation: models get citations wrong, so none is trusted.

For each answer sentence: ``[n]`` markers that point at no given source are
dropped; the sentence is scored against every given source (both languages of
a passage count as one source, so a Chinese passage supports an English
sentence through its translation); a sentence its cited source supports keeps
that citation, otherwise it is re-cited to the best-supporting source, or —
when no source supports it — flagged as unsupported and left uncited. An
answer with no supported sentence becomes the fixed refusal. Citations are
renumbered in order of first use, so ``[1]`` is always the first source shown.

Support is :class:`rag.support.SupportScorer` (lexical + embedding), a
calibrated similarity rather than entailment; the threshold is the same
``min_evidence`` that gates refusal before generation.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace

import numpy as np

from rag.answer import refusal
from rag.support import SupportScorer
from rag.text import detect_lang, normalize_numbers, split_sentences
from rag.types import Answer, Citation, Hit, Lang

# [1], [1, 2], [1][2], 【1】, [source 1], [^1]
_MARK_RE = re.compile(r"\s*[\[【]\s*(?:\^|source\s*|来源\s*)?(\d+(?:\s*[,，、]\s*\d+)*)\s*[\]】]", re.IGNORECASE)
_TRAILING_MARKS_RE = re.compile(r"([.!?。！？])((?:\s*[\[【]\s*\d+(?:\s*[,，、]\s*\d+)*\s*[\]】])+)")
_MIN_CLAIM_CHARS = 4
RECITE_MARGIN = 0.1
"""A cited source this much below the best-supporting one is replaced by it."""
UNSUPPORTED = {"en": " (unsupported by the sources)", "zh": "（资料中无依据）"}
_REFUSAL_CUES = ("archive does not say", "does not say", "档案中没有", "没有相关记载")


@dataclass
class SentenceCheck:
    """The verdict on one answer sentence."""

    text: str
    cited: list[int]
    """Source numbers (1-based, as given to the model) the model cited, valid ones only."""
    dropped: list[int]
    """Numbers the model cited that match no given source."""
    support: float
    source: int | None
    """The source (1-based, as given) the sentence now cites; None = unsupported."""
    highlight: tuple[Lang, str] | None = None
    claim: bool = True
    """False for sentences that assert nothing to check (too short, "the archive does not say")."""


@dataclass
class Verification:
    sentences: list[SentenceCheck] = field(default_factory=list)

    @property
    def judged(self) -> list[SentenceCheck]:
        return [s for s in self.sentences if s.claim]

    @property
    def support(self) -> float | None:
        judged = self.judged
        if not judged:
            return None
        return sum(s.source is not None for s in judged) / len(judged)


_NUMBER = re.compile(r"(\d+(?:\.\d+)?)(?:\s*多?\s*([万千亿]))?")
_UNIT = {"千": 1e3, "万": 1e4, "亿": 1e8}


def numbers(text: str) -> set[float]:
    """Numbers in ``text``: Chinese numerals normalised, thousands separators dropped, and a
    trailing 千/万/亿 applied ("二十多万" = 200000, "1.5万" = 15000)."""
    text = re.sub(r"(?<=\d),(?=\d{3})", "", normalize_numbers(text))
    out: set[float] = set()
    for m in _NUMBER.finditer(text):
        value = float(m.group(1)) * _UNIT.get(m.group(2) or "", 1.0)
        if value < 1e16:
            out.add(round(value, 6))
    return out


def numbers_consistent(claim: str, source_text: str) -> bool:
    """False when the claim states a number the source does not contain (a wrong figure
    scores high on word overlap otherwise: "200" against "200,000"). Sources without
    digits cannot be checked."""
    have = numbers(source_text)
    return not have or numbers(claim) <= have


def markers(text: str) -> list[int]:
    """Every source number cited in ``text``, in order."""
    return [int(n) for m in _MARK_RE.finditer(text) for n in re.split(r"[,，、\s]+", m.group(1)) if n]


def strip_markers(text: str) -> str:
    return _MARK_RE.sub("", text).strip()


def _units(hit: Hit) -> list[tuple[Lang, str]]:
    """Sentences of a hit in both languages: the grain at which support is judged."""
    out: list[tuple[Lang, str]] = []
    for p in (hit.passage, *hit.linked):
        out.extend((p.lang, s) for s in split_sentences(p.text, p.lang) if len(s) >= _MIN_CLAIM_CHARS)
        out.append((p.lang, p.text))
    return out


class CitationVerifier:
    """Checks and repairs the citations of a generated answer against the given hits."""

    def __init__(self, scorer: SupportScorer, threshold: float = 0.45) -> None:
        self.scorer = scorer
        self.threshold = threshold

    def check(self, answer: str, hits: list[Hit]) -> Verification:
        lang = detect_lang(answer)
        # "claim. [1] Next" -> "claim [1]. Next": markers after the full stop belong to that sentence.
        answer = _TRAILING_MARKS_RE.sub(lambda m: m.group(2) + m.group(1), answer)
        raw = [s for s in split_sentences(answer, lang) if strip_markers(s)]
        # A marker split off by the sentence splitter ("... 1959. [2]") belongs to the sentence before.
        sents: list[str] = []
        for s in raw:
            if sents and not strip_markers(s).strip(" .。"):
                sents[-1] += s
            else:
                sents.append(s)
        units = [_units(h) for h in hits]
        flat = [u for us in units for u in us]
        owner = np.array([i for i, us in enumerate(units) for _ in us], dtype=np.int64)
        claims = [strip_markers(s) for s in sents]
        if not flat or not claims:
            return Verification(
                [SentenceCheck(c, [], markers(s), 0.0, None) for s, c in zip(sents, claims, strict=True)]
            )
        vecs = self.scorer.embedder.embed(claims + [t for _, t in flat])
        cv, uv = vecs[: len(claims)], vecs[len(claims) :]
        out = Verification()
        for i, (s, claim) in enumerate(zip(sents, claims, strict=True)):
            nums = markers(s)
            valid = [n for n in dict.fromkeys(nums) if 1 <= n <= len(hits)]
            dropped = [n for n in nums if not 1 <= n <= len(hits)]
            sc = self.scorer.scores(claim, [t for _, t in flat], cv[i], uv)
            per_hit = np.full(len(hits), -1.0, dtype=np.float32)
            best_unit = [-1] * len(hits)
            for j, h in enumerate(owner):
                if sc[j] > per_hit[h]:
                    per_hit[h], best_unit[h] = float(sc[j]), j
            for h in range(len(hits)):
                if not numbers_consistent(claim, f"{hits[h].en}\n{hits[h].zh}"):
                    per_hit[h] = min(float(per_hit[h]), self.threshold - 0.01)
            chosen: int | None = None
            best = int(np.argmax(per_hit)) if len(hits) else 0
            top = float(per_hit[best]) if len(hits) else 0.0
            # Keep the model's own citation when it holds about as well as the best source;
            # otherwise re-cite to the best-supporting source (if any supports the sentence).
            for n in valid:
                ok = per_hit[n - 1] >= self.threshold and per_hit[n - 1] >= top - RECITE_MARGIN
                if ok and (chosen is None or per_hit[n - 1] > per_hit[chosen - 1]):
                    chosen = n
            if chosen is None and top >= self.threshold:
                chosen = best + 1
            support = float(per_hit[chosen - 1]) if chosen else float(per_hit.max(initial=0.0))
            hl = flat[best_unit[chosen - 1]] if chosen else None
            is_claim = len(claim) >= _MIN_CLAIM_CHARS and not _is_refusal(claim) and not _is_question(claim)
            if not is_claim:
                chosen, hl = None, None
            out.sentences.append(SentenceCheck(claim, valid, dropped, support, chosen, hl, is_claim))
        return out

    def answer(self, question: str, text: str, hits: list[Hit], backend: str, lang: Lang | None = None) -> Answer:
        """The verified ``Answer``: renumbered citations, flagged sentences, support share."""
        lang = lang or detect_lang(question)
        v = self.check(text, hits)
        supported = [s for s in v.judged if s.source is not None]
        if not supported:
            ans = Answer(question, refusal(lang), True, [], hits, backend, lang=lang)
            ans.support = v.support if supported else 0.0
            return ans
        numbering: dict[int, int] = {}
        for s in v.sentences:
            if s.source is not None and s.source not in numbering:
                numbering[s.source] = len(numbering) + 1
        parts: list[str] = []
        for s in v.sentences:
            if _is_question(s.text):
                continue
            if s.source is not None:
                parts.append(f"{s.text} [{numbering[s.source]}]")
            elif s.claim:
                parts.append(s.text + UNSUPPORTED[lang])
            else:
                parts.append(s.text)
        citations: list[Citation] = []
        for src, n in numbering.items():
            users = [s for s in v.sentences if s.source == src]
            cit = Citation.from_hit(n, hits[src - 1], support=sum(s.support for s in users) / len(users))
            for s in users:
                if s.highlight is not None:
                    cit = _highlight(cit, *s.highlight)
            citations.append(cit)
        joiner = "" if lang == "zh" else " "
        return Answer(
            question=question,
            answer=joiner.join(parts),
            refused=False,
            citations=citations,
            hits=hits,
            backend=backend,
            support=v.support,
            lang=lang,
        )


def _is_question(text: str) -> bool:
    """Small models echo the question; a question asserts nothing and is dropped."""
    return text.rstrip().endswith(("?", "？"))


def _is_refusal(text: str) -> bool:
    low = text.lower()
    return any(cue in low for cue in _REFUSAL_CUES)


def _highlight(c: Citation, lang: Lang, text: str) -> Citation:
    # Whole-passage units are not highlights: only sentences are.
    if text in (c.quote_en, c.quote_zh):
        return c
    if lang == "en" and text not in c.highlight_en:
        return replace(c, highlight_en=f"{c.highlight_en} {text}".strip())
    if lang == "zh" and text not in c.highlight_zh:
        return replace(c, highlight_zh=c.highlight_zh + text)
    return c
