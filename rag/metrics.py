"""Evaluation metrics: pure functions over per-question records.

Nothing here loads a model or touches the index, so every definition can be
unit-tested on hand-made records and re-computed from a run's JSONL. The
support judges that citation metrics need are passed in as callables; the
runner (``rag.evaluate``) builds them from ``SupportScorer`` or an LLM.

A record is the dict the runner writes per question (see ``eval/README.md``).
Metrics that do not apply to a record (answer accuracy of an unanswerable
question, citation recall of a refusal) are ``None`` there and are left out of
means, so a mean is always over the questions it is defined for.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from rag.text import normalize_numbers, split_sentences

Record = Mapping[str, Any]
SupportJudge = Callable[[str, Sequence[str]], bool]
"""(sentence, cited passage texts) -> is the sentence supported by their union?"""

_MARK_RE = re.compile(r"\[(\d+)\]")
_LEADING_MARKS_RE = re.compile(r"^\s*((?:\[\d+\]\s*)+)")
_WS_RE = re.compile(r"\s+")
_MARK_AFTER_END_RE = re.compile(r"([.!?。！？]+[”\"’」』）)]*)(\s*(?:\[\d+\]\s*)+)")
_SPACE_BEFORE_PUNCT_RE = re.compile(r"\s+([.!?,;:。！？，；：])")

# --------------------------------------------------------------------------- retrieval


def gold_matches(source_path: str, gold: str) -> bool:
    """A hit's absolute ``source_path`` matches a gold path given relative to its set's root.

    Compared on whole path components, so ``seeds/a.txt`` does not match ``oldseeds/a.txt``.
    """
    src = source_path.replace("\\", "/").rstrip("/")
    g = gold.replace("\\", "/").strip("/")
    return src == g or src.endswith("/" + g)


def article_ranks(retrieved_paths: Sequence[str], gold: Sequence[str]) -> list[int | None]:
    """1-based rank of each gold article among the distinct retrieved articles (None: missing).

    ``retrieved_paths`` are the source paths of the hits in order; several
    passages of one article count once, at the article's first position.
    """
    distinct: list[str] = []
    for p in retrieved_paths:
        if p not in distinct:
            distinct.append(p)
    ranks: list[int | None] = []
    for g in gold:
        rank = next((i + 1 for i, p in enumerate(distinct) if gold_matches(p, g)), None)
        ranks.append(rank)
    return ranks


def hit_at(ranks: Sequence[int | None], k: int) -> float | None:
    """1.0 if any gold article is within the first ``k`` articles (None: no gold)."""
    if not ranks:
        return None
    return 1.0 if any(r is not None and r <= k for r in ranks) else 0.0


def recall_at(ranks: Sequence[int | None], k: int) -> float | None:
    """Share of the gold articles found within the first ``k`` articles."""
    if not ranks:
        return None
    return sum(1 for r in ranks if r is not None and r <= k) / len(ranks)


def reciprocal_rank(ranks: Sequence[int | None]) -> float | None:
    """1 / rank of the best-placed gold article (0 when none was retrieved)."""
    if not ranks:
        return None
    found = [r for r in ranks if r is not None]
    return 1.0 / min(found) if found else 0.0


def ndcg_at(ranks: Sequence[int | None], k: int = 10) -> float | None:
    """Binary-relevance nDCG@k over articles: every gold article has gain 1."""
    if not ranks:
        return None
    dcg = sum(1.0 / math.log2(r + 1) for r in ranks if r is not None and r <= k)
    ideal = sum(1.0 / math.log2(i + 1) for i in range(1, min(len(ranks), k) + 1))
    return dcg / ideal


# --------------------------------------------------------------------------- answers


def normalize_answer(text: str) -> str:
    """Chinese numerals -> digits, full -> half width, no thousands separators, lower case, no spaces."""
    return _WS_RE.sub("", normalize_numbers(text).lower())


def answer_correct(answer: str, gold_answers: Mapping[str, Sequence[str]], alt_answer: str = "") -> bool | None:
    """RGB accuracy: any gold string (either language) occurs in the answer or its translation.

    None when the question has no gold strings (unanswerable or key-facts-only).
    """
    golds = [g for lang in ("en", "zh") for g in gold_answers.get(lang, []) if g.strip()]
    if not golds:
        return None
    hay = normalize_answer(answer) + "\n" + normalize_answer(alt_answer)
    return any(normalize_answer(g) in hay for g in golds)


def is_answerable(record: Record) -> bool:
    return record.get("type") != "unanswerable"


def rejection_rate(records: Iterable[Record]) -> float | None:
    """RGB rejection rate: share of unanswerable questions the system refused."""
    rows = [r for r in records if not is_answerable(r) and not r.get("error")]
    if not rows:
        return None
    return sum(1 for r in rows if r.get("refused")) / len(rows)


def false_refusal_rate(records: Iterable[Record]) -> float | None:
    """Share of answerable questions the system refused."""
    rows = [r for r in records if is_answerable(r) and not r.get("error")]
    if not rows:
        return None
    return sum(1 for r in rows if r.get("refused")) / len(rows)


# --------------------------------------------------------------------------- citations


def citation_markers(text: str) -> list[int]:
    """The ``[n]`` numbers in an answer, in order of appearance."""
    return [int(m) for m in _MARK_RE.findall(text)]


def citation_validity(
    answer: str, citations: Sequence[Mapping[str, Any]], retrieved_keys: Iterable[str], refused: bool = False
) -> bool | None:
    """Every ``[n]`` names a citation whose key was retrieved (a hit's passage or its translation).

    A non-refused answer with no marker at all is invalid: an uncited answer is
    not grounded. None for refusals without markers (nothing to check).
    """
    marks = citation_markers(answer)
    if not marks:
        return None if refused else False
    keys = set(retrieved_keys)
    by_n = {int(c["n"]): str(c["key"]) for c in citations}
    return all(n in by_n and by_n[n] in keys for n in marks)


def cited_sentences(answer: str) -> list[tuple[str, list[int]]]:
    """Split an answer into sentences, each with the citation numbers attached to it.

    Markers belong to the sentence they follow: "句一。[1]句二。[2]" splits (by
    the Chinese splitter) into "句一。", "[1]句二。", "[2]", so leading markers
    move back to the previous sentence.
    """
    # "Alpha rose. [1] Beta fell." -> "Alpha rose [1]. Beta fell.": the splitters cut
    # after end punctuation, so a marker placed after it must move before it.
    moved = _MARK_AFTER_END_RE.sub(lambda m: " " + m.group(2).strip() + m.group(1) + " ", answer)
    raw: list[str] = []
    for para in moved.splitlines():
        raw.extend(split_sentences(para))
    out: list[tuple[str, list[int]]] = []
    for s in raw:
        m = _LEADING_MARKS_RE.match(s)
        if m and out:
            out[-1][1].extend(citation_markers(m.group(1)))
            s = s[m.end() :]
        marks = citation_markers(s)
        text = _SPACE_BEFORE_PUNCT_RE.sub(r"\1", _MARK_RE.sub("", s)).strip()
        if text and any(ch.isalnum() for ch in text):
            out.append((text, marks))
        elif marks and out:
            out[-1][1].extend(marks)
    return [(t, sorted(set(ns), key=ns.index)) for t, ns in out]


def alce_citation_scores(
    sentences: Sequence[tuple[str, Sequence[int]]], passages: Mapping[int, str], judge: SupportJudge
) -> dict[str, Any]:
    """ALCE citation recall and precision of one answer (Gao et al. 2023, ``compute_autoais``).

    recall = share of sentences supported by the union of their cited passages
    (a sentence without a valid citation is unsupported). precision = share of
    citations that are needed: in a supported sentence with several
    citations, a citation is irrelevant when it alone does not support the
    sentence and the others still do; every citation of an unsupported
    sentence counts as not needed. Returns ``recall``, ``precision`` (None when
    there is nothing to score) and per-sentence details.
    """
    if not sentences:
        return {"recall": None, "precision": None, "sentences": []}
    supported = 0
    needed = 0
    total_cites = 0
    details: list[dict[str, Any]] = []
    for text, marks in sentences:
        total_cites += len(marks)
        if not marks or any(n not in passages for n in marks):
            joint = False
        else:
            joint = judge(text, [passages[n] for n in marks])
        supported += joint
        irrelevant: list[int] = []
        if joint and len(marks) > 1:
            for n in marks:
                if judge(text, [passages[n]]):
                    needed += 1
                    continue
                rest = [passages[m] for m in marks if m != n]
                if judge(text, rest):
                    irrelevant.append(n)
                else:
                    needed += 1
        elif joint:
            needed += 1
        details.append({"text": text, "cites": list(marks), "supported": bool(joint), "irrelevant": irrelevant})
    return {
        "recall": supported / len(sentences),
        "precision": needed / total_cites if total_cites else None,
        "sentences": details,
    }


def faithfulness(verdicts: Sequence[bool | None]) -> float:
    """RAGAS faithfulness: supported statements / judged statements; NaN when none were judged."""
    judged = [v for v in verdicts if v is not None]
    if not judged:
        return math.nan
    return sum(1 for v in judged if v) / len(judged)


# --------------------------------------------------------------------------- aggregation


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100) without numpy (records may be few)."""
    xs = sorted(v for v in values if v is not None and not math.isnan(v))
    if not xs:
        return None
    pos = (len(xs) - 1) * q / 100.0
    lo, hi = math.floor(pos), math.ceil(pos)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def _mean(values: Iterable[Any]) -> float | None:
    xs = [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return sum(xs) / len(xs) if xs else None


RATE_FIELDS = (
    "hit@1",
    "hit@5",
    "recall@5",
    "recall@10",
    "mrr",
    "ndcg@10",
    "accuracy",
    "citation_validity",
    "citation_recall",
    "citation_precision",
    "faithfulness",
)
"""Per-record fields whose mean is reported (the runner fills them)."""


def summarize(records: Sequence[Record]) -> dict[str, Any]:
    """Means of every per-record metric plus refusal rates, latency and error counts.

    Errored records count in ``n`` and ``errors`` but not in the means: they
    have no answer to score.
    """
    ok = [r for r in records if not r.get("error")]
    out: dict[str, Any] = {"n": len(records), "errors": len(records) - len(ok)}
    for name in RATE_FIELDS:
        out[name] = _mean(r.get(name) for r in ok)
    out["rejection_rate"] = rejection_rate(records)
    out["false_refusal_rate"] = false_refusal_rate(records)
    lat = [float(r["latency"]) for r in records if r.get("latency") is not None]
    out["latency_p50"] = percentile(lat, 50)
    out["latency_p95"] = percentile(lat, 95)
    return out


def breakdown(records: Sequence[Record], field: str) -> dict[str, dict[str, Any]]:
    """``summarize`` per value of ``field`` (``type`` or ``lang``), in first-seen order."""
    groups: dict[str, list[Record]] = {}
    for r in records:
        groups.setdefault(str(r.get(field)), []).append(r)
    return {k: summarize(v) for k, v in groups.items()}


def failure_kind(record: Record) -> str | None:
    """Why a record is a failure, for the report's worst-failures list (None: not a failure)."""
    if record.get("error"):
        return "error"
    if not is_answerable(record):
        return None if record.get("refused") else "answered when unanswerable"
    if record.get("refused"):
        return "refused when answerable"
    if record.get("accuracy") == 0.0:
        return "wrong answer"
    if record.get("citation_validity") == 0.0:
        return "invalid citations"
    return None


def failure_severity(record: Record) -> float:
    """Sort key: worse failures first (errors, then confident wrong answers, then misses)."""
    kind = failure_kind(record)
    base = {
        "error": 4.0,
        "answered when unanswerable": 3.0,
        "wrong answer": 2.0,
        "refused when answerable": 1.5,
        "invalid citations": 1.0,
    }.get(kind or "", 0.0)
    # A wrong answer whose gold article was not even retrieved is a retrieval failure: worse.
    return base + (0.5 if record.get("hit@5") == 0.0 else 0.0)
