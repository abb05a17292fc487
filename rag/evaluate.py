"""The grounding evaluation behind ``baokan eval``: runs the app's own code over a question set.

The set's articles are indexed into a cache next to the run folder
(``<out>/../.index-<set>``), incremental by content hash, so a second run
embeds nothing. Each (retrieval mode, answer backend) pair is one *run*; every
question becomes one record (``records-<run>.jsonl``), metrics are computed by
the pure functions in ``rag.metrics``, and ``summary.json`` plus
``report.html`` compare the runs. A question that raises is recorded with its
error and counted, never dropped.
"""

from __future__ import annotations

import argparse
import datetime as dt
import inspect
import json
import math
import re
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rag import metrics
from rag.errors import BaokanError, ConfigError
from rag.report import COMPARE
from rag.retrieve import MODES, make_filter
from rag.text import detect_lang, split_sentences
from rag.types import Answer, Hit, SearchFilter

SUPPORT_THRESHOLD = 0.6
"""SupportScorer score at or above which cited passages count as supporting a sentence.

Measured on the seeds set: a sentence scores 0.77-1.0 against the passage it
was taken from (either language), 0.2-0.4 on average and at most 0.54 against
passages of other articles on the same subject (factories, innovation).
0.6 sits between the two groups. It is a similarity, not entailment: a
paraphrase that changes a number can still pass; see eval/README.md."""
RETRIEVAL_K = 10
"""Articles retrieved for the retrieval metrics (nDCG@10 needs ten)."""
QUOTE_CHARS = 700
JUDGE_CONTEXT_CHARS = 6000
VALID_TYPES = (
    "factoid",
    "paraphrase",
    "cross-lingual",
    "multi-article",
    "metadata",
    "date-filtered",
    "follow-up",
    "unanswerable",
)
REPO_ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------- question sets


@dataclass
class Question:
    id: str
    question: str
    lang: str
    type: str
    gold: list[str]
    answers: dict[str, list[str]]
    filters: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, str]] = field(default_factory=list)
    key_facts: list[str] = field(default_factory=list)


def load_questions(path: Path, limit: int | None = None) -> list[Question]:
    """Read a question set, naming the line and field of any malformed entry."""
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(
            f"Cannot read question set {path}: {exc}.", "Give a UTF-8 JSONL file (see eval/README.md)."
        ) from None
    out: list[Question] = []
    for no, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            for key in ("id", "question", "lang", "type", "gold", "answers"):
                if key not in row:
                    raise ValueError(f"missing field {key!r}")
            if row["type"] not in VALID_TYPES:
                raise ValueError(f"unknown type {row['type']!r}")
            out.append(
                Question(
                    id=str(row["id"]),
                    question=str(row["question"]),
                    lang=str(row["lang"]),
                    type=str(row["type"]),
                    gold=[str(g) for g in row["gold"]],
                    answers={"en": list(row["answers"].get("en", [])), "zh": list(row["answers"].get("zh", []))},
                    filters=dict(row.get("filters") or {}),
                    history=list(row.get("history") or []),
                    key_facts=list(row.get("key_facts") or []),
                )
            )
        except (ValueError, TypeError, AttributeError) as exc:
            raise ConfigError(f"{path}:{no}: bad question line ({exc}).", "See the schema in eval/README.md.") from None
    if not out:
        raise ConfigError(f"Question set {path} is empty.", "Give a JSONL file with one question per line.")
    return out[:limit] if limit else out


def find_corpus_root(repo_root: Path = REPO_ROOT) -> Path | None:
    """The sample corpus folder (holding ``rmrb/``): ``../shared/corpus`` beside the repository."""
    for cand in (repo_root.parent / "shared" / "corpus", Path.cwd().parent / "shared" / "corpus"):
        if (cand / "rmrb").is_dir():
            return cand.resolve()
    return None


