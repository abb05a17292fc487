"""Small language helpers shared by chunking, answering and evaluation."""

from __future__ import annotations

import re
import unicodedata

from rag.types import Lang

_CJK_RE = re.compile(r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]")
_LATIN_RE = re.compile(r"[A-Za-z]")
# Chinese sentences end at 。！？ (and ；… when long); closing quotes/brackets stay attached.
_ZH_SENT_RE = re.compile(r"[^。！？!?]*(?:[。！？!?]+[”’」』）)]*|$)")
_EN_ABBREV = {
    "no",
    "mr",
    "mrs",
    "dr",
    "st",
    "vs",
    "co",
    "ltd",
    "inc",
    "jan",
    "feb",
    "aug",
    "sept",
    "oct",
    "nov",
    "dec",
    "u.s",
    "e.g",
    "i.e",
}
_EN_SPLIT_RE = re.compile(r"(?<=[.!?])[\"”’)]*\s+(?=[\"“‘(]?[A-Z0-9])")


def cjk_ratio(text: str) -> float:
    letters = len(_CJK_RE.findall(text)) + len(_LATIN_RE.findall(text))
    return len(_CJK_RE.findall(text)) / letters if letters else 0.0


_LATIN_WORD_RE = re.compile(r"[A-Za-z]+")


def detect_lang(text: str) -> Lang:
    """Chinese when CJK characters outnumber twice the Latin words: a Chinese name in
    an English question (or an English name in a Chinese one) must not flip the
    answer language."""
    cjk = len(_CJK_RE.findall(text))
    words = len(_LATIN_WORD_RE.findall(text))
    return "zh" if cjk and cjk > 2 * words else "en"


def split_sentences(text: str, lang: Lang | None = None) -> list[str]:
    """Split into sentences without ever cutting inside a character or a number."""
    lang = lang or detect_lang(text)
    text = text.strip()
    if not text:
        return []
    if lang == "zh":
        parts = [m.group(0).strip() for m in _ZH_SENT_RE.finditer(text)]
        return [p for p in parts if p]
    out: list[str] = []
    start = 0
    for m in _EN_SPLIT_RE.finditer(text):
        candidate = text[start : m.start()].strip()
        last = candidate.rsplit(" ", 1)[-1].rstrip(".").lower()
        if last in _EN_ABBREV or (len(last) == 1 and last.isalpha()):
            continue
        out.append(candidate + text[m.start() : m.end()].strip())
        start = m.end()
    tail = text[start:].strip()
    if tail:
        out.append(tail)
    return [s for s in out if s]


def pack_sentences(sentences: list[str], limit: int) -> list[str]:
    """Group consecutive sentences into pieces of at most ``limit`` characters
    (a single longer sentence stays whole)."""
    pieces: list[str] = []
    cur = ""
    for s in sentences:
        joiner = "" if (not cur or cjk_ratio(s) >= 0.2) else " "
        if cur and len(cur) + len(joiner) + len(s) > limit:
            pieces.append(cur)
            cur = s
        else:
            cur = cur + joiner + s if cur else s
    if cur:
        pieces.append(cur)
    return pieces


def normalize(text: str) -> str:
    """NFKC + lower case: full-width digits and letters compare equal to half-width."""
    return unicodedata.normalize("NFKC", text).lower()


_CN_DIGITS = {
    "零": 0,
    "〇": 0,
    "一": 1,
    "二": 2,
    "两": 2,
    "三": 3,
    "四": 4,
    "五": 5,
    "六": 6,
    "七": 7,
    "八": 8,
    "九": 9,
}
_CN_UNITS = {"十": 10, "百": 100, "千": 1000}
_CN_BIG = {"万": 10_000, "亿": 100_000_000}
_CN_RUN_RE = re.compile(r"[零〇一二两三四五六七八九十百千万亿]+")


def cn_to_int(run: str) -> int | None:
    """Value of a Chinese numeral ('二十二' -> 22, '两百' -> 200, '一九五九' -> 1959)."""
    if not run or any(ch not in _CN_DIGITS and ch not in _CN_UNITS and ch not in _CN_BIG for ch in run):
        return None
    if all(ch in _CN_DIGITS for ch in run):
        return int("".join(str(_CN_DIGITS[ch]) for ch in run)) if len(run) > 1 else _CN_DIGITS[run]
    total, section, digit = 0, 0, None
    for ch in run:
        if ch in _CN_DIGITS:
            digit = _CN_DIGITS[ch]
        elif ch in _CN_UNITS:
            section += (1 if digit is None else digit) * _CN_UNITS[ch]
            digit = None
        else:
            section += digit or 0
            total += (section or 1) * _CN_BIG[ch]
            section, digit = 0, None
    return total + section + (digit or 0)


def normalize_numbers(text: str) -> str:
    """Write numbers one way: full-width -> half-width, Chinese numerals -> digits,
    thousands separators dropped ('二十二' and '22', '200,000' and '200000' compare equal).
    Lone '一'/'万' stay: they are words far more often than numbers."""
    text = unicodedata.normalize("NFKC", text)
    text = re.sub(r"(?<=\d),(?=\d{3}(?!\d))", "", text)

    def repl(m: re.Match[str]) -> str:
        run = m.group(0)
        if len(run) == 1 and run not in "二两三四五六七八九十":
            return run
        value = cn_to_int(run)
        return str(value) if value is not None else run

    return _CN_RUN_RE.sub(repl, text)
