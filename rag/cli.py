"""The ``baokan`` command. Domain errors become one-line messages here, and only here."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from rag.errors import BaokanError
from rag.types import Progress

EXIT_ERROR = 2


def _progress(desc: str, unit: str) -> Progress:
    def wrap(items: Iterable[Path], total: int) -> Iterable[Path]:
        from tqdm import tqdm

        return tqdm(
            items,
            total=total,
            desc=desc,
            unit=unit,
            file=sys.stderr,
            dynamic_ncols=True,
            disable=None if total > 1 else True,
        )

    return wrap


def _print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _questions(args: argparse.Namespace) -> Iterator[str]:
    if args.batch:
        path = Path(args.batch)
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise BaokanError(
                f"Cannot read batch file {path}: {exc}.", "Give a UTF-8 file, one question per line."
            ) from None
        yield from (line for line in lines if line.strip())
    else:
        yield args.query


def _app(args: argparse.Namespace) -> Any:
    from rag.config import get_settings
    from rag.pipeline import Baokan

    overrides: dict[str, Any] = {}
    for name in ("retrieval", "llm"):
        value = getattr(args, name, None)
        if value:
            overrides[name] = value
    return Baokan(get_settings(overrides))


def _filter(args: argparse.Namespace) -> Any:
    from rag.retrieve import make_filter

    return make_filter(args.date_from, args.date_to, args.page)


def cmd_ingest(args: argparse.Namespace) -> int:
    app = _app(args)
    report = app.ingest(args.paths, prune=args.prune, progress=_progress("ingest", "file"))
    if args.json:
        out = report.summary()
        out["skipped_files"] = [{"path": p, "reason": r} for p, r in report.skipped]
        _print_json(out)
    else:
        print(
            f"Indexed {report.articles} articles ({report.articles_added} new, "
            f"{report.articles_replaced} replaced), {report.passages} passages; "
            f"{report.unchanged} unchanged, {len(report.skipped)} skipped, {report.removed} removed."
        )
        if report.recovered:
            print(f"Recovered {report.recovered} articles left half-written by an interrupted run.")
        for path, reason in report.skipped:
            print(f"  skipped {path}: {reason}")
    return 0


def _search_text(hit: Any, n: int) -> str:
    p = hit.passage
    page = f"p.{p.page}" if p.page is not None else "p.?"
    lines = [
        f"[{n}] {p.title_en or p.title_zh} | {p.title_zh} | {p.date.isoformat()} {page} ({p.lang}, score {hit.score:.4f})"
    ]
    lines.append("    " + p.text[:400])
    for q in hit.linked:
        lines.append(f"    [{q.lang}] " + q.text[:400])
    lines.append(f"    {p.source_path}")
    return "\n".join(lines)


def cmd_search(args: argparse.Namespace) -> int:
    app = _app(args)
    flt = _filter(args)
    for q in _questions(args):
        try:
            hits = app.search(q, k=args.k, flt=flt)
        except BaokanError as exc:
            if not args.batch:
                raise
            _print_json({"query": q, "error": str(exc), "hits": []})
            continue
        if args.json or args.batch:
            if args.batch:
                _print_json({"query": q, "hits": [h.to_json() for h in hits]})
            else:
                for h in hits:
                    _print_json(h.to_json())
        else:
            if not hits:
                print("No passage matches this query and filters.")
            for n, h in enumerate(hits, 1):
                print(_search_text(h, n))
    return 0


def _answer_text(ans: Any) -> str:
    lines = [ans.answer]
    if ans.alt_answer:
        lines.append("")
        lines.append(ans.alt_answer)
    if ans.error:
        lines.append(f"\n(answer backend error: {ans.error})")
    for c in ans.citations:
        page = f"p.{c.page}" if c.page is not None else "p.?"
        lines.append("")
        lines.append(f"[{c.n}] {c.title_en} | {c.title_zh} | {c.date.isoformat()} {page}")
        if c.quote_en:
            lines.append(f"    EN: {c.quote_en[:600]}")
        if c.quote_zh:
            lines.append(f"    ZH: {c.quote_zh[:300]}")
        lines.append(f"    {c.source_path}")
    return "\n".join(lines)


def cmd_ask(args: argparse.Namespace) -> int:
    app = _app(args)
    flt = _filter(args)
    for q in _questions(args):
        try:
            ans = _ask(app, q, args, flt)
        except BaokanError as exc:
            if not args.batch:
                raise
            _print_json({"question": q, "error": str(exc), "answer": "", "refused": True, "citations": []})
            continue
        if args.json or args.batch:
            _print_json(ans.to_json())
        elif not getattr(args, "_streamed", False):
            print(_answer_text(ans))
    return 0


def _ask(app: Any, q: str, args: argparse.Namespace, flt: Any) -> Any:
    ask_stream = getattr(app, "ask_stream", None)
    if getattr(args, "stream", False) and ask_stream is not None and not (args.json or args.batch):
        return _stream(ask_stream, q, args, flt)
    ask = getattr(app, "ask_llm", None)
    if ask is not None and (args.llm or app.settings.llm != "extractive"):
        return ask(q, k=args.k, flt=flt, llm=args.llm)
    return app.ask(q, k=args.k, flt=flt)


def _stream(ask_stream: Any, q: str, args: argparse.Namespace, flt: Any) -> Any:
    answer = None
    for event in ask_stream(q, k=args.k, flt=flt, llm=args.llm):
        kind = event.get("type")
        if kind == "sources":
            for n, h in enumerate(event["hits"], 1):
                p = h.passage
                sys.stderr.write(f"[source {n}] {p.title_en or p.title_zh} {p.date.isoformat()} p.{p.page}\n")
        elif kind == "token":
            sys.stdout.write(event["text"])
            sys.stdout.flush()
        elif kind == "answer":
            answer = event["answer"]
    sys.stdout.write("\n")
    if answer is not None:
        args._streamed = True
        print(_answer_text(answer).split("\n", 1)[1] if "\n" in _answer_text(answer) else "")
    return answer


def cmd_stats(args: argparse.Namespace) -> int:
    from rag.config import get_settings
    from rag.keyword import KeywordIndex

    s = get_settings()
    idx = KeywordIndex(s.index_path)
    out: dict[str, Any] = dict(idx.counts())
    rng = idx.date_range()
    out["date_range"] = [d.isoformat() for d in rng] if rng else None
    out["data_dir"] = str(s.data_dir)
    _print_json(out)
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    try:
        from ui.app import serve
    except ImportError as exc:  # the UI ships in ui/; a broken install says so
        raise BaokanError(f"The chat UI is not available ({exc}).", "Run `make install`.") from None
    return int(serve(host=args.host, port=args.port, llm=args.llm) or 0)


def cmd_eval(args: argparse.Namespace) -> int:
    try:
        from rag.evaluate import main as eval_main
    except ImportError as exc:
        raise BaokanError(f"The evaluation module is not available ({exc}).", "Run `make install`.") from None
    return int(eval_main(args) or 0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="baokan", description="Cited question answering over the People's Daily archive."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("ingest", help="index article files or folders (recursive, incremental)")
    p.add_argument("paths", nargs="+", help="files or folders")
    p.add_argument("--prune", action="store_true", help="drop articles whose files under PATHS disappeared")
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=cmd_ingest)

    def common(p: argparse.ArgumentParser, what: str) -> None:
        p.add_argument("query", nargs="?", default=None, help=what)
        p.add_argument("-k", type=int, default=None, help="number of articles (default: settings top_k)")
        p.add_argument("--from", dest="date_from", default=None, help="earliest date, YYYY[-MM[-DD]]")
        p.add_argument("--to", dest="date_to", default=None, help="latest date, YYYY[-MM[-DD]]")
        p.add_argument("--page", default=None, help="only this page")
        p.add_argument("--json", action="store_true", help="JSON output")
        p.add_argument("--batch", default=None, metavar="FILE", help="one question per line; prints JSONL in order")
        p.add_argument("--retrieval", choices=["hybrid", "dense", "bm25"], default=None)

    p = sub.add_parser("search", help="show the passages that match a query")
    common(p, "search text (English or Chinese)")
    p.set_defaults(func=cmd_search)

    p = sub.add_parser("ask", help="answer a question with citations")
    common(p, "question (English or Chinese)")
    p.add_argument("--llm", default=None, help="answer backend: extractive, local, openai")
    p.add_argument("--stream", action="store_true", help="stream the answer as it is written")
    p.set_defaults(func=cmd_ask)

    p = sub.add_parser("serve", help="open the chat UI")
    p.add_argument("--host", default=None)
    p.add_argument("--port", type=int, default=None)
    p.add_argument("--llm", default=None)
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("eval", help="run a grounding evaluation and write a report")
    p.add_argument("--set", dest="set", default=None, help="question set JSONL")
    p.add_argument("--llm", default=None)
    p.add_argument("--retrieval", default=None, help="hybrid, dense, bm25 (comma-separated to compare)")
    p.add_argument("--out", default=None, help="output folder")
    p.add_argument("--limit", type=int, default=None, help="only the first N questions")
    p.add_argument("--judge", default=None, help="LLM judge for statement-level faithfulness: local, openai (optional)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("stats", help="what the index holds")
    p.set_defaults(func=cmd_stats)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command in ("search", "ask") and not args.batch and args.query is None:
        parser.error(f"{args.command}: give a QUERY or --batch FILE")
    try:
        return int(args.func(args) or 0)
    except BaokanError as exc:
        sys.stderr.write(f"baokan: error: {exc}\n")
        return EXIT_ERROR
    except KeyboardInterrupt:
        sys.stderr.write("baokan: interrupted (re-run the same command to resume)\n")
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