def corpus_roots(questions: Sequence[Question], set_path: Path, repo_root: Path = REPO_ROOT) -> list[Path]:
    """Folders to index for a set, inferred from the first component of its gold paths.

    ``seeds/...`` is the repository's seeds folder; ``rmrb/...`` the sample
    corpus. A set whose name contains "corpus" indexes both even if its
    questions (e.g. with --limit) name only seeds, so the distractors stay.
    """
    tops = {g.replace("\\", "/").split("/", 1)[0] for q in questions for g in q.gold}
    if "corpus" in set_path.stem:
        tops.add("rmrb")
    tops.add("seeds")
    roots: list[Path] = []
    for top in sorted(tops):
        if top == "seeds":
            roots.append(repo_root / "seeds")
        elif top == "rmrb":
            corpus = find_corpus_root(repo_root)
            if corpus is None:
                raise ConfigError(
                    f"The question set {set_path.name} needs the sample corpus, but "
                    f"{repo_root.parent / 'shared' / 'corpus' / 'rmrb'} does not exist.",
                    "Put the corpus (rmrb/<month>/*.md) at ../shared/corpus next to the repository, "
                    "or evaluate eval/questions_seeds.jsonl instead.",
                )
            roots.append(corpus / "rmrb")
        else:
            raise ConfigError(
                f"The question set {set_path.name} has gold paths under {top!r}/, which Baokan cannot locate.",
                "Gold paths must start with seeds/ or rmrb/ (see eval/README.md).",
            )
    for r in roots:
        if not r.is_dir():
            raise ConfigError(
                f"The folder {r} needed by {set_path.name} does not exist.", "Restore it or pick another set."
            )
    return roots


# --------------------------------------------------------------------------- judges


class OfflineJudge:
    """ALCE's entailment judge replaced by ``SupportScorer`` with a threshold (no NLI model offline).

    A passage is given in both languages (a hit and its translation), so the
    sentence is scored against each language's text separately and the best
    score counts: an English sentence is compared lexically with English text.
    """

    def __init__(self, scorer: Any, threshold: float = SUPPORT_THRESHOLD) -> None:
        self.scorer = scorer
        self.threshold = threshold
        self.last_score = 0.0
        self._vecs: dict[str, Any] = {}

    def _embed(self, texts: Sequence[str]) -> Any:
        # ALCE's precision check re-scores the same sentence against subsets of
        # the same passages: embedding each text once keeps the eval affordable.
        import numpy as np

        todo = list(dict.fromkeys(t for t in texts if t not in self._vecs))
        if todo:
            if len(self._vecs) > 20_000:
                self._vecs.clear()
            self._vecs.update(zip(todo, self.scorer.embedder.embed(todo), strict=True))
        return np.stack([self._vecs[t] for t in texts])

    def score(self, sentence: str, passages: Sequence[str]) -> float:
        by_lang: dict[str, list[str]] = {"en": [], "zh": []}
        for text in passages:
            for line in text.splitlines():
                if line.strip():
                    by_lang[detect_lang(line)].append(line)
        sources = ["\n".join(v) for v in by_lang.values() if v]
        if not sources:
            return 0.0
        vecs = self._embed([sentence, *sources])
        return float(self.scorer.scores(sentence, sources, vecs[0], vecs[1:]).max())

    def __call__(self, sentence: str, passages: Sequence[str]) -> bool:
        self.last_score = self.score(sentence, passages)
        return self.last_score >= self.threshold


_YES_RE = re.compile(r"^\W*(yes|是|支持|对)", re.I)
_NO_RE = re.compile(r"^\W*(no|否|不)", re.I)
JUDGE_PROMPT = (
    "You check a statement against source passages from a newspaper archive.\n\n"
    "Passages:\n{context}\n\nStatement: {statement}\n\n"
    "Is the statement fully supported by the passages? Answer with one word: yes or no."
)


class LLMJudge:
    """Statement-level faithfulness (RAGAS style) judged by a configured LLM.

    Speaks the OpenAI chat protocol: 'local' runs the bundled GGUF in-process
    through llama.cpp, 'openai' any OpenAI-compatible server from settings.
    Verdicts it cannot parse are None (not judged), not guessed.
    """

    def __init__(self, name: str, settings: Any) -> None:
        self.name = name
        self.settings = settings
        self._local: Any = None
        self._client: Any = None
        if name == "local":
            from rag.llamacpp import LocalLlama

            self._local = LocalLlama(settings.llm_model_path, n_ctx=settings.llm_context_size)
        elif name == "openai":
            import openai

            key = settings.openai_api_key.get_secret_value() if settings.openai_api_key else None
            if not key:
                raise ConfigError("The judge 'openai' needs an API key.", "Set BAOKAN_OPENAI_API_KEY.")
            self._client = openai.OpenAI(
                base_url=settings.openai_base_url, api_key=key, timeout=settings.llm_timeout, max_retries=1
            )
        else:
            from rag.errors import UnknownBackendError

            raise UnknownBackendError("judge", name, ["local", "openai"])

    def verdict(self, statement: str, context: str) -> bool | None:
        messages = [
            {"role": "user", "content": JUDGE_PROMPT.format(context=context[:JUDGE_CONTEXT_CHARS], statement=statement)}
        ]
        if self._local is not None:
            reply = self._local.chat(messages, max_tokens=4, temperature=0.0)
            text = str(reply["choices"][0]["message"]["content"] or "")
        else:
            reply = self._client.chat.completions.create(
                model=self.settings.openai_model, messages=messages, max_tokens=4, temperature=0.0
            )
            text = reply.choices[0].message.content or ""
        if _YES_RE.match(text):
            return True
        if _NO_RE.match(text):
            return False
        return None

    def close(self) -> None:
        if self._local is not None:
            self._local.close()


