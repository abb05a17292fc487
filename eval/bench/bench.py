"""Ingestion and search benchmark over Baokan's real components; prints a table and
writes eval/bench/results/<name>.json.

    # real embedding, embedded Chroma
    .venv/bin/python eval/bench/bench.py --name synth10k /tmp/bench/synth10k
    # the same through a `chroma run` server this script starts on loopback
    .venv/bin/python eval/bench/bench.py --name synth10k-server --server /tmp/bench/synth10k
    # real data, eval questions
    .venv/bin/python eval/bench/bench.py --name real seeds ../shared/corpus/rmrb --questions eval/questions_corpus.jsonl
    # search latency at scale without embedding cost: --direct N inserts N passages whose
    # vectors are real embeddings of real passages plus Gaussian noise (see README)
    .venv/bin/python eval/bench/bench.py --name direct100k --direct 100000

Ingestion figures: passages/s of `Baokan.ingest` next to the bare embedder's
passages/s on a sample of the same passages (the limit ingestion can reach), the
split of ingest time (IngestReport.seconds), peak and per-stage RSS, disk per 100k
passages. Search figures: p50/p95 of `Baokan.search` (query embedding + dense + BM25 +
fusion), of a bare Chroma query with a precomputed vector, of BM25 alone and of the
query embedding alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "eval" / "bench"))

from rag.config import Settings  # noqa: E402
from rag.embed import EmbedPool, make_pool  # noqa: E402
from rag.ingest import iter_files  # noqa: E402
from rag.pipeline import Baokan  # noqa: E402

RESULTS = REPO / "eval" / "bench" / "results"


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def children_rss_mb() -> float:
    """RSS of this process's children: the embedding workers (and nothing else here)."""
    total = 0
    for task in Path("/proc/self/task").iterdir():
        try:  # a thread (or child) may end between listing and reading
            pids = (task / "children").read_text().split()
        except OSError:
            continue
        for pid in pids:
            try:
                total += int(Path(f"/proc/{pid}/statm").read_text().split()[1])
            except OSError:
                continue
    return total * os.sysconf("SC_PAGE_SIZE") / 2**20


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def du_mb(path: Path) -> float:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) / 2**20


def pct(xs: list[float], q: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q / 100 * (len(xs) - 1)))]


