"""The evaluation report: one self-contained HTML file (plots inlined as base64 PNG).

A user opens it from disk with no server and no network: matplotlib draws
the charts with the Agg backend, and every text is escaped because questions,
answers and passages come from the archive and the model.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from rag import metrics

COMPARE = (
    "hit@1",
    "hit@5",
    "mrr",
    "ndcg@10",
    "accuracy",
    "rejection_rate",
    "false_refusal_rate",
    "citation_validity",
    "citation_recall",
    "citation_precision",
)
BREAKDOWN = ("hit@5", "mrr", "accuracy", "citation_recall")
MAX_FAILURES = 25

CSS = """
body{font-family:system-ui,-apple-system,'Noto Sans CJK SC','Microsoft YaHei',sans-serif;margin:24px;color:#1b1b1b;
max-width:1320px}
h1{margin-bottom:4px}h2{margin-top:32px;border-bottom:1px solid #ddd;padding-bottom:4px}
table{border-collapse:collapse;margin:8px 0;font-size:13px}th,td{border:1px solid #ddd;padding:4px 8px;text-align:right}
th{background:#f4f4f4;max-width:110px}td.l,th.l{text-align:left}.muted{color:#666;font-size:13px}
.fail{border:1px solid #e3c0c0;border-left:5px solid #c0392b;background:#fffafa;margin:12px 0;padding:8px 12px}
.fail .kind{font-weight:600;color:#c0392b}.fail .q{font-weight:600;margin:4px 0}.fail .a{white-space:pre-wrap}
.cite{font-size:12px;color:#333;margin:4px 0 4px 16px;white-space:pre-wrap}img{max-width:100%}
"""


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    plt.rcParams["font.sans-serif"] = ["Noto Sans CJK SC", "WenQuanYi Zen Hei", "DejaVu Sans"]
    return plt


def _png(fig: Any) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    _plt().close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def grouped_bars(
    groups: Sequence[str],
    series: Mapping[str, Sequence[float | None]],
    title: str,
    ylim: tuple[float, float] | None = (0.0, 1.12),
) -> str:
    """A grouped bar chart as a data URI (missing values drawn as empty slots)."""
    plt = _plt()
    n = max(1, len(series))
    width = 0.8 / n
    fig, ax = plt.subplots(figsize=(max(6.0, 0.9 * len(groups) * max(1, n) ** 0.5 + 2), 3.4))
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (n - 1) / 2) * width for g in range(len(groups))]
        ys = [0.0 if v is None else float(v) for v in values]
        bars = ax.bar(xs, ys, width=width, label=name)
        for b, v in zip(bars, values, strict=True):
            if v is not None:
                ax.annotate(
                    f"{v:.2f}", (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7
                )
    ax.set_xticks(range(len(groups)))
    ax.set_xticklabels(groups, rotation=20, ha="right", fontsize=9)
    if ylim:
        ax.set_ylim(*ylim)
    ax.set_title(title, fontsize=11)
    ax.grid(axis="y", alpha=0.3)
    if n > 1 or len(series) == 1:
        ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    return _png(fig)


def _fmt(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return f"{v:.3f}"
    return html.escape(str(v))


def _table(rows: Sequence[Sequence[Any]], head: Sequence[str]) -> str:
    # Underscores become spaces so long metric names wrap and the table fits the page.
    cells = [html.escape(h.replace("_", " ")) for h in head]
    out = [
        "<table><tr>"
        + "".join(f"<th class='l'>{h}</th>" if i == 0 else f"<th>{h}</th>" for i, h in enumerate(cells))
        + "</tr>"
    ]
    for row in rows:
        out.append(
            "<tr>"
            + "".join(f"<td class='l'>{_fmt(v)}</td>" if i == 0 else f"<td>{_fmt(v)}</td>" for i, v in enumerate(row))
            + "</tr>"
        )
    out.append("</table>")
    return "\n".join(out)


def _failure_html(r: Mapping[str, Any]) -> str:
    e = html.escape
    kind = metrics.failure_kind(r) or ""
    gold = r.get("gold_answers") or {}
    gold_txt = " / ".join(g for lang in ("en", "zh") for g in gold.get(lang, [])) or "(none: should refuse)"
    ranks = r.get("gold_ranks")
    parts = [
        "<div class='fail'>",
        f"<div><span class='kind'>{e(kind)}</span> <span class='muted'>{e(str(r.get('id')))} · {e(str(r.get('type')))}"
        f" · {e(str(r.get('lang')))} · run {e(str(r.get('mode')))}+{e(str(r.get('llm')))}"
        f" · gold article ranks {e(str(ranks))}</span></div>",
        f"<div class='q'>{e(str(r.get('question', '')))}</div>",
        f"<div class='muted'>expected: {e(gold_txt)} · gold: {e(', '.join(r.get('gold') or []) or '–')}</div>",
    ]
    if r.get("error"):
        parts.append(f"<div class='a'>error: {e(str(r['error']))}</div>")
    else:
        parts.append(f"<div class='a'><b>answer:</b> {e(str(r.get('answer', '')))}</div>")
        for c in r.get("citations") or []:
            quote = (c.get("quote_en") or "")[:400]
            quote_zh = (c.get("quote_zh") or "")[:200]
            parts.append(
                f"<div class='cite'>[{c.get('n')}] <b>{e(str(c.get('title')))}</b> {e(str(c.get('date')))}"
                f" · {e(str(c.get('source_path', '')).rsplit('/', 1)[-1])}\n{e(quote)}\n{e(quote_zh)}</div>"
            )
        if not r.get("citations"):
            top = (r.get("retrieved") or [])[:3]
            if top:
                parts.append(
                    "<div class='cite'>top retrieved: "
                    + e("; ".join(f"{a['rank']}. {a['title']} ({a['date']})" for a in top))
                    + "</div>"
                )
    parts.append("</div>")
    return "\n".join(parts)


def render(summary: Mapping[str, Any], records: Mapping[str, Sequence[Mapping[str, Any]]]) -> str:
    """The report as an HTML string."""
    runs: Mapping[str, Any] = summary["runs"]
    names = list(runs)
    e = html.escape
    index = summary.get("index", {})
    body = [
        f"<h1>Baokan grounding evaluation</h1><div class='muted'>set {e(str(summary.get('set')))} · "
        f"{summary.get('questions')} questions · {e(str(summary.get('created')))} · index "
        f"{index.get('articles', '?')} articles / {index.get('passages', '?')}"
        f" passages · support threshold {summary.get('support_threshold')} · LLM judge "
        f"{e(str(summary.get('judge') or 'none'))}</div>"
    ]

    body.append("<h2>Runs compared</h2>")
    head = ["run", *COMPARE, "latency p50 (s)", "latency p95 (s)", "errors", "n"]
    rows = [
        [
            n,
            *[runs[n]["overall"].get(m) for m in COMPARE],
            runs[n]["overall"].get("latency_p50"),
            runs[n]["overall"].get("latency_p95"),
            runs[n]["overall"].get("errors"),
            runs[n]["overall"].get("n"),
        ]
        for n in names
    ]
    body.append(_table(rows, head))
    overall = {n: [runs[n]["overall"].get(m) for m in COMPARE] for n in names}
    uri = grouped_bars(list(COMPARE), overall, "All metrics by run")
    body.append(f"<img alt='runs compared' src='{uri}'>")

    for field, label in (("by_type", "question type"), ("by_lang", "question language")):
        body.append(f"<h2>By {label}</h2>")
        groups = list(dict.fromkeys(g for n in names for g in runs[n][field]))
        for metric in BREAKDOWN:
            series = {n: [runs[n][field].get(g, {}).get(metric) for g in groups] for n in names}
            if any(v is not None for vs in series.values() for v in vs):
                uri = grouped_bars(groups, series, f"{metric} by {label}")
                body.append(f"<img alt='{e(metric)} by {e(label)}' src='{uri}'>")
        first = names[0]
        ref_rows = [[g, *[runs[first][field][g].get(m) for m in (*COMPARE, "n")]] for g in runs[first][field]]
        body.append(f"<div class='muted'>{e(first)}</div>" + _table(ref_rows, [label, *COMPARE, "n"]))
        if field == "by_type":
            rej = ", ".join(e(n) + " " + _fmt(runs[n]["overall"].get("rejection_rate")) for n in names)
            body.append(f"<div class='muted'>Refusal rate on unanswerable questions: {rej}</div>")

    body.append(
        "<h2>Worst failures</h2><div class='muted'>Errors, answers to unanswerable questions, wrong answers "
        "and refusals of answerable ones, worst first (a miss whose gold article was not retrieved ranks "
        "higher). Per run, at most "
        f"{MAX_FAILURES}.</div>"
    )
    for n in names:
        fails = [r for r in records.get(n, []) if metrics.failure_kind(r)]
        fails.sort(key=lambda r: -metrics.failure_severity(r))
        body.append(f"<h3>{e(n)}: {len(fails)} failures of {len(records.get(n, []))}</h3>")
        body.extend(_failure_html(r) for r in fails[:MAX_FAILURES])
    return (
        "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Baokan evaluation</title>"
        f"<style>{CSS}</style></head><body>" + "\n".join(body) + "</body></html>"
    )


def write_report(out: Path, summary: Mapping[str, Any], records: Mapping[str, Sequence[Mapping[str, Any]]]) -> Path:
    path = out / "report.html"
    path.write_text(render(summary, records), encoding="utf-8")
    return path
