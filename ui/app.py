"""The Gradio chat UI: streaming cited answers with bilingual sources and filters.

One ``Baokan`` serves every browser session; Gradio's queue runs several
requests at once (``default_concurrency_limit``), so a slow LLM answer for one
user does not hold up the others. Domain errors become readable chat messages
here and only here.
"""

from __future__ import annotations

import ipaddress
import logging
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import gradio as gr

from rag.config import Settings, get_settings
from rag.errors import BaokanError, ConfigError
from rag.pipeline import Baokan
from rag.retrieve import make_filter
from rag.types import Answer, Hit, Passage, SearchFilter
from ui import render

log = logging.getLogger(__name__)

SEEDS_DIR = Path(__file__).resolve().parent.parent / "seeds"
DEFAULT_CONCURRENCY = 4
BACKENDS = ("extractive", "local", "openai")
_DEFAULT_OPENAI_URL = "https://api.openai.com/v1"

CSS = """
#sources { font-size: 0.92em; }
#sources h4 { margin: 0 0 .5em 0; }
.src-card { border: 1px solid var(--border-color-primary); border-radius: 8px;
            padding: .6em .8em; margin-bottom: .8em; }
.src-card.flash { outline: 3px solid #f5b301; }
.src-head .src-n { font-weight: 700; color: var(--color-accent); }
.src-head .title-en { font-weight: 600; }
.src-head .title-zh { font-weight: 600; opacity: .85; }
.src-head .meta, .src-card .path { font-size: .85em; opacity: .7; }
.src-card .pair { display: grid; grid-template-columns: 1fr 1fr; gap: .8em; margin-top: .4em; }
.src-card .col p { margin: 0 0 .4em 0; }
.src-card mark { background: #ffe58a; color: inherit; }
.src-card details.full summary { cursor: pointer; margin-top: .4em; font-size: .9em; }
.src-card details.full h5 { margin: .3em 0; }
.none { opacity: .6; font-style: italic; }
a.cite { text-decoration: none; font-weight: 600; cursor: pointer; }
.alt-answer { margin-top: .5em; opacity: .85; }
.warn { color: #b3261e; margin-top: .4em; }
.note { opacity: .7; margin-top: .4em; }
"""

# Clicking [n] scrolls to its source card. Capture phase: the chatbot would
# otherwise open the link in a new tab.
HEAD = """
<script>
document.addEventListener('click', function (e) {
  var a = e.target && e.target.closest ? e.target.closest('a.cite') : null;
  if (!a) { return; }
  e.preventDefault(); e.stopPropagation();
  var id = (a.getAttribute('href') || '').replace('#', '');
  var el = document.getElementById(id);
  if (!el) { return; }
  el.scrollIntoView({behavior: 'smooth', block: 'start'});
  el.classList.add('flash');
  setTimeout(function () { el.classList.remove('flash'); }, 1600);
}, true);
</script>
"""


def theme() -> gr.themes.Base:
    # System fonts: the default theme fetches Google Fonts, which an offline
    # deployment cannot reach.
    return gr.themes.Soft(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])


def style_kwargs() -> dict[str, Any]:
    """Theme, CSS and script; Gradio 6 takes them in ``launch()``."""
    return {"theme": theme(), "css": CSS, "head": HEAD}


def backends(settings: Settings) -> list[str]:
    """Answer backends worth offering: openai only when something is configured for it."""
    out = ["extractive", "local"]
    if settings.openai_api_key is not None or settings.openai_base_url.rstrip("/") != _DEFAULT_OPENAI_URL:
        out.append("openai")
    return out


def parse_auth(value: str | None) -> list[tuple[str, str]] | None:
    """'user:pass,user2:pass2' into Gradio's credential list."""
    if value is None or not value.strip():
        return None
    pairs = []
    for item in value.split(","):
        user, sep, password = item.strip().partition(":")
        if not sep or not user.strip() or not password:
            shown = user.strip() or "?"
            raise ConfigError(
                f"Bad login entry for user {shown!r} in BAOKAN_AUTH (passwords are not shown).",
                "Use 'user:password' pairs separated by commas, e.g. BAOKAN_AUTH='ana:secret,li:pass2'.",
            )
        pairs.append((user.strip(), password))
    return pairs


def is_loopback(host: str) -> bool:
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, auth: list[tuple[str, str]] | None, allow_public: bool) -> None:
    """Refuse to open the archive to the network without a login, unless asked to."""
    if is_loopback(host) or auth or allow_public:
        return
    raise ConfigError(
        f"Refusing to listen on {host!r} without a login: anyone on the network could use this server.",
        "Set BAOKAN_AUTH='user:password' (comma-separated pairs), or BAOKAN_ALLOW_PUBLIC=true to allow it "
        "anyway, or use --host 127.0.0.1.",
    )


