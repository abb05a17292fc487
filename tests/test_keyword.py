"""The keyword index on its own: upgrade of older files, and queries FTS5 treats specially."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

from rag.chunk import chunk_article
from rag.keyword import KeywordIndex
from rag.parse import parse_text
from rag.pipeline import Baokan

ARTICLE = """Title: Track and Field Records Broken at the Workers' Games
Author: Staff
Date: 1959-09-20
Page: 4

At the national workers' games, the top three in the javelin all broke the national record of 43.60 meters.

The mass sports movement in factories prepared these athletes.

<hr />

Original:

### 工人运动会上田径纪录被打破

第4版()

在全国工人运动会上，标枪前三名都打破了43.60米的全国纪录。

工厂里的群众体育运动培养了这些运动员。
"""


def _index_with_article(path: Path) -> KeywordIndex:
    index = KeywordIndex(path)
    article = parse_text(ARTICLE, source_path="/test/games.md")
    passages = chunk_article(article)
    index.mark(article.article_id, article.content_hash, "pending")
    index.commit_articles([(article.article_id, passages, [(article.source_path, article.content_hash)])])
    return index


def test_decimal_number_query(tmp_path: Path) -> None:
    """'43.60' is two FTS5 tokens, i.e. a phrase: it must match, not raise."""
    index = _index_with_article(tmp_path / "k.sqlite3")
    hits = index.search("Who broke the record of 43.60 meters?", 5)
    assert hits and "43.60" in hits[0][0].text
    zh = index.search("43.60米的纪录", 5)
    assert zh and "43.60" in zh[0][0].text
    index.close()


def _downgrade_to_column_detail(path: Path) -> None:
    """Rewrite the keyword table the way indexes were written before positions were kept."""
    c = sqlite3.connect(path)
    c.executescript(
        """
        DROP TABLE passages_vocab;
        CREATE VIRTUAL TABLE old_fts USING fts5(tokens, detail=column);
        INSERT INTO old_fts(rowid, tokens) SELECT rowid, tokens FROM passages_fts;
        DROP TABLE passages_fts;
        ALTER TABLE old_fts RENAME TO passages_fts;
        CREATE VIRTUAL TABLE passages_vocab USING fts5vocab(passages_fts, 'row');
        """
    )
    c.commit()
    c.close()


def test_column_detail_index_is_upgraded_on_open(tmp_path: Path, seeds_app: Baokan) -> None:
    copy = tmp_path / "old.sqlite3"
    src = sqlite3.connect(seeds_app.settings.index_path)
    dst = sqlite3.connect(copy)
    src.backup(dst)
    src.close()
    dst.close()
    _downgrade_to_column_detail(copy)
    assert (
        "detail=column"
        in sqlite3.connect(copy).execute("SELECT sql FROM sqlite_master WHERE name='passages_fts'").fetchone()[0]
    )

    upgraded = KeywordIndex(copy)
    sql = upgraded._conn.execute("SELECT sql FROM sqlite_master WHERE name='passages_fts'").fetchone()[0]
    assert "detail=full" in sql
    assert upgraded.counts() == seeds_app.index.counts()
    for q in ("Hongqiao District technical innovation", "虹桥区 技术革新 建议", "Chongqing Steel Company pace-setters"):
        want = [(p.key, round(s, 6)) for p, s in seeds_app.index.search(q, 20)]
        got = [(p.key, round(s, 6)) for p, s in upgraded.search(q, 20)]
        assert got == want and want, q
    upgraded.close()
    shutil.rmtree(tmp_path, ignore_errors=True)


def _article(n: int, paragraphs: list[str]) -> str:
    body = "\n\n".join(paragraphs)
    return (
        f"Title: Report number {n}\nAuthor: Staff\nDate: 1960-01-{1 + n % 28:02d}\nPage: 1\n\n{body}\n\n<hr />\n\n"
        f"Original:\n\n### 报告{n}\n\n第1版()\n\n"
        + "\n\n".join(
            f"第{n}篇第{i}段。" + "这是一段足够长的中文内容，用来保持段落独立。" * 6 for i in range(len(paragraphs))
        )
    )


def test_postings_budget_keeps_the_rarest_terms(tmp_path: Path) -> None:
    """On a large index a long query is cut to its rarest terms (FTS5 scores every
    posting); the passage holding all terms still ranks first, and no hit is matched
    only by a dropped common term."""
    exact = KeywordIndex(tmp_path / "k.sqlite3", postings_budget=0)
    rows = []
    for n in range(300):  # 300 articles x 10 paragraphs x 2 languages = 6000 passages
        paras = []
        for i in range(10):
            j = n * 10 + i
            words = ["alpha"] * (j % 3 == 0) + ["beta"] * (j % 4 == 0) + ["gamma"] * (j % 150 == 0)
            words += ["delta"] * (j % 400 == 0) + ["epsilon"] * (j == 1200) + [f"w{j}x{k}" for k in range(40)]
            paras.append(" ".join(words) + ".")
        article = parse_text(_article(n, paras), source_path=f"/test/{n}.md")
        rows.append((article.article_id, chunk_article(article), [(article.source_path, article.content_hash)]))
    exact.commit_articles(rows)
    assert exact.counts()["passages"] >= 5000
    budgeted = KeywordIndex(tmp_path / "k.sqlite3", postings_budget=50)
    query = "alpha beta gamma delta epsilon"
    full, cut = exact.search(query, 40), budgeted.search(query, 40)
    assert "epsilon" in full[0][0].text and cut[0][0].key == full[0][0].key
    assert all(any(w in p.text for w in ("gamma", "delta", "epsilon")) for p, _ in cut)
    assert any(not any(w in p.text for w in ("gamma", "delta", "epsilon")) for p, _ in full)
    exact.close()
    budgeted.close()
