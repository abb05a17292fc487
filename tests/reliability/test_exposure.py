"""Exposure: the UI binds to loopback unless told otherwise, and the API key never leaks."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from rag.config import Settings
from rag.errors import ConfigError
from rag.pipeline import Baokan
from tests.reliability.conftest import BAOKAN, GOOD_Q, REPO, free_port
from ui.app import launch_kwargs

pytestmark = pytest.mark.reliability

KEY = "sk-secret-XYZ-0123456789abcdef"


def test_default_bind_is_loopback(tmp_path: Path) -> None:
    kw = launch_kwargs(Settings(data_dir=tmp_path))
    assert kw["server_name"] == "127.0.0.1"
    assert kw["share"] is False
    assert kw["auth"] is None


@pytest.mark.parametrize("host", ["0.0.0.0", "192.168.1.20", "::", "example.org"])
def test_public_host_without_auth_is_refused(tmp_path: Path, host: str) -> None:
    with pytest.raises(ConfigError) as err:
        launch_kwargs(Settings(data_dir=tmp_path), host=host)
    assert host in err.value.message
    assert "BAOKAN_AUTH" in err.value.fix and "BAOKAN_ALLOW_PUBLIC" in err.value.fix


def test_public_host_with_auth_or_opt_in(tmp_path: Path) -> None:
    kw = launch_kwargs(Settings(data_dir=tmp_path, auth="ana:pw1,li:pw2"), host="0.0.0.0")  # type: ignore[arg-type]
    assert kw["server_name"] == "0.0.0.0" and kw["auth"] == [("ana", "pw1"), ("li", "pw2")]
    kw = launch_kwargs(Settings(data_dir=tmp_path, allow_public=True), host="0.0.0.0")
    assert kw["auth"] is None and kw["server_name"] == "0.0.0.0"
    with pytest.raises(ConfigError) as err:
        launch_kwargs(Settings(data_dir=tmp_path, auth="ana:"), host="0.0.0.0")  # type: ignore[arg-type]
    assert "ana" in err.value.message


def test_key_not_in_settings_repr(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, openai_api_key=KEY)  # type: ignore[arg-type]
    for text in (repr(s), str(s), s.model_dump_json(), json.dumps(s.model_dump(mode="json"))):
        assert KEY not in text and "XYZ" not in text


def test_key_not_in_error_or_answer_json(rel_app: Baokan) -> None:
    port = free_port()
    s = Settings(
        data_dir=rel_app.settings.data_dir,
        openai_api_key=KEY,  # type: ignore[arg-type]
        openai_base_url=f"http://127.0.0.1:{port}/v1",
        llm_timeout=10,
    )
    app = Baokan(s, embedder=rel_app.embedder)
    ans = app.ask_llm(GOOD_Q, llm="openai")
    assert ans.error and f"127.0.0.1:{port}" in ans.error, ans.error
    assert ans.hits, "sources survive a dead model"
    dumped = json.dumps(ans.to_json(), ensure_ascii=False)
    assert "error" in ans.to_json()
    assert KEY not in dumped and "XYZ" not in dumped and KEY not in (ans.error or "")


def test_key_not_in_cli_or_eval_output(tmp_path: Path) -> None:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BAOKAN_")}
    env.update(
        HF_HUB_OFFLINE="1",
        BAOKAN_DATA_DIR=str(tmp_path / "data"),
        BAOKAN_OPENAI_API_KEY=KEY,
        BAOKAN_OPENAI_BASE_URL=f"http://127.0.0.1:{port}/v1",
        BAOKAN_LLM_TIMEOUT="10",
    )
    out = tmp_path / "eval-out"
    r = subprocess.run(
        [
            str(BAOKAN),
            "eval",
            "--set",
            "eval/questions_seeds.jsonl",
            "--llm",
            "openai",
            "--limit",
            "2",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=REPO,
        timeout=400,
        check=False,
    )
    assert KEY not in r.stdout + r.stderr and "XYZ" not in r.stdout + r.stderr
    files = [p for p in tmp_path.rglob("*") if p.is_file() and p.stat().st_size < 20_000_000]
    assert any(p.is_relative_to(out) for p in files), (r.returncode, r.stderr[-2000:])
    for p in files:
        data = p.read_bytes()
        assert KEY.encode() not in data and b"XYZ-0123" not in data, p
    r2 = subprocess.run(
        [str(BAOKAN), "ask", GOOD_Q, "--llm", "openai"],
        capture_output=True,
        text=True,
        env={**env, "BAOKAN_DATA_DIR": str(tmp_path / ".index-questions_seeds")},
        cwd=REPO,
        timeout=200,
        check=False,
    )
    assert "cannot be reached" in r2.stdout + r2.stderr, (r2.returncode, r2.stdout[-800:], r2.stderr[-800:])
    assert KEY not in r2.stdout + r2.stderr and "XYZ" not in r2.stdout + r2.stderr
    assert "Traceback" not in r2.stderr
