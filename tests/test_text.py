from __future__ import annotations

from rag.chunk import align, chunk_article, split_units
from rag.parse import parse_file
from rag.text import cn_to_int, detect_lang, normalize_numbers, split_sentences
from rag.tokenize import tokenize
from tests.conftest import SEEDS


def test_chinese_numerals() -> None:
    assert cn_to_int("二十二") == 22
    assert cn_to_int("两百") == 200
    assert cn_to_int("六万") == 60000
    assert cn_to_int("一千二百") == 1200
    assert normalize_numbers("二十二项和２２项，200,000件") == "22项和22项,200000件"


def test_sentences_never_cut_inside_characters() -> None:
    zh = "全区职工提出了建议。“群众拣芝麻，工厂抱西瓜”。最后一句！"
    parts = split_sentences(zh, "zh")
    assert "".join(parts) == zh and len(parts) == 3
    en = split_sentences("In the Tianjin No. 6 Dyeing Factory, it works. Then 2,000 more came.", "en")
    assert en == ["In the Tianjin No. 6 Dyeing Factory, it works.", "Then 2,000 more came."]


def test_detect_lang_tolerates_mixed_scripts() -> None:
    assert detect_lang("天津红桥区 Hongqiao 的技术革新") == "zh"
    assert detect_lang("What did 红桥区 do in 1959?") == "en"


def test_jieba_tokens_for_chinese_and_english() -> None:
    toks = tokenize("全区六万工业职工提出了技术革新建议 Hongqiao suggestions")
    assert "技术革新" in toks and "职工" in toks
    assert "hongqiao" in toks and "suggestion" in toks
    assert "了" not in toks


def test_long_paragraphs_are_cut_at_sentence_ends() -> None:
    para = "这是一个句子。" * 100
    groups = split_units([para], "zh")
    assert len(groups) == 1 and len(groups[0]) > 1
    assert "".join(groups[0]) == para
    assert all(len(p) <= 400 for p in groups[0])


def test_alignment_links_translations_by_length_alone() -> None:
    a = parse_file(SEEDS / "002_8ab13afc5602f97b.txt")
    passages = chunk_article(a)
    en = [p for p in passages if p.lang == "en"]
    zh = [p for p in passages if p.lang == "zh"]
    assert en and zh
    by_key = {p.key: p for p in passages}
    # Every link points to a passage of the other language of the same article, both ways.
    for p in passages:
        for k in p.links:
            assert by_key[k].lang != p.lang and p.key in by_key[k].links
    # The paragraph about 8,000 yuan of iron filings is linked to its Chinese original.
    filings = next(p for p in en if "8,000 yuan" in p.text)
    assert any("八千元" in by_key[k].text for k in filings.links)


def test_alignment_skips_untranslated_tail() -> None:
    beads = align(["a" * 300], ["甲" * 100, "乙" * 100, "丙" * 100])
    paired = [b for b in beads if b[0] and b[1]]
    assert len(paired) == 1
    assert sum(len(b[1]) for b in beads) == 3
