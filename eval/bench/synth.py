"""Generate a synthetic archive shaped like the real one, in the archive's file format.

Sentences, paragraph counts, sentences per paragraph and titles are drawn from the
real articles (seeds/ and ../shared/corpus when present), so the real parser,
chunker, aligner, jieba and embedder do their real work; only the combinations
are random. Stops when the files hold ``--passages`` passages as Baokan cuts them.

    .venv/bin/python eval/bench/synth.py --passages 10000 --out /tmp/bench/synth10k
"""

from __future__ import annotations

import argparse
import datetime as dt
import random
from pathlib import Path

from rag.chunk import flatten, split_units
from rag.errors import ParseError
from rag.parse import parse_file
from rag.text import split_sentences

REPO = Path(__file__).resolve().parents[2]
SOURCES = [REPO / "seeds", REPO.parent / "shared" / "corpus" / "rmrb"]


def load_pools() -> dict[str, list]:
    en_sent: list[str] = []
    zh_sent: list[str] = []
    shapes: list[tuple[list[int], list[int]]] = []
    titles: list[tuple[str, str]] = []
    for root in SOURCES:
        for path in sorted(root.rglob("*")) if root.exists() else []:
            if path.suffix not in (".txt", ".md"):
                continue
            try:
                a = parse_file(path)
            except ParseError:
                continue
            en_counts, zh_counts = [], []
            for para in a.body_en:
                s = split_sentences(para, "en")
                en_sent.extend(s)
                en_counts.append(len(s))
            for para in a.body_zh:
                s = split_sentences(para, "zh")
                zh_sent.extend(s)
                zh_counts.append(len(s))
            shapes.append((en_counts, zh_counts))
            titles.append((a.title_en, a.title_zh))
    return {"en": en_sent, "zh": zh_sent, "shapes": shapes, "titles": titles}


def article_text(rng: random.Random, pools: dict[str, list], n: int) -> tuple[str, int]:
    en_counts, zh_counts = rng.choice(pools["shapes"])
    en = [" ".join(rng.choices(pools["en"], k=max(1, c))) for c in en_counts]
    zh = ["".join(rng.choices(pools["zh"], k=max(1, c))) for c in zh_counts]
    t_en, t_zh = rng.choice(pools["titles"])
    t_en = f"{t_en} ({n})"
    t_zh = f"{t_zh}（{n}）"
    date = dt.date(1946, 5, 15) + dt.timedelta(days=rng.randrange(0, 365 * 57))
    page = rng.randint(1, 8)
    text = (
        f"Title: {t_en}\nAuthor: \nDate: {date.isoformat()}\nPage: {page}\n\n"
        + "\n\n".join(en)
        + "\n\n<hr />\n\nOriginal:\n\n\n"
        + f"### {t_zh}\n\n{date.isoformat()}\n第{page}版()\n专栏：\n\n"
        + "\n".join("    " + p for p in zh)
        + "\n"
    )
    passages = len(flatten(split_units(en, "en"))) + len(flatten(split_units(zh, "zh")))
    return text, passages


def generate(out: Path, passages: int, seed: int = 7) -> tuple[int, int]:
    """Write articles until they hold ``passages`` passages; returns (articles, passages)."""
    pools = load_pools()
    rng = random.Random(seed)
    out.mkdir(parents=True, exist_ok=True)
    total = n = 0
    while total < passages:
        text, k = article_text(rng, pools, n)
        folder = out / f"{n // 1000:04d}"
        folder.mkdir(exist_ok=True)
        (folder / f"{n:07d}.md").write_text(text, encoding="utf-8")
        total += k
        n += 1
    return n, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--passages", type=int, default=10_000)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    n, total = generate(args.out, args.passages, args.seed)
    print(f"wrote {n} articles, {total} passages to {args.out}")


if __name__ == "__main__":
    main()
