"""The one answer chain the CLI, the UI and the evaluation all call (via
``Baokan.ask_llm`` / ``Baokan.ask_stream``).

LCEL, so the retrieved passages travel next to the answer::

    RunnablePassthrough.assign(context=question | retriever)   # LangChain Documents
        .assign(hits=...)                                     # typed Hits rebuilt from them
        .assign(evidence=...)                                 # best support for the question
        .assign(answer=refuse-if-weak | prompt | model | str) # streamed tokens
        .assign(result=verify)                                # Answer with checked citations

Streaming that chain yields the sources before the first token and the
verified ``Answer`` last. Guard rails, in order: a follow-up question is
rewritten into a standalone one (only when it refers back); weak evidence is
refused before any model call; after generation every ``[n]`` is checked and
repaired (:mod:`rag.verify`); a model that is down, slow or rejects the key
yields a one-line error with the sources still shown, and an extractive
answer when ``llm_fallback`` is on.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from functools import cache
from importlib import resources
from operator import itemgetter
from pathlib import Path
from typing import TYPE_CHECKING, Any

from langchain_core.callbacks import CallbackManagerForRetrieverRun
from langchain_core.documents import Document
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.retrievers import BaseRetriever
from langchain_core.runnables import Runnable, RunnableBranch, RunnableLambda, RunnablePassthrough
from pydantic import ConfigDict

from rag.answer import evidence, refusal
from rag.errors import BaokanError, LLMError
from rag.llm import EXTRACTIVE, LLMBackend, get_backend, llm_error, scrub
from rag.retrieve import Mode, check_question
from rag.text import detect_lang
from rag.tokenize import tokenize
from rag.types import Answer, Citation, Hit, Lang, Passage, SearchFilter
from rag.verify import CitationVerifier, strip_markers

if TYPE_CHECKING:
    from langchain_core.language_models import BaseChatModel

    from rag.pipeline import Baokan

log = logging.getLogger(__name__)

PROMPTS_DIR = Path(str(resources.files("baokan_prompts")))
"""The repository's ``prompts/``, installed as the package ``baokan_prompts`` so that a
wheel install finds them too; ``Settings.prompts_dir`` points elsewhere."""
SOURCE_CHARS = 900
"""Most characters of one source put in the prompt (keeps 5 sources inside a 4k context)."""
HISTORY_TURNS = 6
PROMPT_OVERHEAD_TOKENS = 350
"""Instructions, question and chat template, on top of the sources."""
CHARS_PER_TOKEN: dict[Lang, float] = {"en": 3.5, "zh": 0.45}
"""Conservative: SmolLM2's English byte-level vocabulary spends 2.0 tokens per Chinese character
(measured with llama.cpp's /tokenize on seeds/ text; Qwen-style vocabularies need fewer)."""
_CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\uff00-\uffef]")


def estimate_tokens(text: str) -> float:
    """Tokens a text costs, counted per script: an English question over a Chinese-only
    article puts Chinese text in an English prompt (a 4,122-token prompt came from that)."""
    cjk = len(_CJK.findall(text))
    return cjk / CHARS_PER_TOKEN["zh"] + (len(text) - cjk) / CHARS_PER_TOKEN["en"]


# --- prompts ----------------------------------------------------------------------


@cache
def load_prompt(name: str, lang: Lang, folder: Path | None = None) -> str:
    """A prompt file, ``prompts/{name}_{lang}.txt`` (edit those files, not code)."""
    path = (folder or PROMPTS_DIR) / f"{name}_{lang}.txt"
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise BaokanError(
            f"Prompt file {path} cannot be read: {exc.__class__.__name__}: {exc.strerror or exc}.",
            "Restore it from the repository, or unset BAOKAN_PROMPTS_DIR to use the shipped prompts.",
        ) from None


def _defang(text: str) -> str:
    """Source text cannot close its own block or open a fake one."""
    return re.sub(r"</?\s*source\b", lambda m: m.group(0).replace("<", "‹"), text, flags=re.IGNORECASE)


def _source_text(h: Hit, lang: Lang) -> str:
    text = (h.en if lang == "en" else h.zh) or h.passage.text
    return text if len(text) <= SOURCE_CHARS else text[:SOURCE_CHARS].rstrip() + "…"


