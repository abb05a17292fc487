"""Bad files: each is skipped with a reason naming it, and the index is left as it was."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from rag.pipeline import Baokan
from tests.reliability.conftest import BAOKAN, GOOD_Q, SEEDS, counts

pytestmark = pytest.mark.reliability

SEED = sorted(SEEDS.glob("*.txt"))[1]


def _zh_block() -> str:
    text = SEED.read_text(encoding="utf-8")
    return text[text.index("### ") :]


def _binary(d: Path) -> Path:
    (d / "scan.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" * 200)
    return d / "scan.txt"


def _empty(d: Path) -> Path:
    (d / "empty.md").write_bytes(b"")
    return d / "empty.md"


def _huge(d: Path) -> Path:
    with open(d / "huge.txt", "wb") as f:  # sparse: 50 MB on paper, nothing on disk
        f.truncate(50 * 1024 * 1024)
    return d / "huge.txt"


def _gbk(d: Path) -> Path:
    (d / "gbk.txt").write_bytes(_zh_block().encode("gbk", errors="replace"))
    return d / "gbk.txt"


def _truncated(d: Path) -> Path:
    (d / "trunc.txt").write_text("Title: Half a header\nAuth", encoding="utf-8")
    return d / "trunc.txt"


def _bad_date(d: Path) -> Path:
    (d / "feb30.txt").write_text(SEED.read_text(encoding="utf-8").replace("1959-06-05", "1959-02-30"), "utf-8")
    return d / "feb30.txt"


def _bad_month(d: Path) -> Path:
    (d / "month13.txt").write_text("Title: T\nDate: 1959-13-45\nPage: 2\n\nSome body text.\n", encoding="utf-8")
    return d / "month13.txt"


CASES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "binary": (_binary, "binary"),
    "empty": (_empty, "empty"),
    "50MB": (_huge, "too large"),
    "gbk": (_gbk, "GB18030"),
    "truncated-header": (_truncated, "Date"),
    "feb-30": (_bad_date, "impossible date"),
    "month-13": (_bad_month, "impossible date"),
}


def _assert_still_serving(app: Baokan, before: tuple[int, int, int]) -> None:
    assert counts(app) == before
    hits = app.search(GOOD_Q)
    assert hits, "a good query must still find the indexed articles"
    assert len({h.passage.article_id for h in app.search("Chongqing Steel Company")}) >= 1


@pytest.mark.parametrize("name", list(CASES))
def test_bad_file_is_skipped_with_reason(name: str, rel_app: Baokan, tmp_path: Path) -> None:
    make, expected = CASES[name]
    before = counts(rel_app)
    path = make(tmp_path)
    report = rel_app.ingest([tmp_path])  # through a folder
    direct = rel_app.ingest([path])  # and named directly
    for rep in (report, direct):
        assert rep.articles == 0
        assert len(rep.skipped) == 1, rep.skipped
        where, reason = rep.skipped[0]
        assert Path(where).name == path.name
        assert expected.lower() in reason.lower(), reason
    _assert_still_serving(rel_app, before)


def test_duplicate_article_under_two_names(rel_app: Baokan, small_corpus: Path, tmp_path: Path) -> None:
    before = counts(rel_app)
    original = sorted(small_corpus.glob("*.txt"))[0]
    shutil.copy(original, tmp_path / "copy_a.txt")
    shutil.copy(original, tmp_path / "copy_b.md")
    report = rel_app.ingest([tmp_path])
    assert report.articles == 0
    reasons = [r for _, r in report.skipped]
    assert any("duplicate" in r for r in reasons), report.skipped
    _assert_still_serving(rel_app, before)


def test_symlink_loop_is_reported_not_followed(rel_app: Baokan, tmp_path: Path) -> None:
    before = counts(rel_app)
    d = tmp_path / "loop"
    (d / "sub").mkdir(parents=True)
    os.symlink(d, d / "sub" / "back")
    _empty(d / "sub")
    report = rel_app.ingest([d])
    assert any("symlink loop" in r for _, r in report.skipped), report.skipped
    assert report.articles == 0
    _assert_still_serving(rel_app, before)


def test_missing_path_and_directory_named_md(rel_app: Baokan, tmp_path: Path) -> None:
    before = counts(rel_app)
    (tmp_path / "folder.md").mkdir()
    report = rel_app.ingest([tmp_path / "nope.txt", tmp_path / "folder.md"])
    assert report.articles == 0
    assert any("no such file" in r for _, r in report.skipped), report.skipped
    _assert_still_serving(rel_app, before)


def test_fifo_named_directly_is_refused(rel_app: Baokan, tmp_path: Path) -> None:
    fifo = tmp_path / "pipe.md"
    os.mkfifo(fifo)
    report = rel_app.ingest([fifo])
    assert report.skipped == [(str(fifo), "not a regular file or folder")]


def _ingest_with_deadline(app: Baokan, path: Path, fifo: Path, seconds: float) -> tuple[bool, object]:
    """Ingest in a thread; if it blocks on the FIFO, unblock it (open for writing) and say so."""
    result: dict[str, object] = {}

    def work() -> None:
        try:
            result["report"] = app.ingest([path])
        except Exception as exc:  # reported to the test
            result["report"] = exc

    t = threading.Thread(target=work, daemon=True)
    t.start()
    t.join(seconds)
    hung = t.is_alive()
    if hung:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(30)
    return hung, result.get("report")


def test_fifo_inside_folder_does_not_hang(rel_app: Baokan, tmp_path: Path) -> None:
    os.mkfifo(tmp_path / "pipe.md")
    hung, report = _ingest_with_deadline(rel_app, tmp_path, tmp_path / "pipe.md", 15)
    assert not hung, "ingest blocked reading a FIFO"
    assert not isinstance(report, Exception)


def test_unreadable_file(rel_app: Baokan, tmp_path: Path) -> None:
    f = tmp_path / "secret.txt"
    shutil.copy(SEED, f)
    f.chmod(0)
    if os.geteuid() != 0:
        report = rel_app.ingest([f])
        assert report.skipped and "permission denied" in report.skipped[0][1]
        return
    # Root reads anything; without the two capabilities that override file modes it
    # meets permissions like any user. The CLI runs so, on a folder with one good file.
    setpriv = shutil.which("setpriv")
    if not setpriv:
        pytest.skip("running as root and no setpriv to drop the file-permission capabilities")
    shutil.copy(sorted(SEEDS.glob("*.txt"))[0], tmp_path / "good.txt")
    env = {**os.environ, "BAOKAN_DATA_DIR": str(tmp_path / "data"), "HF_HUB_OFFLINE": "1"}
    r = subprocess.run(
        [setpriv, "--bounding-set=-dac_override,-dac_read_search", str(BAOKAN), "ingest", str(tmp_path), "--json"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert r.returncode == 0, r.stderr[-2000:]
    out = json.loads(r.stdout)
    assert out["articles"] == 1, out
    skipped = {Path(s["path"]).name: s["reason"] for s in out["skipped_files"]}
    assert "permission denied" in skipped.get("secret.txt", ""), skipped
