"""rag.metrics on tiny hand-made records: every definition checked against a value worked out by hand."""

from __future__ import annotations

import math
from collections.abc import Sequence

import pytest

from rag import metrics

SEED = "/work/main/seeds/000_1bca0996e3dfc6b6.txt"
OTHER = "/work/main/seeds/001_523bdd3c56f652b7.txt"
CORPUS = "/work/shared/corpus/rmrb/1953.10/1953-10-04_哈尔滨长春改为中央直辖市.md"


# --------------------------------------------------------------------------- retrieval


def test_gold_matches_on_whole_path_components() -> None:
    assert metrics.gold_matches(SEED, "seeds/000_1bca0996e3dfc6b6.txt")
    assert metrics.gold_matches(CORPUS, "rmrb/1953.10/1953-10-04_哈尔滨长春改为中央直辖市.md")
    assert not metrics.gold_matches("/x/oldseeds/000_1bca0996e3dfc6b6.txt", "seeds/000_1bca0996e3dfc6b6.txt")
    assert not metrics.gold_matches(OTHER, "seeds/000_1bca0996e3dfc6b6.txt")


def test_article_ranks_count_each_article_once_in_order() -> None:
    # Two passages of OTHER come first: SEED is the second *article*, not the third hit.
    hits = [OTHER, OTHER, SEED, CORPUS]
    assert metrics.article_ranks(hits, ["seeds/000_1bca0996e3dfc6b6.txt"]) == [2]
    assert metrics.article_ranks(hits, ["seeds/000_1bca0996e3dfc6b6.txt", "rmrb/1957.01/missing.md"]) == [2, None]
    assert metrics.article_ranks([], ["seeds/a.txt"]) == [None]


def test_hit_recall_and_mrr() -> None:
    ranks: list[int | None] = [3, None]
    assert metrics.hit_at(ranks, 1) == 0.0
    assert metrics.hit_at(ranks, 5) == 1.0
    assert metrics.recall_at(ranks, 5) == 0.5
    assert metrics.recall_at([1, 2], 1) == 0.5
    assert metrics.reciprocal_rank(ranks) == pytest.approx(1 / 3)
    assert metrics.reciprocal_rank([None]) == 0.0


def test_retrieval_metrics_undefined_without_gold() -> None:
    for fn in (
        lambda r: metrics.hit_at(r, 5),
        lambda r: metrics.recall_at(r, 5),
        metrics.reciprocal_rank,
        metrics.ndcg_at,
    ):
        assert fn([]) is None


def test_ndcg_by_hand() -> None:
    assert metrics.ndcg_at([1], 10) == pytest.approx(1.0)
    assert metrics.ndcg_at([2], 10) == pytest.approx(1 / math.log2(3))
    # Two gold at ranks 1 and 3: (1 + 1/log2(4)) / (1 + 1/log2(3))
    assert metrics.ndcg_at([1, 3], 10) == pytest.approx((1 + 0.5) / (1 + 1 / math.log2(3)))
    assert metrics.ndcg_at([11], 10) == 0.0
    assert metrics.ndcg_at([None, None], 10) == 0.0


# --------------------------------------------------------------------------- answers


@pytest.mark.parametrize(
    ("a", "b"),
    [
        ("二十二", "22"),
        ("两百", "200"),
        ("２２", "22"),
        ("200,000", "200000"),
        ("Two Thousand", "twothousand"),
        ("10月24日", "10月24日"),
        ("一九五九年", "1959年"),
    ],
)
def test_normalize_answer_equates_number_forms(a: str, b: str) -> None:
    assert metrics.normalize_answer(a) == metrics.normalize_answer(b)


