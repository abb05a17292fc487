"""The chat UI's handlers and HTML, exercised with the real pipeline (no browser).

Untrusted article text is the main risk of a page that shows archive
passages, so a hostile article is indexed and every piece of HTML the UI
produces for it is checked for live markup.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import gradio as gr
import pytest
from pydantic import SecretStr

from rag.config import Settings
from rag.errors import ConfigError
from rag.pipeline import Baokan
from tests.conftest import HONGQIAO_Q
from ui import render
from ui.app import ChatUI, _text_of, backends, build_app, check_exposure, launch_kwargs, parse_auth

HOSTILE = """Title: <script>alert('t')</script> Zebra Crossing [3](http://evil.example) **bold**
Author: <img src=x onerror=alert(1)>
Date: 1970-05-05
Page: 3

The zebra crossing committee <script>alert('body')</script> painted 4,321 zebra crossings
in Lhasa [7] [x](javascript:alert(1)).

The committee also repainted <b>old</b> lines $x$ and `code`.

<hr />

Original:


### <script>alert('zh')</script>斑马线委员会
<img src=x onerror=alert(2)>
1970-05-05
第3版()
专栏：

    斑马线委员会<script>alert('zhbody')</script>在拉萨画了4321条斑马线[7]。
"""

OUR_TAGS = {"div", "span", "p", "a", "h4", "h5", "mark", "details", "summary"}


class _Markup(HTMLParser):
    """Collects the real tags and attributes a browser would build from an HTML string."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tags: list[tuple[str, dict[str, str | None]]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.tags.append((tag, dict(attrs)))


def assert_only_our_markup(html: str) -> None:
    parser = _Markup()
    parser.feed(html)
    for tag, attrs in parser.tags:
        assert tag in OUR_TAGS, f"foreign tag <{tag}> in {html[:200]}"
        assert not any(name.startswith("on") for name in attrs), attrs
        href = attrs.get("href")
        assert href is None or re.fullmatch(r"#src-\d+", href), href


def _run(
    ui: ChatUI,
    question: str,
    chat: list[Any] | None = None,
    history: list[dict[str, str]] | None = None,
    date_from: str = "",
    date_to: str = "",
    page: str = "",
    k: int = 5,
    llm: str = "extractive",
) -> list[tuple[Any, ...]]:
    return list(ui.respond(question, chat or [], history or [], date_from, date_to, page, k, llm))


@pytest.fixture(scope="module")
def ui(seeds_app: Baokan) -> ChatUI:
    return ChatUI(seeds_app)


@pytest.fixture(scope="module")
def hostile_ui(seeds_app: Baokan, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChatUI]:
    """An empty index whose 'seeds' folder holds one hostile article (shares the loaded embedder)."""
    seeds = tmp_path_factory.mktemp("hostile-seeds")
    (seeds / "hostile.txt").write_text(HOSTILE, encoding="utf-8")
    app = Baokan(Settings(data_dir=tmp_path_factory.mktemp("hostile-data")), embedder=seeds_app.embedder)
    assert app.is_empty()
    yield ChatUI(app, seeds_dir=seeds)
    app.close()


# --- rendering -------------------------------------------------------------


def test_escape_neutralises_html_and_markdown() -> None:
    out = render.esc('<script>x</script> [a](http://e) **b** `c` $d$ & "q"')
    assert "<" not in out and ">" not in out and "[" not in out and "(" not in out
    assert "*" not in out and "`" not in out and "$" not in out and '"' not in out
    assert "&lt;script&gt;" in out and "&amp;" in out


def test_only_real_source_numbers_become_links() -> None:
    html = render.link_markers(render.esc("A [1] B [9] C [x]"), {1: 'T "1" <b>'})
    assert html.count('<a class="cite"') == 1
    assert 'href="#src-1"' in html and "&#91;9&#93;" in html
    assert 'title="T &quot;1&quot; &lt;b&gt;"' in html


def test_mark_spans_highlights_escaped_sentences() -> None:
    html = render.mark_spans("One <i>. Two is here. Three.", ["Two is here.", "absent"])
    assert html == "One &lt;i&gt;. <mark>Two is here.</mark> Three."


def test_error_messages_never_show_a_traceback() -> None:
    assert "Traceback" not in render.render_error(RuntimeError("boom <b>"))
    assert "RuntimeError" in render.render_error(RuntimeError("boom"))
    assert "<b>" not in render.render_error(ConfigError("Bad <b>", "Fix it"))


def test_message_content_blocks_flatten_to_text() -> None:
    assert _text_of([{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]) == "ab"
    assert _text_of("plain") == "plain"


# --- settings: backends, login, exposure ----------------------------------


def test_openai_listed_only_when_configured(tmp_path: Path) -> None:
    assert backends(Settings(data_dir=tmp_path, openai_api_key=None)) == ["extractive", "local"]
    assert "openai" in backends(Settings(data_dir=tmp_path, openai_api_key=SecretStr("k")))
    assert "openai" in backends(Settings(data_dir=tmp_path, openai_base_url="http://127.0.0.1:8080/v1"))


def test_auth_pairs_parse_and_bad_entries_explain_the_format() -> None:
    assert parse_auth("ana:pw1, li:p:w2") == [("ana", "pw1"), ("li", "p:w2")]
    assert parse_auth("") is None
    with pytest.raises(ConfigError) as info:
        parse_auth("ana:hunter2,bob")
    assert "'bob'" in info.value.message and "user:password" in info.value.fix
    assert "hunter2" not in str(info.value)


def test_refuses_public_host_without_login(tmp_path: Path) -> None:
    check_exposure("127.0.0.1", None, False)
    check_exposure("::1", None, False)
    check_exposure("localhost", None, False)
    check_exposure("0.0.0.0", [("a", "b")], False)
    check_exposure("0.0.0.0", None, True)
    with pytest.raises(ConfigError) as info:
        launch_kwargs(Settings(data_dir=tmp_path, auth=None, allow_public=False), host="0.0.0.0")
    assert "0.0.0.0" in info.value.message and "BAOKAN_AUTH" in info.value.fix
    kw = launch_kwargs(Settings(data_dir=tmp_path, auth=SecretStr("a:b"), port=7999), host="0.0.0.0")
    assert kw["auth"] == [("a", "b")] and kw["server_port"] == 7999 and kw["css"] and kw["theme"] is not None


# --- handlers over the real pipeline --------------------------------------


def test_answer_streams_sources_first_then_cited_answer(ui: ChatUI) -> None:
    outs = _run(ui, HONGQIAO_Q)
    phases = [re.search(r'data-phase="(\w+)"', o[1]).group(1) for o in outs if o[1]]  # type: ignore[union-attr]
    assert phases[0] == "retrieved" and phases[-1] == "final"
    first_sources = next(i for i, o in enumerate(outs) if o[1])
    assert "Writing the answer" in outs[first_sources][0][-1]["content"]  # sources shown before the answer

    chat, sources, status, box, history = outs[-1]
    answer = chat[-1]["content"]
    assert "200,000" in answer and '<a class="cite" href="#src-1"' in answer
    assert "1959-11-24" in sources and "Hongqiao District" in sources and "红桥区" in sources
    assert "<mark>" in sources and "col quote-en" in sources and "col quote-zh" in sources
    assert "Full article" in sources and "天津市车辆厂" in sources
    assert status.startswith("Answered in") and box == ""
    assert [m["role"] for m in history] == ["user", "assistant"] and history[0]["content"] == HONGQIAO_Q
    assert "<a " not in history[1]["content"]  # the model sees plain text, not our markup


def test_follow_up_passes_the_conversation(ui: ChatUI) -> None:
    first = _run(ui, HONGQIAO_Q)[-1]
    second = _run(ui, "How much did production capacity increase?", chat=first[0], history=first[4])[-1]
    chat, _, status, _, history = second
    assert len(history) == 4 and history[2]["content"] == "How much did production capacity increase?"
    assert len(chat) == 4 and status.startswith("Answered in")


def test_chinese_question_gets_a_chinese_answer(ui: ChatUI) -> None:
    chat, sources, *_ = _run(ui, "红桥区职工提出了多少技术革新建议？")[-1]
    assert re.search(r"[\u4e00-\u9fff]", chat[-1]["content"].split("alt-answer")[0])
    assert "1959-11-24" in sources


def test_filter_matching_nothing_is_an_honest_empty_answer(ui: ChatUI) -> None:
    chat, sources, *_ = _run(ui, HONGQIAO_Q, date_from="2001-01-01", date_to="2001-12-31")[-1]
    assert "does not say" in chat[-1]["content"]
    assert "No article matches" in sources and "src-card" not in sources


def test_bad_input_becomes_a_readable_message(ui: ChatUI) -> None:
    chat, *_ = _run(ui, "   ")[-1]
    assert "question is empty" in chat[-1]["content"]
    chat, _, _, box, _ = _run(ui, HONGQIAO_Q, date_from="1959-12-01", date_to="1959-01-01")[-1]
    assert "reversed" in chat[-1]["content"] and "Swap" in chat[-1]["content"]
    assert box == HONGQIAO_Q  # the question stays in the box to fix and resend
    chat, *_ = _run(ui, HONGQIAO_Q, page="two")[-1]
    assert "Bad page" in chat[-1]["content"]


def test_backend_down_still_shows_sources(seeds_app: Baokan, tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path, openai_base_url="http://127.0.0.1:9/v1", openai_api_key=SecretStr("k"), llm_timeout=3
    )
    down = Baokan(settings, embedder=seeds_app.embedder, store=seeds_app.store, index=seeds_app.index)
    chat, sources, *_ = _run(ChatUI(down), HONGQIAO_Q, llm="openai")[-1]
    text = chat[-1]["content"]
    assert "Traceback" not in text
    assert "failed" in text.lower() or "error" in text.lower() or "cannot" in text.lower(), text
    assert "src-card" in sources and "1959-11-24" in sources


def test_clear_resets_everything(ui: ChatUI) -> None:
    assert ui.clear() == ([], "", "", [])


def test_first_start_indexes_seeds_and_hostile_text_stays_text(hostile_ui: ChatUI) -> None:
    status = hostile_ui.ensure_index()
    assert "indexed 1 articles" in status and not hostile_ui.app.is_empty()
    assert "Index: 1 articles" in hostile_ui.ensure_index()  # second call does not re-index

    outs = _run(hostile_ui, "How many zebra crossings did the committee paint in Lhasa?")
    chat, sources, *_ = outs[-1]
    assert "src-card" in sources
    for out in outs:
        for html in (out[0][-1]["content"], out[1]):
            assert_only_our_markup(html)
    assert "&lt;script&gt;" in sources and "&lt;img src=x onerror=alert&#40;1&#41;&gt;" in sources
    assert "4,321" in chat[-1]["content"] or "4321" in chat[-1]["content"]


def test_build_app_wires_a_queued_blocks(seeds_app: Baokan) -> None:
    demo = build_app(seeds_app, seeds_dir=None, concurrency=3)
    assert isinstance(demo, gr.Blocks)
    assert demo._queue.default_concurrency_limit == 3
    ids = {getattr(b, "elem_id", None) for b in demo.blocks.values()}
    assert {"chat", "question", "ask", "clear", "date-from", "date-to", "page", "k", "backend"} <= ids


@pytest.mark.slow
def test_slow_answer_does_not_block_another_user(seeds_app: Baokan, tmp_path: Path) -> None:
    """One user waits on an LLM that never replies; another's extractive answer still comes back."""
    import socket
    import threading
    import time

    from gradio_client import Client

    from ui.app import style_kwargs

    silent = socket.socket()  # accepts connections, never answers: a hung LLM server
    silent.bind(("127.0.0.1", 0))
    silent.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        silent.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(silent.accept()[0])
            except OSError:
                continue

    threading.Thread(target=accept, daemon=True).start()
    settings = Settings(
        data_dir=tmp_path,
        openai_base_url=f"http://127.0.0.1:{silent.getsockname()[1]}/v1",
        openai_api_key=SecretStr("k"),
        llm_timeout=15,
    )
    app = Baokan(settings, embedder=seeds_app.embedder, store=seeds_app.store, index=seeds_app.index)
    demo = build_app(app, seeds_dir=None)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **style_kwargs())
    try:
        client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        slow = client.submit(HONGQIAO_Q, [], "", "", "", 5, "openai", api_name="/ask")
        time.sleep(1.0)
        t0 = time.perf_counter()
        fast = client.submit(HONGQIAO_Q, [], "", "", "", 5, "extractive", api_name="/ask").result(timeout=60)
        took = time.perf_counter() - t0
        assert not slow.done(), "the hung backend answered?"
        assert "200,000" in _text_of(fast[0][-1]["content"]) and took < 15, took
        slow_out = slow.result(timeout=60)  # the hung backend times out into a readable message
        assert "src-card" in slow_out[1] and "Traceback" not in _text_of(slow_out[0][-1]["content"])
    finally:
        stop.set()
        demo.close()
        for c in held:
            c.close()
        silent.close()
