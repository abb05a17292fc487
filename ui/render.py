"""HTML for the chat UI, built from untrusted article text.

Everything that comes from the archive (titles, passages, even the answer,
which the extractive backend copies from articles) is escaped here before
any markup is added; the only HTML that reaches the page is this module's
own. Escaping also neutralises Markdown, because the chatbot renders
Markdown: an article containing ``[click](http://evil)`` or ``**`` must
show those characters, not a link or bold text.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence

from rag.errors import BaokanError
from rag.text import split_sentences
from rag.types import Answer, Citation, Hit, Passage

# Characters HTML or Markdown (or the chatbot's LaTeX) would interpret,
# mapped to numeric entities that both render as the literal character.
_ENTITIES = {
    "&": "&amp;",
    "<": "&lt;",
    ">": "&gt;",
    '"': "&quot;",
    "'": "&#39;",
    **{ch: f"&#{ord(ch)};" for ch in "[]()*_`#!~|\\${}:"},
}
_TRANSLATE = str.maketrans(_ENTITIES)
_ESCAPED_MARKER = re.compile(r"&#91;(\d{1,3})&#93;")


def esc(text: object) -> str:
    """Escape text for HTML and Markdown alike (numeric entities for both)."""
    return str(text).translate(_TRANSLATE)


def _page(page: int | None) -> str:
    return f"p. {page}" if page is not None else "p. ?"


def link_markers(escaped: str, titles: dict[int, str]) -> str:
    """Turn escaped ``[n]`` markers into links to source card ``#src-n``.

    Works on already escaped text, so a marker can only become a link when
    ``n`` is a real source number; any other bracketed number stays text.
    """

    def repl(m: re.Match[str]) -> str:
        n = int(m.group(1))
        if n not in titles:
            return m.group(0)
        return f'<a class="cite" href="#src-{n}" data-n="{n}" title="{esc(titles[n])}">&#91;{n}&#93;</a>'

    return _ESCAPED_MARKER.sub(repl, escaped)


def mark_spans(text: str, needles: Iterable[str]) -> str:
    """Escape ``text`` and wrap each occurrence of a needle sentence in <mark>."""
    spans: list[tuple[int, int]] = []
    for needle in needles:
        needle = needle.strip()
        if len(needle) < 2:
            continue
        start = text.find(needle)
        while start >= 0:
            end = start + len(needle)
            if not any(s < end and start < e for s, e in spans):
                spans.append((start, end))
            start = text.find(needle, end)
    spans.sort()
    out: list[str] = []
    pos = 0
    for s, e in spans:
        out.append(esc(text[pos:s]))
        out.append(f"<mark>{esc(text[s:e])}</mark>")
        pos = e
    out.append(esc(text[pos:]))
    return "".join(out)


def _needles(highlight: str, lang: str) -> list[str]:
    """A highlight may join several sentences that are apart in the quote."""
    if not highlight.strip():
        return []
    return [highlight, *split_sentences(highlight, "zh" if lang == "zh" else "en")]


def _paragraphs(html_text: str) -> str:
    return "".join(f"<p>{part}</p>" for part in html_text.split("\n") if part.strip()) or "<p class='none'>—</p>"


def _full_article(passages: Sequence[Passage]) -> str:
    if not passages:
        return ""
    cols = []
    for lang, label in (("en", "English"), ("zh", "中文")):
        body = "".join(f"<p>{esc(p.text)}</p>" for p in passages if p.lang == lang)
        if body:
            cols.append(f'<div class="col" lang="{lang}"><h5>{label}</h5>{body}</div>')
    return (
        f'<details class="full"><summary>Full article · 全文</summary><div class="pair">{"".join(cols)}</div></details>'
    )


def source_card(
    n: int,
    *,
    title_en: str,
    title_zh: str,
    date: str,
    page: int | None,
    author: str,
    column: str,
    en: str,
    zh: str,
    highlight_en: str = "",
    highlight_zh: str = "",
    full: Sequence[Passage] = (),
    source_path: str = "",
) -> str:
    """One source: bilingual titles and metadata, the passage side by side, the full text on demand."""
    meta = [esc(date), esc(_page(page))]
    if author:
        meta.append(esc(author))
    if column:
        meta.append(f"column: {esc(column)}")
    no_en, no_zh = "<p class='none'>(no English text)</p>", "<p class='none'>（无中文）</p>"
    en_html = _paragraphs(mark_spans(en, _needles(highlight_en, "en"))) if en else no_en
    zh_html = _paragraphs(mark_spans(zh, _needles(highlight_zh, "zh"))) if zh else no_zh
    path = f'<div class="path">{esc(source_path)}</div>' if source_path else ""
    return (
        f'<div class="src-card" id="src-{n}" data-n="{n}">'
        f'<div class="src-head"><span class="src-n">&#91;{n}&#93;</span> '
        f'<span class="title-en">{esc(title_en) or "(untitled)"}</span>'
        f'<div class="title-zh" lang="zh">{esc(title_zh)}</div>'
        f'<div class="meta">{" · ".join(meta)}</div></div>'
        f'<div class="pair"><div class="col quote-en" lang="en">{en_html}</div>'
        f'<div class="col quote-zh" lang="zh">{zh_html}</div></div>'
        f"{_full_article(full)}{path}</div>"
    )


FullText = Callable[[str], Sequence[Passage]]


def _panel(phase: str, heading: str, cards: list[str]) -> str:
    return f'<div id="sources" data-phase="{phase}"><h4>{heading}</h4>{"".join(cards)}</div>'


def render_hits(hits: Sequence[Hit], full_text: FullText | None = None, heading: str = "") -> str:
    """Sources as retrieved (shown while the answer is still being written)."""
    if not hits:
        return _panel("empty", "Sources", ['<p class="none">No article matches this question and filters.</p>'])
    cards = _cards([Citation.from_hit(n, h) for n, h in enumerate(hits, 1)], full_text)
    return _panel("retrieved", heading or f"Sources found ({len(hits)}) — writing the answer…", cards)


def _cards(citations: Sequence[Citation], full_text: FullText | None) -> list[str]:
    """One card per source; retrieved hits come as highlight-free citations, so the layout
    of a source is written once."""
    return [
        source_card(
            c.n,
            title_en=c.title_en,
            title_zh=c.title_zh,
            date=c.date.isoformat(),
            page=c.page,
            author=c.author,
            column=c.column,
            en=c.quote_en,
            zh=c.quote_zh,
            highlight_en=c.highlight_en,
            highlight_zh=c.highlight_zh,
            full=full_text(c.article_id) if full_text else (),
            source_path=c.source_path,
        )
        for c in citations
    ]


def render_citations(citations: Sequence[Citation], full_text: FullText | None = None) -> str:
    """The cited sources of a finished answer, supporting sentences highlighted."""
    cards = _cards(citations, full_text)
    return _panel("final", f"Cited sources ({len(citations)})", cards)


def render_sources_for(answer: Answer, hits: Sequence[Hit], full_text: FullText | None = None) -> str:
    """Final panel: the citations, or the retrieved passages when nothing was cited."""
    if answer.citations:
        return render_citations(answer.citations, full_text)
    shown = answer.hits or list(hits)
    if not shown:
        return render_hits([], full_text)
    return render_hits(shown, full_text, heading=f"Retrieved passages ({len(shown)}), none cited").replace(
        'data-phase="retrieved"', 'data-phase="final"', 1
    )


def citation_titles(citations: Sequence[Citation]) -> dict[int, str]:
    return {c.n: f"{c.title_en or c.title_zh} ({c.date.isoformat()}, {_page(c.page)})" for c in citations}


def hit_titles(hits: Sequence[Hit]) -> dict[int, str]:
    return {
        n: f"{h.passage.title_en or h.passage.title_zh} ({h.passage.date.isoformat()}, {_page(h.passage.page)})"
        for n, h in enumerate(hits, 1)
    }


def render_partial(text: str, hits: Sequence[Hit]) -> str:
    """A streaming answer so far: escaped, markers linked to the retrieved sources."""
    return link_markers(esc(text), hit_titles(hits)) + ' <span class="typing">▍</span>'


def render_answer(answer: Answer) -> str:
    """The finished answer: text with linked markers, the other-language version, any backend problem."""
    titles = citation_titles(answer.citations)
    refused = str(answer.refused).lower()
    parts = [f'<div class="answer" data-refused="{refused}">{link_markers(esc(answer.answer), titles)}</div>']
    if answer.alt_answer:
        parts.append(f'<div class="alt-answer">{link_markers(esc(answer.alt_answer), titles)}</div>')
    if answer.incomplete:
        parts.append('<div class="note">The answer was cut short (length limit).</div>')
    if answer.error:
        parts.append(
            f'<div class="warn">The answer model failed: {esc(answer.error)} '
            "The retrieved sources are still shown.</div>"
        )
    return "".join(parts)


def render_error(exc: BaseException) -> str:
    """A readable message for a failed request; never a traceback."""
    if isinstance(exc, BaokanError):
        text = exc.message + (f" {exc.fix}" if exc.fix else "")
    else:
        text = f"Something went wrong while answering ({type(exc).__name__}). The details are in the server log."
    return f'<div class="warn error">⚠ {esc(text)}</div>'


def render_user(text: str) -> str:
    return esc(text)
