"""Faults: the model dies mid-answer, the Chroma server goes away and comes back, the disk fills."""

from __future__ import annotations

import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr

from rag.config import Settings
from rag.errors import StoreError
from rag.llamacpp import LlamaServer
from rag.pipeline import Baokan
from rag.types import Answer
from tests.reliability.conftest import GOOD_Q, REPO, SEEDS, free_port

pytestmark = pytest.mark.reliability

CHROMA = REPO / ".venv" / "bin" / "chroma"


def test_llm_server_killed_after_first_token(rel_app: Baokan) -> None:
    server = LlamaServer(n_ctx=1024).start()
    try:
        s = rel_app.settings.model_copy(
            update={
                "openai_base_url": server.base_url,
                "openai_model": server.model,
                "openai_api_key": SecretStr("local"),
                "llm_max_tokens": 300,
                "llm_context_size": 1024,
                "llm_timeout": 60,
            }
        )
        app = Baokan(s, embedder=rel_app.embedder, store=rel_app.store, index=rel_app.index)
        tokens: list[str] = []
        sources = None
        answer: Answer | None = None
        for event in app.ask_stream("What did Hongqiao District do to promote technical innovation?", llm="openai"):
            if event["type"] == "sources":
                sources = event["hits"]
            elif event["type"] == "token":
                tokens.append(event["text"])
                if len(tokens) == 1:
                    server.kill()
            elif event["type"] == "answer":
                answer = event["answer"]
    finally:
        server.stop()
    assert sources, "sources come before any token"
    assert answer is not None and tokens
    assert answer.incomplete or answer.error, answer
    assert answer.error and "\n" not in answer.error
    assert answer.answer.strip(), "the partial text is kept"
    assert answer.hits, "the sources are kept"
    assert rel_app.ask(GOOD_Q).citations, "extractive answers still work"


def _start_chroma(path: Path, port: int, log: Path) -> subprocess.Popen[bytes]:
    with log.open("ab") as fh:
        proc = subprocess.Popen(
            [str(CHROMA), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
            stdout=fh,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + 60
    while True:
        assert proc.poll() is None, f"chroma run exited with {proc.returncode}: {log.read_text()[-500:]}"
        try:
            if httpx.get(f"http://127.0.0.1:{port}/api/v2/heartbeat", timeout=1).status_code == 200:
                return proc
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "chroma server did not start in 60 s"
        time.sleep(0.2)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.fixture
def chroma_dir(tmp_path: Path) -> Iterator[Path]:
    if not CHROMA.exists():
        pytest.skip(f"no chroma CLI at {CHROMA}")
    yield tmp_path / "chroma-server"


@pytest.mark.server
def test_chroma_server_stopped_then_restarted(rel_app: Baokan, small_corpus: Path, chroma_dir: Path) -> None:
    port = free_port()
    log = chroma_dir.parent / "chroma.log"
    proc = _start_chroma(chroma_dir, port, log)
    try:
        s = Settings(data_dir=chroma_dir.parent / "data", chroma_url=f"http://127.0.0.1:{port}")
        app = Baokan(s, embedder=rel_app.embedder)
        assert app.ingest([small_corpus]).articles == 2
        assert app.search(GOOD_Q, mode="dense")
        _stop(proc)
        before = app.index.counts()
        with pytest.raises(StoreError) as err:
            app.search(GOOD_Q, mode="dense")
        assert f"127.0.0.1:{port}" in str(err.value) or "Chroma" in str(err.value)
        assert app.search(GOOD_Q, mode="bm25"), "keyword search does not need Chroma"
        assert app.index.counts() == before
        proc = _start_chroma(chroma_dir, port, log)
        hits = app.search(GOOD_Q, mode="dense")
        assert hits and app.ask(GOOD_Q).citations
        app.close()
    finally:
        _stop(proc)


def test_disk_full_during_ingest(rel_app: Baokan, tmp_path: Path) -> None:
    mnt = tmp_path / "small-fs"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(mnt)], capture_output=True, check=False)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {r.stderr.decode().strip()}")
    try:
        corpus = tmp_path / "corpus"
        corpus.mkdir()
        for f in sorted(SEEDS.glob("*.txt")):
            shutil.copy(f, corpus)
        app = Baokan(Settings(data_dir=mnt / "data"), embedder=rel_app.embedder)
        (mnt / "ballast").write_bytes(b"\0" * (2 * 1024 * 1024 + 512 * 1024))  # leave ~0.5 MB
        with pytest.raises(Exception) as err:
            app.ingest([corpus])
        msg = str(err.value)
        assert "No space left" in msg or "disk" in msg.lower() or "full" in msg.lower(), repr(err.value)
        c = app.index.counts()
        assert c["passages"] == app.store.count(), (c, app.store.count())
        app.close()
        (mnt / "ballast").unlink()
        app = Baokan(Settings(data_dir=mnt / "data"), embedder=rel_app.embedder)
        report = app.ingest([corpus])
        c = app.index.counts()
        assert c["articles"] == 5 and c["unfinished"] == 0, (c, report.summary())
        assert c["passages"] == app.store.count()
        assert app.search(GOOD_Q)
        app.close()
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)
