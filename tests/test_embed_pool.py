"""Embedding worker processes (large ingests): same vectors as in-process, same index
as an in-process ingest, a dead worker is a clear error, and the auto rule."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rag.config import Settings
from rag.embed import POOL_MIN_FILES, EmbedPool, get_embedder, make_pool
from rag.errors import EmbedError
from rag.pipeline import Baokan
from tests.conftest import HONGQIAO_Q, SEEDS

TEXTS = [
    "The Hongqiao District workers put forward technical innovation suggestions.",
    "虹桥区职工提出技术革新建议二十多万条。",
    "A new record of 43.60 meters in the javelin.",
    "标枪新纪录",
    "Grain output rose in the autumn harvest.",
]


def _workers() -> set[int]:
    """This process's embedding workers (`python -m rag.embed` children)."""
    pids: set[int] = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and b"rag.embed" in (proc / "cmdline").read_bytes():
                pids.add(int(proc.name))
        except (OSError, ValueError, IndexError):  # exited meanwhile
            continue
    return pids


@pytest.fixture(scope="module")
def pool() -> Iterator[EmbedPool]:
    p = EmbedPool(Settings(), 2)
    yield p
    p.close()


def test_pool_vectors_match_in_process(pool: EmbedPool) -> None:
    ref = get_embedder(Settings()).embed(TEXTS)
    got = pool.embed(TEXTS)  # 5 texts split 3 + 2 across the workers, order kept
    assert got.shape == ref.shape == (5, 512)
    assert np.all(np.sum(got * ref, axis=1) > 0.9999)
    assert pool.embed([]).shape[0] == 0


def test_ingest_through_pool_gives_the_same_index(seeds_app: Baokan, tmp_path: Path) -> None:
    before = _workers()
    app = Baokan(Settings(data_dir=tmp_path, embed_processes=2))
    try:
        report = app.ingest([SEEDS])
        assert report.articles == 5 and not report.skipped
        assert set(app.index.passage_keys()) == set(seeds_app.index.passage_keys())
        assert app.store.count() == seeds_app.store.count()
        assert [h.passage.key for h in app.search(HONGQIAO_Q)[:3]] == [
            h.passage.key for h in seeds_app.search(HONGQIAO_Q)[:3]
        ]
    finally:
        app.close()
    assert not _workers() - before, "ingest left its worker processes running"


def test_dead_worker_is_an_embed_error() -> None:
    before = _workers()
    with EmbedPool(Settings(), 1) as p:
        p.embed(TEXTS[:1])
        (worker,) = _workers() - before
        os.kill(worker, signal.SIGKILL)
        deadline = time.monotonic() + 10
        with pytest.raises(EmbedError, match="BAOKAN_EMBED_PROCESSES=0"):
            while time.monotonic() < deadline:  # the pool notices the death asynchronously
                p.embed(TEXTS)
                time.sleep(0.1)


def test_auto_rule() -> None:
    assert make_pool(Settings(embed_processes=0), 10**6) is None
    assert make_pool(Settings(embed_processes=-1), POOL_MIN_FILES - 1) is None
    assert make_pool(Settings(embed_processes=-1, device="cuda"), 10**6) is None
    big = make_pool(Settings(embed_processes=-1), POOL_MIN_FILES)
    forced = make_pool(Settings(embed_processes=3), 1)
    try:
        if (os.cpu_count() or 1) >= 2:
            assert big is not None and big.workers == min(os.cpu_count() or 1, 8)
        assert forced is not None and forced.workers == 3
    finally:
        for p in (big, forced):
            if p is not None:
                p.close()  # no worker was started: processes spawn on the first batch