def _text_of(content: Any) -> str:
    """Message content as plain text (Gradio 6 sends lists of typed blocks)."""
    if isinstance(content, str):
        return content
    if isinstance(content, dict):
        return str(content.get("text", ""))
    if isinstance(content, list | tuple):
        return "".join(_text_of(c) for c in content)
    return ""


def _display(chat: Sequence[Any] | None) -> list[dict[str, str]]:
    out = []
    for m in chat or []:
        role = m.get("role") if isinstance(m, dict) else getattr(m, "role", None)
        content = m.get("content") if isinstance(m, dict) else getattr(m, "content", "")
        if role in ("user", "assistant"):
            out.append({"role": role, "content": _text_of(content)})
    return out


class ChatUI:
    """The handlers behind the page; plain methods so tests can call them directly."""

    def __init__(self, app: Baokan, seeds_dir: Path | None = SEEDS_DIR) -> None:
        self.app = app
        self.seeds_dir = seeds_dir
        self._index_lock = threading.Lock()
        self._ready = False

    # --- index ---------------------------------------------------------------
    def ensure_index(self, progress: Any = None) -> str:
        """Index seeds/ on first start with an empty index, so the demo works unconfigured."""
        with self._index_lock:
            if self._ready or not self.app.is_empty():
                self._ready = True
                return self._index_status()
            if self.seeds_dir is None or not self.seeds_dir.is_dir():
                return "The index is empty. Add articles with `baokan ingest PATH`, then reload this page."

            def wrap(items: Any, total: int) -> Any:
                if progress is None:
                    return items
                return progress.tqdm(items, total=total, desc="Indexing seeds/ (first start)", unit="file")

            report = self.app.ingest([self.seeds_dir], progress=wrap)
            self._ready = True
            return (
                f"First start: indexed {report.articles} articles ({report.passages} passages) from "
                f"`{self.seeds_dir.name}/`. " + self._index_status()
            )

    def load(self, progress: gr.Progress = gr.Progress()) -> str:  # noqa: B008 - Gradio injects it
        try:
            return self.ensure_index(progress)
        except BaokanError as exc:
            return f"⚠ {exc.message} {exc.fix}".strip()
        except Exception as exc:
            log.exception("indexing seeds failed")
            return f"⚠ Indexing failed ({type(exc).__name__}); see the server log."

    def _index_status(self) -> str:
        c = self.app.index.counts()
        return f"Index: {c['articles']} articles, {c['passages']} passages."

    def full_text(self, article_id: str) -> list[Passage]:
        try:
            return self.app.index.article_passages(article_id)
        except Exception:  # the full text is a convenience; the card still shows the quote
            log.exception("cannot load article %s", article_id)
            return []

    # --- answering -----------------------------------------------------------
    def events(
        self, question: str, k: int | None, flt: SearchFilter | None, llm: str | None, history: list[dict[str, str]]
    ) -> Iterator[dict[str, Any]]:
        """The pipeline's stream, or the same events built from search + ask where it has none."""
        ask_stream = getattr(self.app, "ask_stream", None)
        if ask_stream is not None:
            yield from ask_stream(question, k=k, flt=flt, llm=llm, history=history or None)
            return
        from rag.retrieve import check_question

        question = check_question(question)
        hits = self.app.search(question, k=k, flt=flt)
        yield {"type": "sources", "hits": hits, "standalone_question": question}
        yield {"type": "answer", "answer": self.app.ask(question, k=k, flt=flt)}

    def respond(
        self,
        message: str,
        chat: list[Any] | None,
        history: list[dict[str, str]] | None,
        date_from: str | None,
        date_to: str | None,
        page: str | None,
        k: float | None,
        llm: str | None,
    ) -> Iterator[tuple[list[dict[str, str]], str, str, str, list[dict[str, str]]]]:
        """Stream one turn: yields (chat, sources html, status, textbox, history)."""
        shown = _display(chat)
        history = list(history or [])
        question = (message or "").strip()
        shown.append({"role": "user", "content": render.render_user(question) or "…"})
        sources = ""
        t0 = time.perf_counter()

        def out(answer_html: str, status: str, box: str = "") -> tuple[Any, ...]:
            return ([*shown, {"role": "assistant", "content": answer_html}], sources, status, box, history)

        if not question:
            yield out(render.render_error(BaokanError("The question is empty.", "Type a question first.")), "")
            return
        hits: list[Hit] = []
        text = ""
        try:
            flt = make_filter(date_from or None, date_to or None, page or None)
            self.ensure_index()
            yield out('<span class="typing">Searching the archive…</span>', "Searching…")
            for event in self.events(question, int(k) if k else None, flt, llm or None, history):
                kind = event.get("type")
                if kind == "sources":
                    hits = list(event.get("hits") or [])
                    sources = render.render_hits(hits, self.full_text)
                    standalone = event.get("standalone_question") or ""
                    note = f" Searched for: “{standalone}”." if standalone and standalone != question else ""
                    took = time.perf_counter() - t0
                    yield out(
                        '<span class="typing">Writing the answer…</span>',
                        f"{len(hits)} sources in {took:.1f} s.{note}",
                    )
                elif kind == "token":
                    text += str(event.get("text", ""))
                    yield out(render.render_partial(text, hits), "Writing the answer…")
                elif kind == "answer":
                    answer: Answer = event["answer"]
                    sources = render.render_sources_for(answer, hits, self.full_text)
                    history = [
                        *history,
                        {"role": "user", "content": question},
                        {"role": "assistant", "content": answer.answer},
                    ]
                    took = time.perf_counter() - t0
                    status = f"Answered in {took:.1f} s · {answer.backend} · {len(answer.citations)} cited"
                    yield out(render.render_answer(answer), status + ".")
        except BaokanError as exc:
            yield out(render.render_error(exc), "", message)
        except Exception as exc:
            log.exception("answering %r failed", question)
            yield out(render.render_error(exc), "", message)

    def clear(self) -> tuple[list[Any], str, str, list[Any]]:
        return [], "", "", []