# --------------------------------------------------------------------------- one question


def _call_answerer(app: Any, q: Question, mode: str, llm: str, flt: SearchFilter | None) -> Answer:
    """Ask through ``ask_llm`` when it exists (history, other backends), else the extractive ``ask``."""
    ask_llm = getattr(app, "ask_llm", None)
    if ask_llm is not None and (llm != "extractive" or q.history):
        params = inspect.signature(ask_llm).parameters
        kwargs: dict[str, Any] = {"llm": llm, "flt": flt, "mode": mode, "history": q.history or None}
        accepts_any = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())
        kwargs = {k: v for k, v in kwargs.items() if accepts_any or k in params}
        result: Answer = ask_llm(q.question, **kwargs)
        return result
    if llm != "extractive":
        raise ConfigError(
            f"The answer backend {llm!r} needs Baokan.ask_llm, which this version lacks.",
            "Evaluate with --llm extractive.",
        )
    answer: Answer = app.ask(q.question, flt=flt, mode=mode)
    return answer


def _passage_text(c: Any) -> str:
    """What a citation shows the reader: its passage in both languages plus the article's
    headline, date, page and author (metadata answers are supported by these)."""
    page = "" if c.page is None else str(c.page)
    meta_en = " | ".join(
        x
        for x in (c.title_en, "People's Daily", c.date.isoformat(), page and f"page {page}", c.author, c.column)
        if x and detect_lang(x) == "en"
    )
    meta_zh = "　".join(
        x for x in (c.title_zh, "人民日报", c.date.isoformat(), page and f"第{page}版", c.author, c.column) if x
    )
    return "\n".join(x for x in (meta_en, c.quote_en, meta_zh, c.quote_zh) if x)


def _retrieved_keys(hits: Iterable[Hit]) -> set[str]:
    keys: set[str] = set()
    for h in hits:
        keys.add(h.passage.key)
        keys.update(p.key for p in h.linked)
    return keys


def _distinct_articles(hits: Sequence[Hit]) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for h in hits:
        p = h.passage
        if p.source_path in seen:
            continue
        seen.add(p.source_path)
        out.append(
            {
                "rank": len(out) + 1,
                "article_id": p.article_id,
                "title": p.title_en or p.title_zh,
                "date": p.date.isoformat(),
                "source_path": p.source_path,
            }
        )
    return out


def evaluate_question(
    app: Any, q: Question, mode: str, llm: str, judge: OfflineJudge, llm_judge: LLMJudge | None = None
) -> dict[str, Any]:
    """One record: retrieval ranks, answer, citations, support and latency (or the error)."""
    rec: dict[str, Any] = {
        "id": q.id,
        "question": q.question,
        "type": q.type,
        "lang": q.lang,
        "mode": mode,
        "llm": llm,
        "gold": q.gold,
        "gold_answers": q.answers,
        "error": None,
        "latency": None,
    }
    if q.filters:
        rec["filters"] = q.filters
    if q.history:
        rec["history"] = q.history
    try:
        flt = make_filter(**q.filters) if q.filters else None
        t0 = time.perf_counter()
        ans = _call_answerer(app, q, mode, llm, flt)
        rec["latency"] = round(time.perf_counter() - t0, 4)
        rec.update(_answer_fields(ans))

        query = ans.standalone_question or q.question
        t1 = time.perf_counter()
        hits = app.search(query, k=RETRIEVAL_K, flt=flt, mode=mode)
        rec["retrieval_latency"] = round(time.perf_counter() - t1, 4)
        arts = _distinct_articles(hits)
        ranks = metrics.article_ranks([a["source_path"] for a in arts], q.gold)
        rec["retrieved"] = arts
        rec["gold_ranks"] = ranks
        rec["hit@1"] = metrics.hit_at(ranks, 1)
        rec["hit@5"] = metrics.hit_at(ranks, 5)
        rec["recall@5"] = metrics.recall_at(ranks, 5)
        rec["recall@10"] = metrics.recall_at(ranks, 10)
        rec["mrr"] = metrics.reciprocal_rank(ranks)
        rec["ndcg@10"] = metrics.ndcg_at(ranks, 10)

        acc = metrics.answer_correct(ans.answer, q.answers, ans.alt_answer) if not ans.refused else False
        rec["accuracy"] = None if not metrics.is_answerable(rec) or not any(q.answers.values()) else float(bool(acc))

        valid = metrics.citation_validity(
            ans.answer, [c.to_json() for c in ans.citations], _retrieved_keys(ans.hits), ans.refused
        )
        rec["citation_validity"] = None if valid is None else float(valid)
        rec.update(_citation_support(ans, judge))
        rec["faithfulness"] = _faithfulness(ans, llm_judge) if llm_judge is not None else None
    except Exception as exc:  # every failure is recorded and counted; the run goes on
        rec["error"] = f"{type(exc).__name__}: {exc}"
    return rec


