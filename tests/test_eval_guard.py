"""Regression guard: the offline default (hybrid retrieval, extractive answers) over the seeds set.

Runs the real evaluation (real embedder, Chroma and FTS5 index in a temp dir)
and fails when retrieval or grounding falls below the floors recorded in
eval/floors.json. The floors sit a little below the figures measured when they
were recorded; the measured figures are printed (``pytest -s``) so a drop is
easy to read, and a deliberate improvement can raise them.
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import argparse
import json
from pathlib import Path

import pytest

from rag import evaluate
from rag.errors import ConfigError

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parent.parent
SEEDS_SET = REPO / "eval" / "questions_seeds.jsonl"
FLOORS = json.loads((REPO / "eval" / "floors.json").read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> evaluate.EvalResult:
    base = tmp_path_factory.mktemp("eval")
    limit = FLOORS.get("limit")
    return evaluate.run_eval(SEEDS_SET, base / "run", ("hybrid",), ("extractive",), limit=limit, progress=False)


def test_seeds_eval_stays_above_recorded_floors(result: evaluate.EvalResult) -> None:
    overall = result.summary["runs"]["hybrid+extractive"]["overall"]
    floors: dict[str, float] = FLOORS["hybrid+extractive"]
    print(
        "\nmeasured (hybrid+extractive, seeds):",
        json.dumps({k: overall[k] for k in (*floors, "accuracy", "errors", "latency_p50")}, indent=1),
    )
    below = {k: (overall[k], floor) for k, floor in floors.items() if overall[k] is None or overall[k] < floor}
    assert not below, f"below the recorded floors (measured, floor): {below}"
    assert overall["errors"] == 0, [r["error"] for r in result.records["hybrid+extractive"] if r["error"]]


def test_every_question_is_recorded_with_its_fields(result: evaluate.EvalResult) -> None:
    records = result.records["hybrid+extractive"]
    n_set = sum(1 for line in SEEDS_SET.read_text(encoding="utf-8").splitlines() if line.strip())
    assert len(records) == min(n_set, FLOORS.get("limit") or n_set)
    lines = (result.out / "records-hybrid-extractive.jsonl").read_text(encoding="utf-8").splitlines()
    assert [json.loads(x)["id"] for x in lines] == [r["id"] for r in records]
    for r in records:
        for key in ("question", "type", "lang", "gold", "answer", "refused", "citations", "latency", "gold_ranks"):
            assert key in r, (r["id"], key)
        assert r["latency"] > 0
        if r["gold"]:
            assert len(r["gold_ranks"]) == len(r["gold"])


def test_summary_and_report_are_written(result: evaluate.EvalResult) -> None:
    summary = json.loads((result.out / "summary.json").read_text(encoding="utf-8"))
    run = summary["runs"]["hybrid+extractive"]
    assert set(run["by_type"]) >= {"factoid", "unanswerable"}
    assert set(run["by_lang"]) == {"en", "zh"}
    assert summary["index"]["articles"] == 5
    html = (result.out / "report.html").read_text(encoding="utf-8")
    assert html.count("data:image/png;base64,") >= 3
    assert "Worst failures" in html and "hybrid+extractive" in html
    assert "http://" not in html and "https://" not in html  # self-contained


def test_a_failing_question_is_recorded_not_dropped(result: evaluate.EvalResult) -> None:
    """A question the pipeline rejects (empty text) becomes a record with its error."""
    from rag.config import get_settings
    from rag.pipeline import Baokan
    from rag.support import SupportScorer

    app = Baokan(get_settings({"data_dir": Path(result.summary["index"]["data_dir"])}))
    try:
        judge = evaluate.OfflineJudge(SupportScorer(app.embedder))
        bad = evaluate.Question(
            "bad-1", "   ", "en", "factoid", ["seeds/000_1bca0996e3dfc6b6.txt"], {"en": ["22"], "zh": []}
        )
        rec = evaluate.evaluate_question(app, bad, "hybrid", "extractive", judge)
    finally:
        app.close()
    assert rec["error"] and rec["error"].startswith("QuestionError")
    assert rec["id"] == "bad-1"


def test_unknown_retrieval_mode_is_refused_with_the_valid_ones(tmp_path: Path) -> None:
    args = argparse.Namespace(set=str(SEEDS_SET), llm=None, retrieval="hybrid,sparse", out=str(tmp_path), limit=1)
    with pytest.raises(ConfigError) as info:
        evaluate.main(args)
    assert "'sparse'" in info.value.message
    assert "bm25" in info.value.fix


def test_bad_question_line_names_the_line(tmp_path: Path) -> None:
    bad = tmp_path / "set.jsonl"
    bad.write_text('{"id": "x", "question": "q"}\n', encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        evaluate.load_questions(bad)
    assert "set.jsonl:1" in info.value.message and "'lang'" in info.value.message