def test_answer_correct_either_language_and_alt_answer() -> None:
    gold = {"en": ["22", "twenty-two"], "zh": ["二十二"]}
    assert metrics.answer_correct("天津市车辆厂实现了22项重大革新。", gold)
    assert metrics.answer_correct("The factory made twenty-two innovations.", gold)
    # Chinese numerals in the answer match the digit gold string after normalization.
    assert metrics.answer_correct("实现了二十二项", {"en": ["22"], "zh": []})
    assert metrics.answer_correct("两百名工人", {"en": ["200"], "zh": []})
    # Found only in the translation shown beside the answer.
    assert metrics.answer_correct("It made many innovations.", gold, alt_answer="实现了二十二项革新")
    assert not metrics.answer_correct("It made 23 innovations.", gold)


def test_answer_correct_is_none_without_gold_strings() -> None:
    assert metrics.answer_correct("anything", {"en": [], "zh": []}) is None


def _rec(type_: str, refused: bool, **kw: object) -> dict[str, object]:
    return {"type": type_, "refused": refused, "error": None, **kw}


def test_rejection_and_false_refusal_rates() -> None:
    recs = [
        _rec("unanswerable", True),
        _rec("unanswerable", False),
        _rec("unanswerable", True),
        _rec("factoid", True),
        _rec("factoid", False),
        _rec("metadata", False),
        _rec("paraphrase", False),
        {"type": "unanswerable", "refused": False, "error": "Boom"},  # errored: not in either rate
    ]
    assert metrics.rejection_rate(recs) == pytest.approx(2 / 3)
    assert metrics.false_refusal_rate(recs) == pytest.approx(1 / 4)
    assert metrics.rejection_rate([_rec("factoid", False)]) is None


# --------------------------------------------------------------------------- citations


CITES = [{"n": 1, "key": "a:en0"}, {"n": 2, "key": "b:zh3"}]


def test_citation_validity() -> None:
    retrieved = {"a:en0", "a:zh0", "b:zh3"}
    assert metrics.citation_validity("X [1]. Y [2].", CITES, retrieved) is True
    assert metrics.citation_validity("X [1]. Y [3].", CITES, retrieved) is False  # no citation 3
    assert metrics.citation_validity("X [2].", CITES, {"a:en0"}) is False  # cited key not retrieved
    assert metrics.citation_validity("An answer with no source.", [], retrieved) is False
    assert metrics.citation_validity("The archive does not say.", [], retrieved, refused=True) is None


def test_cited_sentences_attach_markers_to_the_sentence_they_follow() -> None:
    en = metrics.cited_sentences("Alpha rose. [1] Beta fell [2][3].")
    assert en == [("Alpha rose.", [1]), ("Beta fell.", [2, 3])]
    zh = metrics.cited_sentences("产量提高了。[1]成本降低了。[2]")
    assert zh == [("产量提高了。", [1]), ("成本降低了。", [2])]
    assert metrics.cited_sentences("No markers here.") == [("No markers here.", [])]


def _substring_judge(sentence: str, passages: Sequence[str]) -> bool:
    """Supported when every word of the sentence occurs in the union of the passages."""
    union = " ".join(passages).lower()
    return all(w in union for w in sentence.lower().rstrip(".").split())


def test_alce_recall_and_precision_by_hand() -> None:
    passages = {1: "alpha rose", 2: "beta fell", 3: "gamma unrelated", 4: "alpha"}
    sentences = [
        ("alpha rose.", [1]),  # supported, 1 needed citation
        ("alpha rose.", [1, 3]),  # supported; 3 alone fails and 1 alone suffices -> 3 irrelevant
        ("alpha beta.", [1, 2]),  # supported only jointly: both needed
        ("delta sank.", [2]),  # unsupported: its citation is not needed
        ("alpha rose.", []),  # uncited: unsupported
    ]
    out = metrics.alce_citation_scores(sentences, passages, _substring_judge)
    assert out["recall"] == pytest.approx(3 / 5)
    # citations: 1 + 2 + 2 + 1 + 0 = 6; needed: 1 + 1 + 2 + 0 = 4
    assert out["precision"] == pytest.approx(4 / 6)
    assert out["sentences"][1]["irrelevant"] == [3]
    assert [s["supported"] for s in out["sentences"]] == [True, True, True, False, False]