def fit_sources(hits: Sequence[Hit], lang: Lang, context_tokens: int, answer_tokens: int) -> list[Hit]:
    """The best-ranked hits whose text fits the model's context (at least one).

    Only these are numbered in the prompt and only these can be cited; the
    rest are still shown as retrieved sources.
    """
    budget = context_tokens - answer_tokens - PROMPT_OVERHEAD_TOKENS
    out: list[Hit] = []
    used = 0.0
    for h in hits:
        p = h.passage
        cost = estimate_tokens(_source_text(h, lang) + p.title_en + p.title_zh) + 25  # tag, date, page
        if out and used + cost > budget:
            break
        out.append(h)
        used += cost
    return out


def format_sources(hits: Sequence[Hit], lang: Lang) -> str:
    """Numbered, delimited source blocks in the question's language where available."""
    blocks = []
    for n, h in enumerate(hits, 1):
        p = h.passage
        text = _source_text(h, lang)
        title = (p.title_en if lang == "en" else p.title_zh) or p.title_en or p.title_zh
        page = f" page={p.page}" if p.page is not None else ""
        blocks.append(
            f'<source n="{n}" date="{p.date.isoformat()}"{page} title="{_defang(title)}">\n{_defang(text)}\n</source>'
        )
    return "\n\n".join(blocks)


def answer_prompt(lang: Lang, folder: Path | None = None) -> ChatPromptTemplate:
    return ChatPromptTemplate.from_messages([("system", load_prompt("answer", lang, folder)), ("human", "{question}")])


# --- retriever as a LangChain component ----------------------------------------------


def hit_to_document(hit: Hit) -> Document:
    """A Document carrying the passage key, its metadata, scores and translations."""
    p = hit.passage
    meta: dict[str, Any] = {
        "key": p.key,
        **p.metadata(),
        "score": hit.score,
        "dense_score": hit.dense_score,
        "bm25_score": hit.bm25_score,
        "dense_rank": hit.dense_rank,
        "bm25_rank": hit.bm25_rank,
        "linked": [{"key": q.key, "text": q.text, "metadata": q.metadata()} for q in hit.linked],
    }
    return Document(page_content=p.text, metadata=meta, id=p.key)


def document_to_hit(doc: Document) -> Hit:
    m = doc.metadata
    return Hit(
        passage=Passage.from_metadata(m["key"], doc.page_content, m),
        score=float(m.get("score", 0.0)),
        linked=[Passage.from_metadata(q["key"], q["text"], q["metadata"]) for q in m.get("linked", [])],
        dense_score=m.get("dense_score"),
        bm25_score=m.get("bm25_score"),
        dense_rank=m.get("dense_rank"),
        bm25_rank=m.get("bm25_rank"),
    )