def _answer_fields(ans: Answer) -> dict[str, Any]:
    return {
        "answer": ans.answer,
        "alt_answer": ans.alt_answer,
        "refused": ans.refused,
        "backend": ans.backend,
        "answer_support": ans.support,
        "standalone_question": ans.standalone_question,
        "answer_error": ans.error,
        "citations": [
            {
                "n": c.n,
                "key": c.key,
                "title": c.title_en or c.title_zh,
                "date": c.date.isoformat(),
                "page": c.page,
                "source_path": c.source_path,
                "quote_en": c.quote_en[:QUOTE_CHARS],
                "quote_zh": c.quote_zh[:QUOTE_CHARS],
            }
            for c in ans.citations
        ],
    }


def _citation_support(ans: Answer, judge: OfflineJudge) -> dict[str, Any]:
    if ans.refused and not metrics.citation_markers(ans.answer):
        return {"citation_recall": None, "citation_precision": None, "support": []}
    sentences = metrics.cited_sentences(ans.answer)
    passages = {c.n: _passage_text(c) for c in ans.citations}
    scores = metrics.alce_citation_scores(sentences, passages, judge)
    return {
        "citation_recall": scores["recall"],
        "citation_precision": scores["precision"],
        "support": scores["sentences"],
    }


def _faithfulness(ans: Answer, llm_judge: LLMJudge) -> float | None:
    if ans.refused:
        return None
    context = "\n\n".join(f"{h.en}\n{h.zh}".strip() for h in ans.hits)
    statements = [s for s, _ in metrics.cited_sentences(ans.answer)] or split_sentences(ans.answer)
    value = metrics.faithfulness([llm_judge.verdict(s, context) for s in statements])
    return None if math.isnan(value) else value


# --------------------------------------------------------------------------- runs


def run_questions(
    app: Any,
    questions: Sequence[Question],
    mode: str,
    llm: str,
    judge: OfflineJudge,
    llm_judge: LLMJudge | None = None,
    progress: bool = True,
) -> list[dict[str, Any]]:
    from tqdm import tqdm

    bar = tqdm(questions, desc=f"{mode}+{llm}", unit="q", file=sys.stderr, dynamic_ncols=True, disable=not progress)
    records = []
    errors = 0
    for q in bar:
        rec = evaluate_question(app, q, mode, llm, judge, llm_judge)
        errors += bool(rec["error"])
        if errors:
            bar.set_postfix(errors=errors)
        records.append(rec)
    return records


def _split_list(value: str | None, default: str, valid: Sequence[str] | None, what: str) -> list[str]:
    items = [x.strip() for x in (value or default).split(",") if x.strip()]
    if valid is not None:
        bad = [x for x in items if x not in valid]
        if bad:
            raise ConfigError(f"Unknown {what} {', '.join(map(repr, bad))}.", f"Use one of: {', '.join(valid)}.")
    return list(dict.fromkeys(items))


