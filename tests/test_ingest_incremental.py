"""Incremental ingestion on a copy of seeds/: unchanged files cost nothing, a changed
file replaces exactly its passages, prune drops vanished files, bad files are named
and skipped — and Chroma and the keyword index always hold the same passage keys."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from rag.config import Settings
from rag.pipeline import Baokan
from rag.store import ChromaStore

SEEDS = Path(__file__).resolve().parent.parent / "seeds"
pytestmark = pytest.mark.slow


def _keys_by_article(app: Baokan) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for key in app.index.passage_keys():
        out.setdefault(key.split(":")[0], []).append(key)
    return out


def assert_in_step(app: Baokan) -> set[str]:
    """Chroma and SQLite hold the same keys, each once, and nothing is half-written."""
    sqlite_keys = list(app.index.passage_keys())
    store = app.store
    assert isinstance(store, ChromaStore)
    chroma_keys = list(store.ids())
    assert len(sqlite_keys) == len(set(sqlite_keys))
    assert len(chroma_keys) == len(set(chroma_keys))
    assert set(chroma_keys) == set(sqlite_keys)
    counts = app.index.counts()
    assert counts["unfinished"] == 0
    assert counts["passages"] == store.count() == len(sqlite_keys)
    return set(sqlite_keys)


@pytest.fixture
def archive(tmp_path: Path) -> Path:
    folder = tmp_path / "archive"
    shutil.copytree(SEEDS, folder)
    return folder


@pytest.fixture
def app(tmp_path: Path) -> Iterator[Baokan]:
    a = Baokan(Settings(data_dir=tmp_path / "data"))
    yield a
    a.close()


def test_reingest_embeds_nothing(app: Baokan, archive: Path) -> None:
    first = app.ingest([archive])
    assert first.articles_added == 5 and first.passages > 0 and not first.skipped
    keys = assert_in_step(app)
    assert len(keys) == first.passages

    again = app.ingest([archive])
    assert again.passages == 0
    assert again.articles == 0
    assert again.unchanged == 5
    assert again.seconds["embed"] == 0.0
    assert assert_in_step(app) == keys


def test_changed_file_replaces_exactly_its_passages(app: Baokan, archive: Path) -> None:
    app.ingest([archive])
    before = _keys_by_article(app)
    before_text = {k: p.text for k, p in app.index.get(app.index.passage_keys()).items()}
    target = sorted(archive.iterdir())[0]
    (target_id,) = [a for a in before if app.index.article_passages(a)[0].source_path == str(target.resolve())]
    marker = "Zebra marker paragraph added by the incremental ingestion test to change this article."
    text = target.read_text(encoding="utf-8")
    head, sep, tail = text.partition("<hr />")
    target.write_text(head.rstrip() + "\n\n" + marker + "\n\n" + sep + tail, encoding="utf-8")

    report = app.ingest([archive])
    assert report.articles_replaced == 1 and report.articles_added == 0
    assert report.unchanged == 4
    after = _keys_by_article(app)
    assert report.passages == len(after[target_id])
    assert any(marker in p.text for p in app.index.article_passages(target_id))
    # Every other article is untouched: same keys, same texts.
    after_text = {k: p.text for k, p in app.index.get(app.index.passage_keys()).items()}
    for aid, keys in before.items():
        if aid != target_id:
            assert after[aid] == keys
            assert all(after_text[k] == before_text[k] for k in keys)
    assert_in_step(app)
    hits = app.search("Zebra marker paragraph incremental ingestion test", mode="bm25")
    assert hits and hits[0].passage.article_id == target_id


def test_deleted_file_with_prune(app: Baokan, archive: Path) -> None:
    app.ingest([archive])
    before = _keys_by_article(app)
    gone = sorted(archive.iterdir())[1]
    (gone_id,) = [a for a in before if app.index.article_passages(a)[0].source_path == str(gone.resolve())]
    gone.unlink()

    kept = app.ingest([archive])  # without --prune nothing is dropped
    assert kept.removed == 0 and set(_keys_by_article(app)) == set(before)

    report = app.ingest([archive], prune=True)
    assert report.removed == 1 and report.passages == 0
    after = _keys_by_article(app)
    assert gone_id not in after
    assert after == {a: k for a, k in before.items() if a != gone_id}
    assert app.index.article_passages(gone_id) == []
    assert app.index.counts()["articles"] == 4
    assert_in_step(app)


def test_duplicate_under_two_names_is_skipped(app: Baokan, archive: Path) -> None:
    original = sorted(archive.iterdir())[2]
    copy = archive / "zz_copy_of_article.txt"
    shutil.copyfile(original, copy)
    report = app.ingest([archive])
    assert report.articles_added == 5
    (reason,) = [r for p, r in report.skipped if p == str(copy)]
    assert "duplicate" in reason and original.name in reason
    keys = assert_in_step(app)
    # A second run neither re-embeds nor lets the two copies replace each other.
    again = app.ingest([archive])
    assert again.passages == 0 and again.articles == 0
    assert assert_in_step(app) == keys


def test_bad_files_are_named_and_skipped(app: Baokan, archive: Path) -> None:
    first = app.ingest([archive])
    keys = assert_in_step(app)
    good = sorted(archive.iterdir())[0].read_text(encoding="utf-8")
    bad = {
        "binary.txt": b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)),
        "empty.txt": b"",
        "gbk.txt": "### 人民日报社论\n\n1959-11-24\n第1版()\n\n    全国人民团结起来。\n".encode("gbk"),
        "no_header.txt": b"Just some notes without any header.\nSecond line.\n",
        "bad_date.txt": good.replace(good.split("Date:")[1].split("\n")[0], " 1959-13-45", 1).encode(),
    }
    for name, data in bad.items():
        (archive / name).write_bytes(data)
    fresh = archive.parent / "fresh.txt"
    fresh.write_text(
        "Title: A Fresh Article About Reservoirs\nAuthor: Test\nDate: 1958-07-01\nPage: 3\n\n"
        "The county built three reservoirs this summer, storing water for the autumn harvest.\n",
        encoding="utf-8",
    )
    report = app.ingest([archive, fresh])
    reasons = {Path(p).name: r for p, r in report.skipped}
    assert set(reasons) == set(bad)
    assert "binary" in reasons["binary.txt"]
    assert "empty" in reasons["empty.txt"]
    assert "UTF-8" in reasons["gbk.txt"] and "GB18030" in reasons["gbk.txt"]
    assert "header" in reasons["no_header.txt"]
    assert "date" in reasons["bad_date.txt"].lower()
    assert report.articles_added == 1 and report.unchanged == first.articles
    after = assert_in_step(app)
    assert keys < after  # nothing already indexed was lost; the fresh article was added
    assert app.search("reservoirs autumn harvest", mode="bm25")[0].passage.title_en.startswith("A Fresh")
