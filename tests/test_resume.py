"""`baokan ingest` killed with SIGKILL mid-run, then re-run, ends with exactly the
passages a clean ingest gives: nothing lost, nothing duplicated, Chroma and the
keyword index holding the same keys."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from rag.config import Settings
from rag.pipeline import Baokan
from rag.store import ChromaStore

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "seeds"
CORPUS = REPO.parent / "shared" / "corpus" / "rmrb"
BAOKAN = (
    [sys.executable, "-m", "rag.cli"]
    if not (Path(sys.executable).parent / "baokan").exists()
    else [str(Path(sys.executable).parent / "baokan")]
)


@pytest.fixture(scope="module")
def archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Seeds plus a few real corpus articles when present: ~10 articles, many small batches."""
    folder = tmp_path_factory.mktemp("resume") / "archive"
    shutil.copytree(SEEDS, folder)
    if CORPUS.exists():
        for src in sorted(CORPUS.glob("1953.10/*.md"))[:5]:
            shutil.copyfile(src, folder / src.name)
    return folder


@pytest.fixture(scope="module")
def expected(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> set[str]:
    """Passage keys of a clean, uninterrupted ingest of the same folder."""
    app = Baokan(Settings(data_dir=tmp_path_factory.mktemp("clean")))
    report = app.ingest([archive])
    assert report.articles > 5 and not report.skipped
    keys = set(app.index.passage_keys())
    assert len(keys) == report.passages
    app.close()
    return keys


def _env(data: Path, **extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        BAOKAN_DATA_DIR=str(data), BAOKAN_EMBED_BATCH_SIZE="4", BAOKAN_INGEST_BATCH="16", HF_HUB_OFFLINE="1", **extra
    )
    return env


def _query(db: Path, sql: str) -> int:
    if not db.exists():
        return 0
    try:
        con = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1)
        try:
            return int(con.execute(sql).fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:  # schema not created yet
        return 0


def _kill_when(archive: Path, data: Path, ready: Callable[[Path], bool], **env: str) -> int:
    """Start `baokan ingest`, SIGKILL it as soon as ``ready(db)``; return the passages it left."""
    db = data / "baokan.sqlite3"
    proc = subprocess.Popen(
        [*BAOKAN, "ingest", str(archive), "--json"],
        env=_env(data, **env),
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 240
    try:
        while proc.poll() is None and time.monotonic() < deadline and not ready(db):
            time.sleep(0.005)
    finally:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL, "ingest finished before it could be killed"
    return _query(db, "SELECT count(*) FROM passages")


def _rerun(archive: Path, data: Path, **env: str) -> dict[str, object]:
    out = subprocess.run(
        [*BAOKAN, "ingest", str(archive), "--json"],
        env=_env(data, **env),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _assert_complete(data: Path, expected: set[str]) -> None:
    app = Baokan(Settings(data_dir=data))
    try:
        sqlite_keys = list(app.index.passage_keys())
        store = app.store
        assert isinstance(store, ChromaStore)
        chroma_keys = list(store.ids())
        assert len(sqlite_keys) == len(set(sqlite_keys)), "duplicate passages in the keyword index"
        assert len(chroma_keys) == len(set(chroma_keys)), "duplicate vectors in Chroma"
        assert set(sqlite_keys) == expected, "passages lost or extra after resume"
        assert set(chroma_keys) == expected, "Chroma out of step with the keyword index"
        counts = app.index.counts()
        assert counts["unfinished"] == 0
        assert counts["passages"] == store.count() == len(expected)
        # Every article is done and searchable.
        assert app.index.done_articles({k.split(":")[0] for k in expected}) == {k.split(":")[0] for k in expected}
    finally:
        app.close()


def test_kill_after_first_batch_then_resume(archive: Path, expected: set[str], tmp_path: Path) -> None:
    data = tmp_path / "data"
    left = _kill_when(archive, data, lambda db: _query(db, "SELECT count(*) FROM passages") > 0)
    assert 0 < left < len(expected)
    summary = _rerun(archive, data)
    assert summary["unchanged"] and summary["articles"]  # resumed, did not start over
    _assert_complete(data, expected)
    again = _rerun(archive, data)
    assert again["passages"] == 0 and again["articles"] == 0


def test_kill_while_batch_half_written_then_resume(archive: Path, expected: set[str], tmp_path: Path) -> None:
    """Killed while an article is marked pending (vectors being written): the next run
    undoes it (recovered) and ingests it again."""
    data = tmp_path / "data"
    pending = "SELECT count(*) FROM articles WHERE status='pending'"
    _kill_when(archive, data, lambda db: _query(db, pending) > 0)
    db = data / "baokan.sqlite3"
    left_pending = _query(db, pending)
    summary = _rerun(archive, data)
    assert summary["recovered"] == left_pending
    _assert_complete(data, expected)


def _processes_of(data: Path) -> list[int]:
    """Processes whose environment names this data dir: an ingest and its embedding workers."""
    mark = f"BAOKAN_DATA_DIR={data}".encode()
    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            if mark in (p / "environ").read_bytes().split(b"\0"):
                pids.append(int(p.name))
        except OSError:  # gone, or not ours to read
            continue
    return pids


def test_kill_with_embedding_workers_then_resume(archive: Path, expected: set[str], tmp_path: Path) -> None:
    """Same with worker processes embedding (large runs): the killed parent's workers
    leave on their own, and the re-run through workers completes the index."""
    data = tmp_path / "data"
    seen: list[int] = []

    def ready(db: Path) -> bool:
        if _query(db, "SELECT count(*) FROM passages") == 0:
            return False
        seen[:] = _processes_of(data)
        return True

    left = _kill_when(archive, data, ready, BAOKAN_EMBED_PROCESSES="2")
    assert 0 < left < len(expected)
    assert len(seen) >= 3, f"expected the ingest and 2 workers, saw {seen}"
    deadline = time.monotonic() + 20
    while _processes_of(data) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not _processes_of(data), "embedding workers outlived the killed ingest"
    summary = _rerun(archive, data, BAOKAN_EMBED_PROCESSES="2")
    assert summary["unchanged"] and summary["articles"]
    _assert_complete(data, expected)
    assert not _processes_of(data)