def _clean(obj: Any) -> Any:
    """NaN -> None, so the JSON files are strict JSON."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: _clean(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_clean(v) for v in obj]
    return obj


def run_name(mode: str, llm: str) -> str:
    return f"{mode}+{llm}"


@dataclass
class EvalResult:
    out: Path
    summary: dict[str, Any]
    records: dict[str, list[dict[str, Any]]]
    report: Path | None = None


def run_eval(
    set_path: Path,
    out: Path,
    modes: Sequence[str] = ("hybrid",),
    llms: Sequence[str] = ("extractive",),
    limit: int | None = None,
    judge_name: str | None = None,
    progress: bool = True,
    settings_overrides: dict[str, Any] | None = None,
    cache_dir: Path | None = None,
    write_report: bool = True,
) -> EvalResult:
    """Index what the set needs, run every (mode, backend) pair and write records, summary and report."""
    from rag.config import get_settings
    from rag.pipeline import Baokan
    from rag.support import SupportScorer

    questions = load_questions(set_path, limit)
    roots = corpus_roots(questions, set_path)
    cache = cache_dir or out.parent / f".index-{set_path.stem}"
    out.mkdir(parents=True, exist_ok=True)
    settings = get_settings({**(settings_overrides or {}), "data_dir": cache})
    app = Baokan(settings)
    llm_judge: LLMJudge | None = None
    try:
        from rag.cli import _progress

        report = app.ingest(roots, prune=True, progress=_progress("index", "file") if progress else None)
        if report.articles == 0 and app.is_empty():
            raise ConfigError(f"Nothing was indexed from {', '.join(map(str, roots))}.", "Check the folders.")
        judge = OfflineJudge(SupportScorer(app.embedder))
        llm_judge = LLMJudge(judge_name, settings) if judge_name else None
        all_records: dict[str, list[dict[str, Any]]] = {}
        runs: dict[str, Any] = {}
        for llm in llms:
            for mode in modes:
                name = run_name(mode, llm)
                records = [_clean(r) for r in run_questions(app, questions, mode, llm, judge, llm_judge, progress)]
                all_records[name] = records
                path = out / f"records-{name.replace('+', '-')}.jsonl"
                with path.open("w", encoding="utf-8") as fh:
                    for r in records:
                        fh.write(json.dumps(r, ensure_ascii=False) + "\n")
                runs[name] = {
                    "mode": mode,
                    "llm": llm,
                    "records": path.name,
                    "overall": metrics.summarize(records),
                    "by_type": metrics.breakdown(records, "type"),
                    "by_lang": metrics.breakdown(records, "lang"),
                }
        counts = app.index.counts()
    finally:
        if llm_judge is not None:
            llm_judge.close()
        app.close()
    summary = _clean(
        {
            "set": str(set_path),
            "questions": len(questions),
            "created": dt.datetime.now().isoformat(timespec="seconds"),
            "index": {"data_dir": str(cache), "roots": [str(r) for r in roots], **counts},
            "support_threshold": SUPPORT_THRESHOLD,
            "judge": judge_name,
            "runs": runs,
        }
    )
    (out / "summary.json").write_text(json.dumps(summary, ensure_ascii=False, indent=2), encoding="utf-8")
    result = EvalResult(out, summary, all_records)
    if write_report:
        from rag.report import write_report as _write

        result.report = _write(out, summary, all_records)
    return result


SHOWN = (*COMPARE, "latency_p50", "errors")


def format_table(summary: dict[str, Any]) -> str:
    """The headline figures of every run, one row each, for the terminal."""
    names = list(summary["runs"])
    width = max([len(n) for n in names] + [4])
    head = "run".ljust(width) + " " + " ".join(f"{m:>10.10}" for m in SHOWN)
    lines = [head]
    for name in names:
        o = summary["runs"][name]["overall"]
        cells = []
        for m in SHOWN:
            v = o.get(m)
            cells.append(f"{'-':>10}" if v is None else (f"{v:>10d}" if isinstance(v, int) else f"{v:>10.3f}"))
        lines.append(name.ljust(width) + " " + " ".join(cells))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    """``baokan eval``: returns 0, or 1 when every question of some run failed."""
    set_path = Path(args.set) if getattr(args, "set", None) else REPO_ROOT / "eval" / "questions_seeds.jsonl"
    if not set_path.is_file():
        raise ConfigError(
            f"Question set {set_path} not found.", "Give --set eval/questions_seeds.jsonl or another JSONL set."
        )
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if getattr(args, "out", None) else REPO_ROOT / "eval" / "runs" / stamp
    modes = _split_list(getattr(args, "retrieval", None), "hybrid", MODES, "retrieval mode")
    llms = _split_list(getattr(args, "llm", None), "extractive", None, "answer backend")
    limit = getattr(args, "limit", None)
    if limit is not None and limit <= 0:
        raise ConfigError(f"Bad --limit {limit}.", "Give a positive number of questions.")
    result = run_eval(set_path, out, modes, llms, limit=limit, judge_name=getattr(args, "judge", None))
    print(format_table(result.summary))
    print(f"\nRecords and summary: {out}")
    if result.report is not None:
        print(f"Report: {result.report}")
    failed = [n for n, r in result.summary["runs"].items() if r["overall"]["errors"] == r["overall"]["n"]]
    if failed:
        sys.stderr.write(f"baokan eval: every question failed in {', '.join(failed)}; see the records' error field\n")
        return 1
    return 0


__all__ = [
    "SUPPORT_THRESHOLD",
    "BaokanError",
    "EvalResult",
    "OfflineJudge",
    "Question",
    "evaluate_question",
    "load_questions",
    "main",
    "run_eval",
]