def build_app(
    app: Baokan,
    seeds_dir: Path | None = SEEDS_DIR,
    llm: str | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
) -> gr.Blocks:
    """The page, wired to ``app``; tests pass a Baokan on a temporary data dir."""
    ui = ChatUI(app, seeds_dir)
    choices = backends(app.settings)
    default_llm = llm or app.settings.llm
    if default_llm not in choices:
        choices.append(default_llm)

    with gr.Blocks(title="Baokan · 报刊", analytics_enabled=False) as demo:
        gr.Markdown(
            "## Baokan · 报刊问答\nAsk about the People's Daily archive in English or Chinese. "
            "Answers cite their sources [n]; click a marker to jump to the source."
        )
        status = gr.Markdown(
            "Checking the index… (a first start indexes the bundled seeds/, about a minute)", elem_id="status"
        )
        with gr.Row():
            with gr.Column(scale=5):
                chatbot = gr.Chatbot(
                    elem_id="chat",
                    height=520,
                    label="Chat",
                    latex_delimiters=[],
                    feedback_options=None,
                    buttons=["copy"],
                )
                with gr.Row():
                    box = gr.Textbox(
                        placeholder="Ask a question… / 请输入问题…",
                        show_label=False,
                        scale=6,
                        elem_id="question",
                        autofocus=True,
                    )
                    send = gr.Button("Ask", variant="primary", scale=1, elem_id="ask")
                clear = gr.Button("Clear chat", elem_id="clear", size="sm")
                with gr.Accordion("Filters and answer settings", open=True):
                    with gr.Row():
                        date_from = gr.Textbox(label="From date", placeholder="YYYY[-MM[-DD]]", elem_id="date-from")
                        date_to = gr.Textbox(label="To date", placeholder="YYYY[-MM[-DD]]", elem_id="date-to")
                        page = gr.Textbox(label="Page", placeholder="any", elem_id="page")
                    with gr.Row():
                        k = gr.Slider(1, 10, value=app.settings.top_k, step=1, label="Sources", elem_id="k")
                        backend = gr.Dropdown(
                            choices=choices, value=default_llm, label="Answer backend", elem_id="backend"
                        )
                    gr.Markdown("The answer is written in the language of the question.")
            with gr.Column(scale=6):
                sources = gr.HTML("", elem_id="sources-panel", label="Sources")
        history = gr.State([])

        inputs = [box, chatbot, history, date_from, date_to, page, k, backend]
        outputs = [chatbot, sources, status, box, history]
        box.submit(ui.respond, inputs, outputs, api_name="ask")
        send.click(ui.respond, inputs, outputs, api_visibility="private")
        clear.click(ui.clear, None, [chatbot, sources, status, history], api_visibility="private", queue=False)
        demo.load(ui.load, None, status, api_visibility="private")
    demo.queue(default_concurrency_limit=concurrency, max_size=64)
    return demo


def launch_kwargs(settings: Settings, host: str | None = None, port: int | None = None) -> dict[str, Any]:
    """launch() arguments from settings, after the exposure check."""
    host = host or settings.host
    port = port or settings.port
    auth = parse_auth(settings.auth.get_secret_value() if settings.auth else None)
    check_exposure(host, auth, settings.allow_public)
    return {
        "server_name": host,
        "server_port": port,
        "auth": auth,
        "auth_message": "Baokan · log in to use the archive" if auth else None,
        "share": False,
        "footer_links": [],
        **style_kwargs(),
    }


def serve(host: str | None = None, port: int | None = None, llm: str | None = None) -> int:
    """Entry point of ``baokan serve`` / ``make run``: blocks until interrupted."""
    settings = get_settings({"llm": llm} if llm else None)
    kwargs = launch_kwargs(settings, host, port)
    app = Baokan(settings)
    demo = build_app(app, llm=llm)
    print(f"Baokan UI on http://{kwargs['server_name']}:{kwargs['server_port']} (Ctrl-C to stop)", flush=True)
    try:
        demo.launch(**kwargs)
    finally:
        app.close()
    return 0
