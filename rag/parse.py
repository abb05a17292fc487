"""Parse one archive file into an ``Article``.

The archive's files come in several shapes (see shared/corpus/README.md):
an English header (``Title/Author/Date/Page`` or ``Edition``) and machine
translation, an optional ``**Named Entities**`` list, ``<hr />``,
``Original:`` and the Chinese block (``### title``, author, date, ``第N版()``,
``专栏：column``, body); or the Chinese block alone for untranslated years.
Anything else is rejected with a reason, never half-parsed.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import re
import stat
import unicodedata
from pathlib import Path

from rag.errors import ParseError
from rag.types import Article

MAX_FILE_BYTES = 8 * 1024 * 1024
"""The largest real article is ~100 kB; anything far bigger is not an article."""

_HEADER_RE = re.compile(r"^(Title|Author|Date|Page|Edition)\s*:\s?(.*)$")
_DATE_RE = re.compile(r"^\s*(\d{4})-(\d{1,2})-(\d{1,2})\s*$")
_PAGE_ZH_RE = re.compile(r"^\s*第\s*(\d+)\s*版")
_COLUMN_RE = re.compile(r"^\s*专栏[：:]\s*(.*)$")
_DIGITS_RE = re.compile(r"(\d+)")
_WS_RE = re.compile(r"[\s\u3000]+")
_HR_RE = re.compile(r"^\s*<hr\s*/?>\s*$", re.IGNORECASE)
_ENTITIES_RE = re.compile(r"^\s*\*\*\s*Named Entities\s*\*\*\s*:?\s*$", re.IGNORECASE)
_FIRST_YEAR, _LAST_YEAR = 1900, 2100


def read_text(path: Path) -> tuple[str, bytes]:
    """Read a file as UTF-8 text, refusing what is not an article-like text file."""
    try:
        st = path.stat()
        if not stat.S_ISREG(st.st_mode):
            # A FIFO or device would block or never end: only regular files are articles.
            raise ParseError(str(path), "not a regular file")
        if st.st_size > MAX_FILE_BYTES:
            raise ParseError(
                str(path),
                f"file too large ({path.stat().st_size // 1024 // 1024} MB; "
                f"articles are under {MAX_FILE_BYTES // 1024 // 1024} MB)",
            )
        data = path.read_bytes()
    except PermissionError:
        raise ParseError(str(path), "permission denied (check the file's read permission)") from None
    except IsADirectoryError:
        raise ParseError(str(path), "is a directory") from None
    except OSError as exc:
        raise ParseError(str(path), f"unreadable ({exc.strerror or exc})") from None
    if not data.strip():
        raise ParseError(str(path), "empty file")
    if b"\x00" in data[:8192]:
        raise ParseError(str(path), "binary file (contains NUL bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        hint = ""
        try:
            data.decode("gb18030")
            hint = " (looks like GBK/GB18030: convert with `iconv -f GB18030 -t UTF-8`)"
        except UnicodeDecodeError:
            pass
        raise ParseError(str(path), f"not UTF-8 text{hint}") from None
    return text.replace("\r\n", "\n").replace("\r", "\n"), data


def parse_file(path: str | Path) -> Article:
    """Parse an archive file; raises ``ParseError`` with the reason when it is not one."""
    p = Path(path)
    text, data = read_text(p)
    return parse_text(text, source_path=str(p), content_hash=hashlib.sha256(data).hexdigest())


def parse_text(text: str, source_path: str = "<text>", content_hash: str | None = None) -> Article:
    if content_hash is None:
        content_hash = hashlib.sha256(text.encode("utf-8")).hexdigest()
    lines = text.split("\n")
    hr = next((i for i, line in enumerate(lines) if _HR_RE.match(line)), None)
    first = next((line for line in lines if line.strip()), "")

    if hr is not None:
        en_part, zh_part = lines[:hr], lines[hr + 1 :]
    elif first.startswith("### "):
        en_part, zh_part = [], lines
    elif _HEADER_RE.match(first):
        en_part, zh_part = lines, []
    else:
        raise ParseError(
            source_path,
            "no article header (expected 'Title:' lines or a '### ' Chinese title)",
        )

    header: dict[str, str] = {}
    body_en: list[str] = []
    entities: list[str] = []
    if en_part:
        header, body_en, entities = _parse_english(en_part, source_path)

    zh: dict[str, str] = {}
    body_zh: list[str] = []
    if zh_part:
        zh, body_zh = _parse_chinese(zh_part, source_path, required=not header)

    date_text = header.get("date") or zh.get("date", "")
    if not date_text:
        raise ParseError(source_path, "no date in the header")
    date = _parse_date(date_text, source_path)
    page = _parse_page(header.get("page", ""), zh.get("page", ""))

    title_en = _clean_title(header.get("title", ""))
    title_zh = _clean_title(zh.get("title", ""))
    if not (title_en or title_zh):
        raise ParseError(source_path, "article has no title")
    author_en = header.get("author", "").strip()
    author_zh = zh.get("author", "").strip()
    body_en = _drop_headlines(body_en, [header.get("title", ""), author_en])
    body_zh = _drop_headlines(body_zh, [zh.get("title", ""), author_zh])
    if not body_en and not body_zh:
        raise ParseError(source_path, "article has no body text")

    return Article(
        article_id=article_id(date, page, title_zh or title_en, (body_zh or body_en)[0]),
        title_en=title_en,
        title_zh=title_zh,
        date=date,
        page=page,
        author_en=author_en,
        author_zh=author_zh,
        column=zh.get("column", "").strip(),
        body_en=body_en,
        body_zh=body_zh,
        source_path=source_path,
        content_hash=content_hash,
        entities=entities,
    )


def article_id(date: dt.date, page: int | None, title: str, first_paragraph: str) -> str:
    """An ID from what the article *is* (date, page, title, opening), not where it lies.

    The opening paragraph is part of the key because the archive has many
    same-day, same-page items with identical titles (picture captions, briefs).
    """
    basis = "|".join([date.isoformat(), str(page or ""), _squash(title), _squash(first_paragraph)[:80]])
    return hashlib.sha1(basis.encode("utf-8")).hexdigest()[:16]


def _parse_english(lines: list[str], source: str) -> tuple[dict[str, str], list[str], list[str]]:
    header: dict[str, str] = {}
    i = 0
    # Header fields, possibly separated by blank lines.
    while i < len(lines):
        line = lines[i]
        m = _HEADER_RE.match(line)
        if m:
            key = m.group(1).lower()
            header["page" if key == "edition" else key] = m.group(2).strip()
            i += 1
        elif not line.strip() and "date" not in header:
            i += 1
        else:
            break
    if "title" not in header:
        raise ParseError(source, "header has no 'Title:' line")
    if "date" not in header:
        raise ParseError(source, "header has no 'Date:' line")
    body: list[str] = []
    entities: list[str] = []
    in_entities = False
    for line in lines[i:]:
        if _ENTITIES_RE.match(line):
            in_entities = True
            continue
        if in_entities:
            item = line.strip().lstrip("-*• ").strip()
            if item:
                entities.append(item)
            continue
        stripped = _clean_line(line)
        if stripped and stripped != "Original:":
            body.append(stripped)
    return header, body, entities


def _parse_chinese(lines: list[str], source: str, required: bool) -> tuple[dict[str, str], list[str]]:
    start = next((i for i, line in enumerate(lines) if line.startswith("### ")), None)
    if start is None:
        if required:
            raise ParseError(source, "no '### ' Chinese title block")
        return {}, []
    out = {"title": lines[start][4:].strip()}
    i = start + 1
    # Author (possibly empty), date, 第N版(), 专栏： — each optional but in this order.
    meta_end = min(len(lines), start + 8)
    body_start = i
    for j in range(i, meta_end):
        line = lines[j].strip()
        if _DATE_RE.match(line):
            out["date"] = line
            body_start = j + 1
            if j > i and "author" not in out:
                out["author"] = lines[j - 1].strip() if j - 1 >= i else ""
        elif _PAGE_ZH_RE.match(line):
            m = _PAGE_ZH_RE.match(line)
            out["page"] = m.group(1) if m else ""
            body_start = j + 1
        elif (cm := _COLUMN_RE.match(line)) is not None:
            out["column"] = cm.group(1)
            body_start = j + 1
            break
    if "date" not in out and required:
        raise ParseError(source, "Chinese block has no date line (YYYY-MM-DD)")
    body = [c for c in (_clean_line(line) for line in lines[body_start:]) if c]
    return out, body


def _parse_date(text: str, source: str) -> dt.date:
    m = _DATE_RE.match(text)
    if not m:
        raise ParseError(source, f"date {text.strip()!r} is not YYYY-MM-DD")
    y, mo, d = (int(g) for g in m.groups())
    try:
        date = dt.date(y, mo, d)
    except ValueError:
        raise ParseError(source, f"impossible date {text.strip()!r}") from None
    if not _FIRST_YEAR <= y <= _LAST_YEAR:
        raise ParseError(source, f"date {text.strip()!r} is outside {_FIRST_YEAR}-{_LAST_YEAR}")
    return date


def _parse_page(en: str, zh: str) -> int | None:
    for text in (en, zh):
        m = _DIGITS_RE.search(text or "")
        if m:
            return int(m.group(1))
    return None


def _clean_line(line: str) -> str:
    return unicodedata.normalize("NFC", line).strip(" \t\u3000\ufeff")


def _clean_title(title: str) -> str:
    return _WS_RE.sub(" ", title).strip()


def _squash(text: str) -> str:
    return _WS_RE.sub("", unicodedata.normalize("NFKC", text)).lower()


def _drop_headlines(body: list[str], heads: list[str]) -> list[str]:
    """Remove headline and byline lines repeated at the top of a body.

    Only the first few lines are examined, and only lines that are a part of
    the title or the byline, so real paragraphs are never lost.
    """
    keys = [_squash(h) for h in heads if h.strip()]
    out = list(body)
    while out and len(body) - len(out) < 5:
        line = _squash(out[0])
        if line and any(line in k for k in keys) and len(line) < 200:
            out.pop(0)
        else:
            break
    return out
