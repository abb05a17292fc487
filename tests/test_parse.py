from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from rag.errors import ParseError
from rag.parse import parse_file, parse_text
from tests.conftest import CORPUS, SEEDS

SEED0 = SEEDS / "000_1bca0996e3dfc6b6.txt"


def test_seed_header_and_both_languages() -> None:
    a = parse_file(SEED0)
    assert a.title_en.startswith("Top and Bottom Work Together")
    assert a.title_zh.startswith("上下齐动手")
    assert a.date == dt.date(1959, 11, 24)
    assert a.page == 2
    assert a.author_en == "Shu Ti" and a.author_zh == "舒倜"
    assert len(a.body_en) == 4 and len(a.body_zh) == 4
    # Headline lines repeated at the top of the Chinese body are not paragraphs.
    assert a.body_zh[0].startswith("新华社天津23日电")


def test_every_seed_parses_with_distinct_ids() -> None:
    ids = {parse_file(p).article_id for p in sorted(SEEDS.glob("*.txt"))}
    assert len(ids) == 5


@pytest.mark.corpus
@pytest.mark.skipif(not CORPUS.exists(), reason="../shared/corpus not present")
def test_every_corpus_file_parses() -> None:
    files = sorted(CORPUS.rglob("*.md"))
    assert len(files) >= 200
    ids = set()
    for f in files:
        a = parse_file(f)
        assert a.body_zh, f
        assert a.title_zh, f
        assert a.page is not None, f
        ids.add(a.article_id)
    assert len(ids) == len(files)


def test_id_does_not_depend_on_path(tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "renamed.md"
    copy.parent.mkdir()
    copy.write_bytes(SEED0.read_bytes())
    assert parse_file(copy).article_id == parse_file(SEED0).article_id


def test_chinese_only_article() -> None:
    text = "### 钢铁生产捷报\n\n1985-03-02\n第1版()\n专栏：\n\n    本报讯　某钢铁厂今年第一季度超额完成生产计划。\n"
    a = parse_text(text, "cn.md")
    assert a.body_en == [] and a.title_en == ""
    assert a.title_zh == "钢铁生产捷报" and a.page == 1 and a.date == dt.date(1985, 3, 2)
    assert a.body_zh == ["本报讯　某钢铁厂今年第一季度超额完成生产计划。"]


def test_edition_header_named_entities_and_truncated_english() -> None:
    text = (
        "Title: A Test\nAuthor: \n\nDate: 1990-05-06\nEdition: 3\n"
        "The factory made more steel than ever and\n\n"
        "**Named Entities**\n- Anshan Steel\n- Li Ming\n\n<hr />\n\nOriginal:\n\n"
        "### 测试\n李明\n1990-05-06\n第3版()\n专栏：科技\n\n    鞍钢生产了更多的钢。\n    第二段。\n"
    )
    a = parse_text(text, "x.md")
    assert a.page == 3 and a.column == "科技" and a.author_zh == "李明" and a.author_en == ""
    assert a.entities == ["Anshan Steel", "Li Ming"]
    assert a.body_en == ["The factory made more steel than ever and"]
    assert a.body_zh == ["鞍钢生产了更多的钢。", "第二段。"]


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty"),
        (b"\x00\x01\x02binary", "binary"),
        ("Title: x\nDate: 1959-11-24\n".encode("gbk") + "正文".encode("gbk") + b"\xff", "not UTF-8"),
        (b"just some text\nwithout a header\n", "no article header"),
        (b"Title: X\nDate: 1959-02-30\nPage: 1\n\nbody text here\n", "impossible date"),
        (b"Title: X\nDate: 19-1-1\nPage: 1\n\nbody\n", "not YYYY-MM-DD"),
    ],
)
def test_bad_files_are_rejected_with_a_reason(tmp_path: Path, content: bytes, reason: str) -> None:
    f = tmp_path / "bad.txt"
    f.write_bytes(content)
    with pytest.raises(ParseError) as err:
        parse_file(f)
    assert reason in err.value.reason
    assert str(f) in str(err.value)