def start_server(path: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    chroma = Path(sys.executable).parent / "chroma"
    proc = subprocess.Popen(
        [str(chroma), "run", "--path", str(path), "--host", "127.0.0.1", "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    for _ in range(300):
        try:
            if httpx.get(url + "/api/v2/heartbeat", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            time.sleep(0.2)
    proc.kill()
    raise SystemExit("chroma server did not start")


class RssProgress:
    """Progress hook that samples RSS every 50 files: shows whether memory stays flat."""

    def __init__(self) -> None:
        self.samples: list[tuple[int, float]] = []
        self.workers_mb = 0.0
        """Largest RSS the embedding workers reached, summed over the workers."""

    def __call__(self, items: Iterable[Any], total: int) -> Iterator[Any]:
        for i, item in enumerate(items):
            if i % 50 == 0:
                self.samples.append((i, round(rss_mb(), 1)))
                self.workers_mb = max(self.workers_mb, children_rss_mb())
            yield item


def questions(path: Path | None, app: Baokan, n: int) -> list[str]:
    if path:
        return [json.loads(line)["question"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rng = random.Random(3)
    keys = list(app.index.passage_keys())
    sample = app.index.get(rng.sample(keys, min(n, len(keys))))
    out = []
    for p in sample.values():  # a phrase from a passage, like a user remembering a line
        words = p.text.split() if p.lang == "en" else list(p.text)
        start = rng.randrange(0, max(1, len(words) - 12))
        out.append((" " if p.lang == "en" else "").join(words[start : start + 12]))
    return out


def time_calls(fn: Any, items: list[Any]) -> dict[str, float]:
    for it in items[:3]:
        fn(it)
    ts = []
    for it in items:
        t0 = time.perf_counter()
        fn(it)
        ts.append((time.perf_counter() - t0) * 1000)
    return {"p50_ms": round(pct(ts, 50), 1), "p95_ms": round(pct(ts, 95), 1), "n": len(ts)}


def bench_search(app: Baokan, qs: list[str]) -> dict[str, Any]:
    vecs = {q: app.embedder.embed([q])[0] for q in qs}
    c = app.settings.candidates
    return {
        "baokan_search": time_calls(lambda q: app.search(q), qs),
        "bare_chroma_query": time_calls(lambda q: app.store.query(vecs[q], c), qs),
        "bm25": time_calls(lambda q: app.index.search(q, c), qs),
        "query_embedding": time_calls(lambda q: app.embedder.embed([q]), qs),
    }


def bare_sample(paths: list[Path], n: int) -> list[str]:
    """About ``n`` of the very texts ingestion embeds (pieces of randomly chosen files)."""
    from rag.chunk import flatten, split_units
    from rag.parse import parse_file

    files = list(iter_files(paths, []))
    random.Random(5).shuffle(files)
    texts: list[str] = []
    for f in files:
        if len(texts) >= n:
            break
        try:
            a = parse_file(f)
        except Exception:  # skipped by ingestion too
            continue
        texts += flatten(split_units(a.body_en, "en")) + flatten(split_units(a.body_zh, "zh"))
    return texts[:n]


def bare_embed_rate(app: Baokan, texts: list[str]) -> float:
    bs = app.settings.embed_batch_size
    app.embedder.embed(texts[:8])
    t0 = time.perf_counter()
    for i in range(0, len(texts), bs):
        app.embedder.embed(texts[i : i + bs])
    return len(texts) / (time.perf_counter() - t0)


def bare_pool_rate(pool: EmbedPool, texts: list[str], batch: int) -> float:
    """The worker pool alone on the same texts, fed the way ingestion feeds it
    (batches of ``batch`` split across the workers, all queued at once)."""
    pool.embed(texts[:8])  # workers started and the model loaded before timing
    t0 = time.perf_counter()
    jobs = [pool.submit(texts[i : i + batch]) for i in range(0, len(texts), batch)]
    for job in jobs:
        job.result()
    return len(texts) / (time.perf_counter() - t0)


def direct_insert(app: Baokan, n: int) -> dict[str, Any]:
    """Insert ``n`` synthetic passages with realistic vectors, skipping the embedder."""
    import synth

    from rag.chunk import chunk_article, flatten, split_units
    from rag.parse import parse_text

    pools = synth.load_pools()
    rng = random.Random(11)
    nrng = np.random.default_rng(11)
    base_texts = rng.sample(pools["en"], 500) + rng.sample(pools["zh"], 500)
    base = app.embedder.embed(base_texts)
    t0, total, i = time.perf_counter(), 0, 0
    batch: list[Any] = []
    while total < n:
        text, _ = synth.article_text(rng, pools, i)
        a = parse_text(text, source_path=f"/synthetic/{i:07d}.md")
        units = len(flatten(split_units(a.body_en, "en"))) + len(flatten(split_units(a.body_zh, "zh")))
        v = base[nrng.integers(0, len(base), units)] + nrng.normal(0, 0.02, (units, base.shape[1])).astype(np.float32)
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        ps = chunk_article(a, v)
        batch.append((a, ps, v))
        total += len(ps)
        i += 1
        if len(batch) >= 50 or total >= n:
            app.index.mark_many(
                [(x.article_id, x.content_hash, x.title, x.date.isoformat()) for x, _, _ in batch], "pending"
            )
            app.store.add([p for _, ps_, _ in batch for p in ps_], np.concatenate([v_ for _, _, v_ in batch]))
            app.index.commit_articles([(x.article_id, ps_, [(x.source_path, x.content_hash)]) for x, ps_, _ in batch])
            batch = []
    return {"passages": total, "articles": i, "seconds": round(time.perf_counter() - t0, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("paths", nargs="*", type=Path)
    ap.add_argument("--name", required=True)
    ap.add_argument("--server", action="store_true", help="run Chroma as a `chroma run` server")
    ap.add_argument("--direct", type=int, default=0, help="insert N passages without embedding")
    ap.add_argument("--questions", type=Path)
    ap.add_argument("--queries", type=int, default=60)
    ap.add_argument("--bare-sample", type=int, default=2000)
    ap.add_argument("--data", type=Path, help="data dir (default: a temp dir, removed after)")
    ap.add_argument("--reuse", action="store_true", help="search the index already in --data; ingest nothing")
    args = ap.parse_args()

    data = args.data or Path(tempfile.mkdtemp(prefix="baokan-bench-"))
    server = None
    overrides: dict[str, Any] = {"data_dir": data}
    if args.server:
        server, overrides["chroma_url"] = start_server(data / "chroma-server")
    out: dict[str, Any] = {"name": args.name, "server": args.server, "cpus": os.cpu_count()}
    try:
        app = Baokan(Settings(**overrides))
        app.embedder.embed(["warm up"])
        out["rss_mb_before"] = round(rss_mb(), 1)
        if args.reuse:
            if not args.data:
                raise SystemExit("--reuse needs --data DIR")
            t0 = time.perf_counter()
            passages = app.index.counts()["passages"]  # opening upgrades an older keyword table once
            out["reused"] = {"passages": passages, "open_s": round(time.perf_counter() - t0, 1)}
        elif args.direct:
            out["direct"] = direct_insert(app, args.direct)
            passages = out["direct"]["passages"]
        else:
            # The bare embedder runs on the same texts right before and right after ingestion:
            # on a shared machine one measurement alone moved by +-10% between runs.
            # When ingestion embeds in worker processes, the limit is that pool alone (same
            # workers, same batches), measured the same way; both figures are kept.
            sample = bare_sample(args.paths, args.bare_sample)
            n_files = len(list(iter_files(args.paths, [])))
            batch = app.settings.ingest_batch

            def bare_rates() -> dict[str, float]:
                rates = {"in_process": bare_embed_rate(app, sample)}
                pool = make_pool(app.settings, n_files)
                if pool is not None:
                    with pool:
                        rates[f"pool_{pool.workers}_workers"] = bare_pool_rate(pool, sample, batch)
                return rates

            before = bare_rates()
            hook = RssProgress()
            t0 = time.perf_counter()
            report = app.ingest(args.paths, progress=hook)
            wall = time.perf_counter() - t0
            passages = report.passages
            after = bare_rates()
            out["ingest"] = {
                **report.summary(),
                "wall_s": round(wall, 1),
                "passages_per_s": round(report.passages / wall, 1),
                "rss_samples": hook.samples,
                "embed_workers_rss_mb": round(hook.workers_mb, 1),
            }
            means = {k: round((before[k] + after[k]) / 2, 1) for k in before}
            out["bare_embed_before_after"] = {k: [round(before[k], 1), round(after[k], 1)] for k in before}
            out["bare_embed_mean"] = means
            out["bare_embed_passages_per_s"] = max(means.values())  # the limit: the faster way to embed
            out["ingest_vs_bare"] = round(out["ingest"]["passages_per_s"] / out["bare_embed_passages_per_s"], 2)
        out["rss_mb_after_ingest"] = round(rss_mb(), 1)
        out["search"] = bench_search(app, questions(args.questions, app, args.queries))
        out["peak_rss_mb"] = round(peak_rss_mb(), 1)
        disk = du_mb(data)
        out["disk_mb"] = round(disk, 1)
        out["disk_mb_per_100k"] = round(disk / max(1, passages) * 100_000, 1)
        out["passages"] = passages
        if server:
            statm = Path(f"/proc/{server.pid}/statm").read_text().split()
            out["server_rss_mb"] = round(int(statm[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
        app.close()
    finally:
        if server:
            server.terminate()
            server.wait(timeout=20)
        if not args.data:
            shutil.rmtree(data, ignore_errors=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.name}.json").write_text(json.dumps(out, indent=1, ensure_ascii=False) + "\n")
    print_table(out)


def print_table(o: dict[str, Any]) -> None:
    rows: list[tuple[str, str]] = [
        ("run", o["name"] + (" (chroma server)" if o["server"] else " (embedded)")),
        ("passages", str(o["passages"])),
    ]
    if "ingest" in o:
        i = o["ingest"]
        rows += [
            ("ingest passages/s", f"{i['passages_per_s']}  (wall {i['wall_s']} s)"),
            *(
                (
                    f"bare embedder {k.replace('_', ' ')} passages/s",
                    f"{o['bare_embed_mean'][k]}  (before / after ingest: {' / '.join(map(str, v))})",
                )
                for k, v in o["bare_embed_before_after"].items()
            ),
            ("ingest / bare (the faster)", str(o["ingest_vs_bare"])),
            ("embedding workers RSS MB", str(i.get("embed_workers_rss_mb", 0))),
            ("time split (s)", ", ".join(f"{k} {v}" for k, v in i["seconds"].items())),
        ]
    if "reused" in o:
        rows.append(("reused index", f"{o['reused']['passages']} passages (opened in {o['reused']['open_s']} s)"))
    if "direct" in o:
        rows.append(("direct insert", f"{o['direct']['passages']} passages in {o['direct']['seconds']} s"))
    for k, v in o["search"].items():
        rows.append((f"{k} p50/p95 ms", f"{v['p50_ms']} / {v['p95_ms']}"))
    rows += [
        ("RSS MB before/after/peak", f"{o['rss_mb_before']} / {o['rss_mb_after_ingest']} / {o['peak_rss_mb']}"),
        ("disk MB (per 100k passages)", f"{o['disk_mb']} ({o['disk_mb_per_100k']})"),
    ]
    if "server_rss_mb" in o:
        rows.append(("chroma server RSS MB", str(o["server_rss_mb"])))
    w = max(len(r[0]) for r in rows)
    for k, v in rows:
        print(f"{k:<{w}}  {v}")


if __name__ == "__main__":
    main()
