"""Baokan against a real `chroma run` server gives the same hits as the embedded store."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from rag.config import Settings
from rag.errors import StoreError
from rag.pipeline import Baokan
from rag.store import ChromaStore

pytestmark = [pytest.mark.server, pytest.mark.slow]

SEEDS = Path(__file__).resolve().parent.parent / "seeds"
CHROMA = Path(sys.executable).parent / "chroma"
QUERIES = [
    "How many technical innovation suggestions did Hongqiao District employees put forward?",
    "天津红桥区技术革新",
    "steel production record",
    "人民公社 粮食 丰收",
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def chroma_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not CHROMA.exists():
        pytest.skip(f"no chroma CLI at {CHROMA}")
    port = _free_port()
    path = tmp_path_factory.mktemp("chroma-server")
    log = (path.parent / "chroma-server.log").open("wb")
    proc = subprocess.Popen(
        [str(CHROMA), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, f"chroma run exited with {proc.returncode}"
            try:
                if httpx.get(f"{url}/api/v2/heartbeat", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "chroma server did not answer its heartbeat in 60 s"
            time.sleep(0.2)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def test_server_mode_matches_embedded(chroma_url: str, tmp_path: Path) -> None:
    embedded = Baokan(Settings(data_dir=tmp_path / "embedded"))
    served = Baokan(Settings(data_dir=tmp_path / "served", chroma_url=chroma_url, collection="baokan_test"))
    try:
        r1 = embedded.ingest([SEEDS])
        r2 = served.ingest([SEEDS])
        assert r1.passages == r2.passages == 80 and r2.articles == 5
        store = served.store
        assert isinstance(store, ChromaStore)
        assert store.count() == served.index.counts()["passages"] == 80
        assert set(store.ids()) == set(served.index.passage_keys())
        # Nothing was written to an embedded Chroma folder in server mode.
        assert not (tmp_path / "served" / "chroma").exists()
        for q in QUERIES:
            for mode in ("hybrid", "dense"):
                a = embedded.search(q, mode=mode)  # type: ignore[arg-type]
                b = served.search(q, mode=mode)  # type: ignore[arg-type]
                assert a, q
                assert [h.passage.key for h in a] == [h.passage.key for h in b], (q, mode)
                assert [round(h.score, 5) for h in a] == [round(h.score, 5) for h in b]
            vec = embedded.embedder.embed([q])[0]
            bare_a = embedded.store.query(vec, 10)
            bare_b = store.query(vec, 10)
            assert [k for k, _ in bare_a] == [k for k, _ in bare_b]
        # Re-ingest through the server is incremental too.
        again = served.ingest([SEEDS])
        assert again.passages == 0 and again.unchanged == 5 and store.count() == 80
    finally:
        embedded.close()
        served.close()


def test_unreachable_server_names_url_and_fix(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    with pytest.raises(StoreError) as err:
        ChromaStore(Settings(data_dir=tmp_path, chroma_url=url), "use-multilingual", 512)
    assert url in str(err.value)
    assert "chroma run" in err.value.fix
