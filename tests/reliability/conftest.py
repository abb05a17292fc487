"""Fixtures for the reliability suite: a small real index built once per session."""

from __future__ import annotations

import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.config import Settings
from rag.pipeline import Baokan

REPO = Path(__file__).resolve().parents[2]
SEEDS = REPO / "seeds"
BAOKAN = REPO / ".venv" / "bin" / "baokan"
GOOD_Q = "How many technical innovation suggestions did Hongqiao District employees put forward?"


def free_port() -> int:
    """A loopback port nobody listens on (closed again before use)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def counts(app: Baokan) -> tuple[int, int, int]:
    """(articles, keyword passages, vectors): must stay equal across bad inputs."""
    c = app.index.counts()
    return c["articles"], c["passages"], app.store.count()


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two seed articles: enough to check search survives, fast to embed."""
    d = tmp_path_factory.mktemp("rel-corpus")
    for f in sorted(SEEDS.glob("*.txt"))[:2]:
        shutil.copy(f, d / f.name)
    return d


@pytest.fixture(scope="session")
def rel_app(tmp_path_factory: pytest.TempPathFactory, small_corpus: Path) -> Iterator[Baokan]:
    app = Baokan(Settings(data_dir=tmp_path_factory.mktemp("rel-index")))
    report = app.ingest([small_corpus])
    assert report.articles == 2, report.summary()
    yield app
    app.close()