class BaokanRetriever(BaseRetriever):
    """The hybrid retriever (dense + BM25, fused, grouped by article) as a LangChain retriever."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    app: Any
    """The ``Baokan`` whose ``search`` runs (typed Any: pydantic cannot validate it)."""
    k: int | None = None
    flt: SearchFilter | None = None
    mode: Mode | None = None

    def _get_relevant_documents(self, query: str, *, run_manager: CallbackManagerForRetrieverRun) -> list[Document]:
        hits: list[Hit] = self.app.search(query, k=self.k, flt=self.flt, mode=self.mode)
        return [hit_to_document(h) for h in hits]


# --- follow-up questions ----------------------------------------------------------------

_EN_REF = re.compile(
    r"\b(he|she|it|they|him|her|his|hers|its|their|theirs|them|this|that|these|those|there|then|"
    r"what about|how about|the same|the latter|the former)\b",
    re.IGNORECASE,
)
_ZH_REF = re.compile(
    r"他|她|它|这个|那个|这些|那些|这家|那家|这位|那位|这里|那里|此|(?<!应)该|其(?!他|中|实)|呢[？?]?$"
)
_EN_WORD = re.compile(r"[A-Za-z][A-Za-z'\-]*|\d[\d,.]*")
_EN_FILLER = frozenset(
    re.findall(
        r"\w+",
        "what when where which who whom whose why how many much did does do was were is are the a an of in on at "
        "to for and or by with from about after before during into put forward past few days",
    )
)


def refers_back(question: str) -> bool:
    """True if the question leans on earlier turns.

    Cues: very short; opens with "what about" / "and"; a pronoun or
    demonstrative in a question that names nothing itself ("its" in "the
    Tianjin Vehicle Factory and its workers" refers inside the question, so
    a question with its own proper name or a long Chinese question is left alone:
    rewrites of standalone questions drift).
    """
    if detect_lang(question) == "zh":
        core = re.sub(r"[\s？?。！!，,]", "", question)
        if len(core) <= 5 or re.search(r"呢[？?]?$", question) or re.match(r"^(那|这|他|她|它|那么)", core):
            return True
        return bool(_ZH_REF.search(question)) and len(core) <= 15
    words = _EN_WORD.findall(question)
    if len(words) <= 3 or re.match(r"^\s*(what about|how about|and\b)", question, re.IGNORECASE):
        return True
    names = [w for w in words[1:] if w[0].isupper() or w[0].isdigit()]
    return bool(_EN_REF.search(question)) and not names


def _user_turns(history: Sequence[Mapping[str, Any]] | None) -> list[str]:
    out = []
    for turn in history or []:
        if str(turn.get("role", "")) == "user" and isinstance(turn.get("content"), str) and turn["content"].strip():
            out.append(str(turn["content"]).strip())
    return out


def keywords(text: str, limit: int = 8) -> list[str]:
    """Salient words of a turn: names, numbers and content words, in order."""
    if detect_lang(text) == "zh":
        import jieba

        stop = set(tokenize("的 了 是 在 和 有 多少 哪 什么 哪一天 哪些 如何 怎样 为什么 谁 吗 呢 最近 今年"))
        words = [w for w in jieba.lcut(text) if len(w) >= 2 and w not in stop and not _ZH_REF.search(w)]
        words = [w for w in words if tokenize(w)]
    else:
        words = [w for w in _EN_WORD.findall(text) if w.lower() not in _EN_FILLER and (len(w) > 3 or w[0].isupper())]
        words = [w for w in words if not _EN_REF.fullmatch(w)]
    return list(dict.fromkeys(words))[:limit]


def heuristic_rewrite(question: str, history: Sequence[Mapping[str, Any]] | None) -> str:
    """Append the salient words of the previous user turn(s) (no LLM needed)."""
    turns = _user_turns(history)
    if not turns or not refers_back(question):
        return question
    sources = [turns[-1]]
    if len(turns) > 1 and refers_back(turns[-1]):
        sources.insert(0, turns[-2])  # the previous turn was itself a follow-up
    have = {w.lower() for w in keywords(question, 50)}
    extra = [w for src in sources for w in keywords(src) if w.lower() not in have]
    extra = list(dict.fromkeys(extra))
    if not extra:
        return question
    sep = "" if detect_lang(question) == "zh" else " "
    return f"{question}{sep}({(' ' if sep else '，').join(extra)})"


def _history_text(history: Sequence[Mapping[str, Any]]) -> str:
    lines = []
    for turn in list(history)[-HISTORY_TURNS:]:
        role = "User" if turn.get("role") == "user" else "Assistant"
        content = " ".join(str(turn.get("content", "")).split())[:400]
        lines.append(f"{role}: {content}")
    return "\n".join(lines)


def rewrite_question(
    question: str,
    history: Sequence[Mapping[str, Any]] | None,
    model: BaseChatModel | None = None,
    prompts_dir: Path | None = None,
) -> str:
    """The standalone form of ``question``: unchanged unless it refers back to ``history``.

    With a model, the rewrite prompt; its output is accepted only if it still
    shares words with the question (small models sometimes answer instead of
    rewriting). Any failure falls back to the heuristic rewrite.
    """
    if not _user_turns(history) or not refers_back(question):
        return question
    if model is not None:
        lang = detect_lang(question)
        template = ChatPromptTemplate.from_messages([("human", load_prompt("rewrite", lang, prompts_dir))])
        try:
            out = (template | model | StrOutputParser()).invoke(
                {"history": _history_text(history or []), "question": question}
            )
        except Exception as exc:  # a failed rewrite must not fail the question
            log.warning("follow-up rewrite failed, using the heuristic: %s", scrub(str(exc))[:200])
        else:
            text = out.strip().splitlines()[0].strip().strip("\"'“”") if out.strip() else ""
            text = re.sub(r"^(standalone question|独立问题)\s*[:：]\s*", "", text, flags=re.IGNORECASE)
            if text and len(text) <= 3 * len(question) + 200 and set(tokenize(text)) & set(tokenize(question)):
                return text
    return heuristic_rewrite(question, history)


# --- the chain ----------------------------------------------------------------------------


def build_chain(
    app: Baokan,
    backend: LLMBackend,
    model: BaseChatModel | None,
    *,
    k: int | None = None,
    flt: SearchFilter | None = None,
    mode: Mode | None = None,
) -> Runnable[dict[str, Any], dict[str, Any]]:
    """The grounded chain. Input ``{"question", "standalone_question"}``; output adds
    ``context`` (Documents), ``hits``, ``evidence``, ``answer`` (text) and ``result`` (Answer).

    ``model`` None: the extractive answerer writes the answer (no LLM).
    """
    retriever = BaokanRetriever(app=app, k=k, flt=flt, mode=mode)
    scorer = app.extractive.scorer
    min_ev = app.settings.min_evidence
    name = backend.name

    def lang_of(x: dict[str, Any]) -> Lang:
        return detect_lang(x["question"])

    base = RunnablePassthrough.assign(context=itemgetter("standalone_question") | retriever).assign(
        hits=lambda x: [document_to_hit(d) for d in x["context"]]
    )
    if model is None:

        def extract(x: dict[str, Any]) -> Answer:
            ans = app.extractive.answer(x["standalone_question"], x["hits"])
            ans.question, ans.lang = x["question"], lang_of(x)
            if ans.refused:
                ans.answer = refusal(ans.lang, nothing_found=not x["hits"])
            return ans

        return base.assign(result=extract).assign(
            evidence=lambda x: x["result"].support, answer=lambda x: x["result"].answer
        )

    def weak(x: dict[str, Any]) -> bool:
        return not x["hits"] or x["evidence"] < min_ev

    def refuse_text(x: dict[str, Any]) -> str:
        return refusal(lang_of(x), nothing_found=not x["hits"])

    def messages(x: dict[str, Any]) -> Any:
        lang = lang_of(x)
        # The standalone form: the model sees no history, so "his factory" must be spelled out.
        return answer_prompt(lang, app.settings.prompts_dir).invoke(
            {"sources": format_sources(x["given"], lang), "question": x["standalone_question"]}
        )

    generate: Runnable[dict[str, Any], str] = RunnableBranch(
        (weak, RunnableLambda(refuse_text)),
        RunnableLambda(messages) | model | StrOutputParser(),
    )
    verifier = CitationVerifier(scorer, min_ev)

    def finish(x: dict[str, Any]) -> Answer:
        lang = lang_of(x)
        if weak(x):
            ans = Answer(x["question"], x["answer"], True, [], x["hits"], name, lang=lang)
            ans.support = x["evidence"]
            return ans
        ans = verifier.answer(x["question"], x["answer"], x["given"], name, lang)
        ans.hits = x["hits"]  # every retrieved source stays visible, cited or not
        return ans

    settings = app.settings
    return (
        base.assign(
            given=lambda x: fit_sources(x["hits"], lang_of(x), settings.llm_context_size, settings.llm_max_tokens)
        )
        .assign(evidence=lambda x: evidence(x["hits"], x["standalone_question"], scorer) if x["hits"] else 0.0)
        .assign(answer=generate)
        .assign(result=finish)
    )


def _source_citations(hits: Sequence[Hit]) -> list[Citation]:
    return [Citation.from_hit(n, h) for n, h in enumerate(hits, 1)]


def ask_stream(
    app: Baokan,
    question: str,
    k: int | None = None,
    flt: SearchFilter | None = None,
    llm: str | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    mode: Mode | None = None,
) -> Iterator[dict[str, Any]]:
    """Events: ``sources`` (before any token), ``token`` (0+), ``answer`` (last, verified).

    Raises only for bad input (``QuestionError``, ``UnknownBackendError``,
    ``FilterError``) and retrieval failures; model failures end in an
    ``answer`` event whose ``Answer.error`` says what went wrong.
    """
    settings = app.settings
    question = check_question(question)
    lang = detect_lang(question)
    backend = get_backend(llm, settings)
    model: BaseChatModel | None = None
    error: LLMError | None = None
    if backend.name != EXTRACTIVE:
        try:
            model = backend.chat_model()
        except Exception as exc:  # a model that cannot start still leaves the sources
            error = llm_error(exc, backend.name, settings)
    standalone = rewrite_question(question, history, model, settings.prompts_dir)
    inputs = {"question": question, "standalone_question": standalone}

    hits: list[Hit] | None = None
    given: list[Hit] | None = None
    parts: list[str] = []
    result: Answer | None = None
    if error is not None:
        hits = app.search(standalone, k=k, flt=flt, mode=mode)
        yield {"type": "sources", "hits": hits, "standalone_question": standalone}
    else:
        chain = build_chain(app, backend, model, k=k, flt=flt, mode=mode)
        stream = chain.stream(inputs)
        try:
            for chunk in stream:
                if "hits" in chunk:
                    hits = chunk["hits"]
                    yield {"type": "sources", "hits": hits, "standalone_question": standalone}
                if "given" in chunk:
                    given = chunk["given"]
                if chunk.get("answer"):
                    parts.append(chunk["answer"])
                    yield {"type": "token", "text": chunk["answer"]}
                if "result" in chunk:
                    result = chunk["result"]
        except Exception as exc:
            if hits is None or (isinstance(exc, BaokanError) and not isinstance(exc, LLMError)):
                raise  # retrieval failed: nothing to show, the caller reports it
            error = llm_error(exc, backend.name, settings)
            log.warning("%s", error)
        finally:
            close = getattr(stream, "close", None)
            if close is not None:
                close()  # stop the model's HTTP stream now, not at garbage collection

    if result is None:
        assert hits is not None
        result = _after_failure(
            app, question, standalone, hits, given or hits, "".join(parts), backend.name, lang, error
        )
        if not parts and result.answer:
            yield {"type": "token", "text": result.answer}
    if standalone != question:
        result.standalone_question = standalone
    yield {"type": "answer", "answer": result}


def _after_failure(
    app: Baokan,
    question: str,
    standalone: str,
    hits: list[Hit],
    given: list[Hit],
    partial: str,
    backend: str,
    lang: Lang,
    error: LLMError | None,
) -> Answer:
    """The answer when the model failed: partial text kept, or the fallback, or sources only."""
    msg = f"{error.message} {error.fix}".strip() if error else "The model stopped without an answer."
    if partial.strip():
        verifier = CitationVerifier(app.extractive.scorer, app.settings.min_evidence)
        ans = verifier.answer(question, partial, given, backend, lang)
        ans.hits = hits
        if ans.refused:  # nothing checkable yet: keep the words, cite nothing
            ans = Answer(question, strip_markers(partial), False, [], hits, backend, support=0.0, lang=lang)
        ans.incomplete, ans.error = True, msg
        return ans
    if app.settings.llm_fallback:
        ans = app.extractive.answer(standalone, hits)
        ans.question, ans.lang = question, lang
        if ans.refused:
            ans.answer = refusal(lang, nothing_found=not hits)
        ans.error = f"{msg} Answered extractively instead."
        return ans
    return Answer(question, "", True, _source_citations(hits), hits, backend, error=msg, lang=lang)


def ask(
    app: Baokan,
    question: str,
    k: int | None = None,
    flt: SearchFilter | None = None,
    llm: str | None = None,
    history: Sequence[Mapping[str, Any]] | None = None,
    mode: Mode | None = None,
) -> Answer:
    """The same chain as :func:`ask_stream`, returning only the final Answer."""
    answer: Answer | None = None
    for event in ask_stream(app, question, k=k, flt=flt, llm=llm, history=history, mode=mode):
        if event["type"] == "answer":
            answer = event["answer"]
    assert answer is not None
    return answer
