"""Shared fixtures: real components on temporary data directories."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("ANONYMIZED_TELEMETRY", "False")

from rag.config import Settings
from rag.pipeline import Baokan

REPO = Path(__file__).resolve().parent.parent
SEEDS = REPO / "seeds"
SHARED = REPO.parent / "shared"
CORPUS = SHARED / "corpus" / "rmrb"
HONGQIAO_Q = "How many technical innovation suggestions did Hongqiao District employees put forward?"


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """No test may touch the user's real index."""
    monkeypatch.setenv("BAOKAN_DATA_DIR", str(tmp_path_factory.mktemp("default-data")))


@pytest.fixture(scope="session")
def seeds_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Baokan]:
    """Seeds indexed once for the session with the real bundled embedder, Chroma and jieba."""
    data = tmp_path_factory.mktemp("seeds-index")
    app = Baokan(Settings(data_dir=data))
    report = app.ingest([SEEDS])
    assert report.articles == 5, report.summary()
    yield app
    app.close()
