"""Load: 20 concurrent chat sessions against the real Gradio app, with ingestion running alongside."""

from __future__ import annotations

import json
import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rag.config import Settings
from rag.pipeline import Baokan
from tests.reliability.conftest import REPO, SEEDS, free_port
from ui.app import _text_of, build_app, style_kwargs

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

USERS = 20
QUESTIONS = [
    ("How many technical innovation suggestions did Hongqiao District employees put forward?", "200,000"),
    ("天津红桥区六万工业职工提出了多少件技术革新建议？", ""),
    ("How many advanced collectives did Chongqing Steel Company produce last year?", ""),
]
ARTIFACT = REPO / "test-artifacts" / "reliability_load.json"


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def test_twenty_concurrent_sessions_while_ingesting(rel_app: Baokan, small_corpus: Path, tmp_path: Path) -> None:
    from gradio_client import Client

    app = Baokan(Settings(data_dir=tmp_path / "data"), embedder=rel_app.embedder)
    assert app.ingest([small_corpus]).articles == 2
    more = tmp_path / "more"
    more.mkdir()
    for f in sorted(SEEDS.glob("*.txt"))[2:]:
        shutil.copy(f, more)

    demo = build_app(app, seeds_dir=None)
    port = free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True, **style_kwargs())
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    ingest_result: dict[str, object] = {}

    def user(i: int) -> None:
        try:
            client = Client(f"http://127.0.0.1:{port}/", verbose=False)
        except Exception as exc:
            with lock:
                errors.append(f"user {i} connect: {exc!r}")
            return
        chat: list[Any] = []
        for q, expected in QUESTIONS:
            t0 = time.perf_counter()
            try:
                out = client.predict(q, chat, "", "", "", 5, "extractive", api_name="/ask")
                took = time.perf_counter() - t0
                chat = out[0]
                reply = _text_of(chat[-1]["content"])
                if not reply.strip() or "Traceback" in reply or "error" in reply.lower()[:40]:
                    raise AssertionError(f"bad reply {reply[:200]!r}")
                if expected and expected not in reply:
                    raise AssertionError(f"{expected!r} missing from {reply[:200]!r}")
                if "src-card" not in out[1]:
                    raise AssertionError("no sources panel")
                with lock:
                    latencies.append(took)
            except Exception as exc:
                with lock:
                    errors.append(f"user {i} {q[:30]!r}: {exc!r}"[:400])

    def ingest() -> None:
        time.sleep(0.5)
        try:
            ingest_result["report"] = app.ingest([more])
        except Exception as exc:
            ingest_result["report"] = exc

    try:
        threads = [threading.Thread(target=user, args=(i,), daemon=True) for i in range(USERS)]
        ing = threading.Thread(target=ingest, daemon=True)
        t0 = time.perf_counter()
        ing.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=500)
        ing.join(timeout=120)
        wall = time.perf_counter() - t0
    finally:
        demo.close()
    report = ingest_result.get("report")
    figures = {
        "users": USERS,
        "requests": USERS * len(QUESTIONS),
        "ok": len(latencies),
        "errors": len(errors),
        "p50_s": round(statistics.median(latencies), 3) if latencies else None,
        "p95_s": round(_pct(latencies, 0.95), 3) if latencies else None,
        "max_s": round(max(latencies), 3) if latencies else None,
        "wall_s": round(wall, 2),
        "ingest_during_load": getattr(report, "summary", lambda: repr(report))(),
    }
    print("\nload figures:", json.dumps(figures, ensure_ascii=False))
    ARTIFACT.parent.mkdir(exist_ok=True)
    ARTIFACT.write_text(json.dumps(figures, ensure_ascii=False, indent=2), encoding="utf-8")
    assert not any(t.is_alive() for t in threads), "a session never finished"
    assert errors == [], errors[:5]
    assert len(latencies) == USERS * len(QUESTIONS)
    assert not isinstance(report, Exception), report
    c = app.index.counts()
    assert c["articles"] == 5 and c["passages"] == app.store.count()
    app.close()
