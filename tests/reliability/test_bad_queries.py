"""Bad questions, filters and settings: a clear typed error or an empty result, never a crash."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from rag.config import Settings, get_settings
from rag.errors import ConfigError, FilterError, QuestionError, StoreError, UnknownBackendError
from rag.pipeline import Baokan
from rag.retrieve import MAX_QUERY_CHARS, make_filter
from tests.reliability.conftest import BAOKAN, GOOD_Q, REPO, free_port

pytestmark = pytest.mark.reliability


@pytest.mark.parametrize(
    ("question", "expected"),
    [("", "empty"), ("   \n\t ", "empty"), ("?!。，…——!!", "no words"), ("\x00\x01\x07\x1b\x7f", "no words")],
    ids=["empty", "whitespace", "punctuation", "control-only"],
)
def test_unsearchable_question(rel_app: Baokan, question: str, expected: str) -> None:
    with pytest.raises(QuestionError) as err:
        rel_app.ask(question)
    assert expected in err.value.message
    assert err.value.fix
    assert rel_app.ask(GOOD_Q).citations, "the next good question must still be answered"


@pytest.mark.parametrize(
    "question",
    [
        "Hongqiao " * 12_500,  # 100k characters
        "Hongqiao\x00District\x07 innovation\x1b[0m suggestions",
        "红桥区 Hongqiao 技术革新 suggestions Тянь-цзинь 천진 🏭",
    ],
    ids=["100k-chars", "control-chars", "mixed-scripts"],
)
def test_odd_but_searchable_question(rel_app: Baokan, question: str) -> None:
    ans = rel_app.ask(question)
    assert ans.hits, "the question has real words: something must be found"
    assert len(ans.question) <= MAX_QUERY_CHARS
    assert not any(ord(c) < 32 for c in ans.question)
    for c in ans.citations:  # every marker maps to a real citation
        assert f"[{c.n}]" in ans.answer or ans.refused


@pytest.mark.parametrize(
    ("date_from", "date_to", "page", "expected"),
    [
        ("1960-01-01", "1959-01-01", None, "reversed"),
        ("1959-13-01", None, None, "Bad from date"),
        (None, "yesterday", None, "Bad to date"),
        ("1959/06/05", None, None, "Bad from date"),
        (None, None, 0, "Pages start at 1"),
        (None, None, "abc", "Bad page"),
        (None, None, -3, "Pages start at 1"),
    ],
)
def test_bad_filter(date_from: str | None, date_to: str | None, page: object, expected: str) -> None:
    with pytest.raises(FilterError) as err:
        make_filter(date_from, date_to, page)  # type: ignore[arg-type]
    assert expected in str(err.value)
    assert err.value.fix


@pytest.mark.parametrize(
    ("date_from", "date_to", "page"), [(None, None, 999), ("1800", "1801", None), ("2090-01", None, None)]
)
def test_filter_matching_nothing_gives_empty_result(
    rel_app: Baokan, date_from: str | None, date_to: str | None, page: int | None
) -> None:
    flt = make_filter(date_from, date_to, page)
    assert rel_app.search(GOOD_Q, flt=flt) == []
    ans = rel_app.ask(GOOD_Q, flt=flt)
    assert ans.refused and not ans.citations
    assert rel_app.search(GOOD_Q), "unfiltered search still works"


def test_unknown_backend_lists_valid_names(rel_app: Baokan) -> None:
    with pytest.raises(UnknownBackendError) as err:
        next(iter(rel_app.ask_stream(GOOD_Q, llm="nope")))
    msg = str(err.value)
    assert "'nope'" in msg
    for name in ("extractive", "local", "openai"):
        assert name in msg


def test_unknown_retrieval_setting() -> None:
    with pytest.raises(ConfigError) as err:
        get_settings({"retrieval": "bogus"})
    assert "retrieval" in err.value.message and "BAOKAN_RETRIEVAL" in err.value.message


def test_bad_chroma_url_scheme() -> None:
    with pytest.raises(ConfigError) as err:
        get_settings({"chroma_url": "localhost:8000"})
    assert "chroma_url" in err.value.message and "http://" in err.value.message


def test_chroma_url_closed_port(rel_app: Baokan, tmp_path: Path) -> None:
    before = rel_app.index.counts()
    port = free_port()
    app = Baokan(Settings(data_dir=tmp_path, chroma_url=f"http://127.0.0.1:{port}"), embedder=rel_app.embedder)
    with pytest.raises(StoreError) as err:
        app.search(GOOD_Q, mode="dense")
    assert f"127.0.0.1:{port}" in str(err.value)
    assert err.value.fix
    app.close()
    assert rel_app.index.counts() == before and rel_app.search(GOOD_Q)


def test_openai_backend_without_key(rel_app: Baokan) -> None:
    app = Baokan(Settings(data_dir=rel_app.settings.data_dir), embedder=rel_app.embedder)
    ans = app.ask_llm(GOOD_Q, llm="openai")
    assert ans.error and "BAOKAN_OPENAI_API_KEY" in ans.error
    assert ans.hits, "the sources are still shown"


def test_unwritable_data_dir(rel_app: Baokan, tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    app = Baokan(Settings(data_dir=blocker / "data"), embedder=rel_app.embedder)
    with pytest.raises((StoreError, ConfigError)) as err:
        app.search(GOOD_Q)
    assert str(blocker) in str(err.value)


# --- through the CLI ---------------------------------------------------------------


def _cli(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("BAOKAN_")}
    e.update(HF_HUB_OFFLINE="1", BAOKAN_DATA_DIR=str(tmp_path), **env)
    return subprocess.run(
        [str(BAOKAN), *args], capture_output=True, text=True, env=e, cwd=REPO, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("args", "env", "expected"),
    [
        (("ask", ""), {}, "empty"),
        (("ask", "   "), {}, "empty"),
        (("ask", "hello", "--llm", "nope"), {}, "extractive, local, openai"),
        pytest.param(
            ("ask", "hello"),
            {"BAOKAN_LLM": "nope"},
            "nope",
        ),
        (("search", "hello"), {"BAOKAN_RETRIEVAL": "bogus"}, "BAOKAN_RETRIEVAL"),
        (("search", "hello", "--from", "1959-02-30"), {}, "1959-02-30"),
        (("search", "hello", "--page", "abc"), {}, "page"),
    ],
    ids=["empty", "blank", "bad-llm-flag", "bad-llm-env", "bad-retrieval", "bad-date", "bad-page"],
)
def test_cli_bad_input_exit_2(tmp_path: Path, args: tuple[str, ...], env: dict[str, str], expected: str) -> None:
    r = _cli(tmp_path, *args, **env)
    assert r.returncode == 2, (r.returncode, r.stderr)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("baokan: error:"), r.stderr
    assert expected in lines[-1], r.stderr
    assert "Traceback" not in r.stderr
    assert len([ln for ln in lines if ln.startswith("baokan")]) == 1