def test_alce_citation_to_missing_passage_is_unsupported() -> None:
    out = metrics.alce_citation_scores([("alpha rose.", [9])], {1: "alpha rose"}, _substring_judge)
    assert out["recall"] == 0.0 and out["precision"] == 0.0


def test_alce_nothing_to_score() -> None:
    out = metrics.alce_citation_scores([], {}, _substring_judge)
    assert out["recall"] is None and out["precision"] is None


def test_faithfulness_ratio_and_nan_without_verdicts() -> None:
    assert metrics.faithfulness([True, False, True, None]) == pytest.approx(2 / 3)
    assert math.isnan(metrics.faithfulness([]))
    assert math.isnan(metrics.faithfulness([None, None]))


# --------------------------------------------------------------------------- aggregation


def test_percentile_interpolates() -> None:
    assert metrics.percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert metrics.percentile([1.0, 2.0, 3.0, 4.0, 5.0], 95) == pytest.approx(4.8)
    assert metrics.percentile([], 50) is None


def test_summarize_counts_errors_and_skips_undefined_values() -> None:
    recs = [
        {
            "type": "factoid",
            "lang": "en",
            "refused": False,
            "error": None,
            "hit@5": 1.0,
            "mrr": 1.0,
            "accuracy": 1.0,
            "latency": 1.0,
        },
        {
            "type": "factoid",
            "lang": "zh",
            "refused": False,
            "error": None,
            "hit@5": 0.0,
            "mrr": 0.0,
            "accuracy": 0.0,
            "latency": 3.0,
        },
        {
            "type": "unanswerable",
            "lang": "en",
            "refused": True,
            "error": None,
            "hit@5": None,
            "mrr": None,
            "accuracy": None,
            "latency": 2.0,
        },
        {"type": "factoid", "lang": "en", "refused": False, "error": "ValueError: x", "hit@5": None, "latency": None},
    ]
    s = metrics.summarize(recs)
    assert s["n"] == 4 and s["errors"] == 1
    assert s["hit@5"] == 0.5 and s["accuracy"] == 0.5 and s["mrr"] == 0.5
    assert s["rejection_rate"] == 1.0 and s["false_refusal_rate"] == 0.0
    assert s["latency_p50"] == 2.0
    assert s["citation_validity"] is None
    by_lang = metrics.breakdown(recs, "lang")
    assert list(by_lang) == ["en", "zh"]
    assert by_lang["en"]["n"] == 3 and by_lang["en"]["errors"] == 1 and by_lang["zh"]["hit@5"] == 0.0
    assert set(metrics.breakdown(recs, "type")) == {"factoid", "unanswerable"}


def test_failure_kinds_and_order() -> None:
    wrong_missed: dict[str, object] = {"type": "factoid", "refused": False, "accuracy": 0.0, "hit@5": 0.0}
    wrong: dict[str, object] = {"type": "factoid", "refused": False, "accuracy": 0.0, "hit@5": 1.0}
    answered: dict[str, object] = {"type": "unanswerable", "refused": False}
    refused: dict[str, object] = {"type": "metadata", "refused": True, "accuracy": 0.0}
    fine = {"type": "factoid", "refused": False, "accuracy": 1.0, "citation_validity": 1.0}
    err: dict[str, object] = {"type": "factoid", "error": "RuntimeError: x"}
    assert metrics.failure_kind(fine) is None
    assert metrics.failure_kind({"type": "unanswerable", "refused": True}) is None
    assert metrics.failure_kind(refused) == "refused when answerable"
    assert metrics.failure_kind(answered) == "answered when unanswerable"
    order = sorted([refused, wrong, answered, err, wrong_missed], key=lambda r: -metrics.failure_severity(r))
    assert order == [err, answered, wrong_missed, wrong, refused]
