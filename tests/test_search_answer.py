"""Retrieval and extractive answers over the real seeds index (real embedder, Chroma, jieba)."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from rag.errors import FilterError, QuestionError
from rag.pipeline import Baokan
from rag.retrieve import make_filter
from tests.conftest import HONGQIAO_Q

HONGQIAO_DATE = dt.date(1959, 11, 24)


def test_hybrid_search_finds_the_article(seeds_app: Baokan) -> None:
    hits = seeds_app.search(HONGQIAO_Q)
    assert hits[0].passage.date == HONGQIAO_DATE
    assert hits[0].linked, "a hit carries its translation"
    langs = {hits[0].passage.lang} | {p.lang for p in hits[0].linked}
    assert langs == {"en", "zh"}


@pytest.mark.parametrize("mode", ["dense", "bm25"])
def test_single_index_modes(seeds_app: Baokan, mode: str) -> None:
    hits = seeds_app.search("红桥区 技术革新 建议", mode=mode)  # type: ignore[arg-type]
    assert hits and hits[0].passage.date == HONGQIAO_DATE


def test_grouping_limits_passages_per_article(seeds_app: Baokan) -> None:
    hits = seeds_app.search("technical innovation", k=5)
    per_article: dict[str, int] = {}
    for h in hits:
        per_article[h.passage.article_id] = per_article.get(h.passage.article_id, 0) + 1
    assert max(per_article.values()) <= seeds_app.settings.passages_per_article
    assert len(per_article) >= 3


def test_filters_apply_to_both_indexes(seeds_app: Baokan) -> None:
    flt = make_filter("1959-01-01", "1959-12-31")
    for mode in ("dense", "bm25", "hybrid"):
        hits = seeds_app.search("technical innovation", flt=flt, mode=mode)  # type: ignore[arg-type]
        assert hits and all(h.passage.date.year == 1959 for h in hits)
    page7 = seeds_app.search("Chongqing", flt=make_filter(page=7))
    assert page7 and all(h.passage.page == 7 for h in page7)


def test_filter_matching_nothing_returns_nothing(seeds_app: Baokan) -> None:
    assert seeds_app.search(HONGQIAO_Q, flt=make_filter("2001-01-01", "2001-12-31")) == []
    ans = seeds_app.ask(HONGQIAO_Q, flt=make_filter("2001", "2001"))
    assert ans.refused and "does not say" in ans.answer and not ans.citations


def test_bad_filters_and_questions_are_named() -> None:
    with pytest.raises(FilterError, match="reversed"):
        make_filter("1960-01-01", "1959-01-01")
    with pytest.raises(FilterError, match="Bad from date"):
        make_filter("24/11/1959", None)
    with pytest.raises(FilterError, match="page"):
        make_filter(page="two")


def test_empty_and_punctuation_questions(seeds_app: Baokan) -> None:
    with pytest.raises(QuestionError, match="empty"):
        seeds_app.ask("   ")
    with pytest.raises(QuestionError, match="no words"):
        seeds_app.search("?!…")


def test_english_question_finds_chinese_only_article(tmp_path, seeds_app: Baokan) -> None:  # type: ignore[no-untyped-def]
    from rag.config import Settings

    article = (
        "### 鞍山钢铁公司大型轧钢厂提前投入生产\n\n1954-12-26\n第1版()\n专栏：\n\n"
        "    新华社鞍山25日电　鞍山钢铁公司新建的大型轧钢厂今天提前投入生产，开始轧制钢轨。\n"
        "    这个轧钢厂的设备是苏联设计的，建成后每年可以生产大量钢轨和型钢，供应铁路建设的需要。\n"
    )
    folder = tmp_path / "zh"
    folder.mkdir()
    (folder / "anshan.md").write_text(article, encoding="utf-8")
    app = Baokan(Settings(data_dir=tmp_path / "data"), embedder=seeds_app.embedder)
    app.ingest([folder, seeds_app.settings.data_dir.parent / "none"])  # the missing path is reported, not fatal
    app.ingest([tmp_path / "zh"])
    from tests.conftest import SEEDS

    app.ingest([SEEDS])
    hits = app.search("When did the Anshan large rolling mill start producing steel rails?", k=3)
    assert hits[0].passage.title_zh.startswith("鞍山钢铁公司大型轧钢厂")
    assert hits[0].passage.lang == "zh"
    app.close()


def test_extractive_answer_cites_the_1959_article(seeds_app: Baokan) -> None:
    ans = seeds_app.ask(HONGQIAO_Q)
    assert not ans.refused
    assert ans.citations[0].date == HONGQIAO_DATE and ans.citations[0].page == 2
    assert "200,000" in ans.answer
    # Every [n] in the answer points at a citation, and every sentence is copied from it.
    markers = {int(n) for n in re.findall(r"\[(\d+)\]", ans.answer)}
    assert markers == {c.n for c in ans.citations}
    for part in re.split(r"\s*\[\d+\]\s*", ans.answer):
        if part.strip():
            assert any(part.strip() in (c.quote_en + c.quote_zh) for c in ans.citations)
    c = ans.citations[0]
    assert c.quote_en and c.quote_zh and "二十多万件" in c.quote_zh
    assert c.highlight_en and c.highlight_en in c.quote_en


def test_chinese_question_gets_chinese_answer(seeds_app: Baokan) -> None:
    ans = seeds_app.ask("重庆建设机床厂被评为巧姑娘的有多少人？")
    assert not ans.refused and ans.lang == "zh"
    assert "三百六十七" in ans.answer
    assert ans.citations[0].date == dt.date(1959, 6, 5)


def test_unanswerable_question_is_refused(seeds_app: Baokan) -> None:
    ans = seeds_app.ask("Who won the football World Cup in 1998?")
    assert ans.refused and "does not say" in ans.answer
    assert ans.citations == []
