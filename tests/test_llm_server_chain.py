"""The grounded chain against a REAL OpenAI-compatible server: llama.cpp serving
the bundled SmolLM2 GGUF on loopback (rag.llamacpp.LlamaServer), plus the
'local' backend, a server that is stopped, and one that dies mid-stream.

SmolLM2-135M is tiny and often wrong; these tests check the plumbing and the
guarantees (sources first, streamed tokens, valid citations, clear failures),
not answer quality. Small context and answers keep them fast on 2 cores.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr

from rag.config import Settings
from rag.llamacpp import LlamaServer
from rag.llm import stop_local_servers
from rag.pipeline import Baokan
from rag.types import Answer, Hit
from rag.verify import markers

pytestmark = [pytest.mark.llm, pytest.mark.slow]
ROOT = Path(__file__).resolve().parent.parent
N_CTX = 1024
QUESTION = "How many major innovations did the Tianjin Vehicle Factory implement?"
DUMMY_KEY = "sk-dummy-key-never-shown-42"


@pytest.fixture(scope="module")
def indexed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baokan]:
    settings = Settings(
        data_dir=tmp_path_factory.mktemp("llm-chain-data"),
        llm_context_size=N_CTX,
        llm_max_tokens=48,
        llm_timeout=120,
        llm_temperature=0.0,
    )
    app = Baokan(settings)
    app.ingest([ROOT / "seeds"])
    yield app
    app.close()


@pytest.fixture(scope="module")
def server() -> Iterator[LlamaServer]:
    with LlamaServer(n_ctx=N_CTX) as running:
        yield running


def _against(app: Baokan, server: LlamaServer, **extra: object) -> Baokan:
    s = app.settings.model_copy(
        update={
            "openai_base_url": server.base_url,
            "openai_model": server.model,
            "openai_api_key": SecretStr(DUMMY_KEY),
            **extra,
        }
    )
    return Baokan(s, embedder=app.embedder, store=app.store, index=app.index)


def _retrieved_keys(hits: list[Hit]) -> set[str]:
    return {h.passage.key for h in hits} | {p.key for h in hits for p in h.linked}


def _assert_citations_valid(ans: Answer, hits: list[Hit]) -> None:
    by_n = {c.n: c for c in ans.citations}
    assert sorted(by_n) == list(range(1, len(by_n) + 1))
    for n in markers(ans.answer):
        assert n in by_n, f"[{n}] has no citation in {ans.answer!r}"
        assert by_n[n].key in _retrieved_keys(hits)


def test_openai_backend_streams_with_valid_citations(indexed: Baokan, server: LlamaServer) -> None:
    app = _against(indexed, server)
    events = list(app.ask_stream(QUESTION, llm="openai"))
    kinds = [e["type"] for e in events]
    assert kinds[0] == "sources" and kinds[-1] == "answer"
    assert kinds.count("token") >= 2, "tokens must arrive one by one, not as one block"
    hits = events[0]["hits"]
    assert hits and events[0]["standalone_question"] == QUESTION
    ans = events[-1]["answer"]
    assert ans.backend == "openai" and ans.error is None and not ans.incomplete
    assert ans.support is not None and 0.0 <= ans.support <= 1.0
    streamed = "".join(e["text"] for e in events if e["type"] == "token")
    assert streamed.strip()
    if ans.refused:  # nothing the model wrote was supported: the fixed refusal, no citations
        assert ans.answer.startswith("The archive does not say") and not ans.citations
    else:
        assert ans.citations
        _assert_citations_valid(ans, hits)
    assert DUMMY_KEY not in str(ans.to_json())


def test_openai_backend_followup_is_rewritten(indexed: Baokan, server: LlamaServer) -> None:
    app = _against(indexed, server)
    history = [
        {"role": "user", "content": "What did the Tianjin Vehicle Factory do with employee suggestions?"},
        {"role": "assistant", "content": "It adopted them [1]."},
    ]
    ans = app.ask_llm("How many did it implement?", llm="openai", history=history)
    assert ans.standalone_question and ans.standalone_question != "How many did it implement?"
    assert ans.question == "How many did it implement?" and ans.hits
    _assert_citations_valid(ans, ans.hits)


def test_local_backend_answers_through_its_own_server(indexed: Baokan) -> None:
    try:
        ans = indexed.ask_llm(QUESTION, llm="local")
    finally:
        stop_local_servers()
    assert ans.backend == "local" and ans.error is None and ans.hits
    assert ans.refused or ans.citations
    _assert_citations_valid(ans, ans.hits)


def test_server_dying_mid_stream_keeps_partial_answer(indexed: Baokan) -> None:
    doomed = LlamaServer(n_ctx=N_CTX).start()
    try:
        app = _against(indexed, doomed, llm_max_tokens=200)
        tokens: list[str] = []
        answer: Answer | None = None
        for event in app.ask_stream("What did Hongqiao District do to promote technical innovation?", llm="openai"):
            if event["type"] == "token":
                tokens.append(event["text"])
                if len(tokens) == 2:
                    doomed.kill()
            elif event["type"] == "answer":
                answer = event["answer"]
    finally:
        doomed.stop()
    assert answer is not None and len(tokens) >= 2
    assert answer.incomplete and answer.error and "\n" not in answer.error
    assert answer.answer.strip() and not answer.refused and answer.hits
    _assert_citations_valid(answer, answer.hits)


def test_stopped_server_gives_clear_error_sources_and_fallback(indexed: Baokan) -> None:
    gone = LlamaServer(n_ctx=N_CTX).start()
    gone.stop()
    app = _against(indexed, gone)
    events = list(app.ask_stream(QUESTION, llm="openai"))
    assert events[0]["type"] == "sources" and events[0]["hits"]
    ans = events[-1]["answer"]
    assert ans.error and "cannot be reached" in ans.error and gone.base_url in ans.error
    assert "\n" not in ans.error and DUMMY_KEY not in ans.error
    assert ans.refused and ans.hits and [c.key for c in ans.citations] == [h.passage.key for h in ans.hits]

    fb = _against(indexed, gone, llm_fallback=True).ask_llm(QUESTION, llm="openai")
    assert not fb.refused and fb.backend == "extractive" and fb.error and fb.citations
    assert "22" in fb.answer or "twenty-two" in fb.answer.lower()
    _assert_citations_valid(fb, fb.hits)
