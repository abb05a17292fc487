"""The offline default answerer: cited sentences picked from the retrieved passages.

Honest by construction: every sentence of the answer is a sentence of a cited
passage, copied verbatim; when the best evidence is weak it refuses with a
fixed "the archive does not say" before composing anything. Answers come in
the question's language where the sources allow (the translation or the
original is kept beside it).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, replace

import numpy as np

from rag.embed import Embedder
from rag.support import SupportScorer
from rag.text import detect_lang, split_sentences
from rag.types import Answer, Citation, Hit, Lang, Passage

REFUSAL = {
    "en": "The archive does not say: none of the indexed articles answers this question.",
    "zh": "档案中没有相关记载：已收录的文章都没有回答这个问题。",
}
NOTHING_FOUND = {
    "en": "The archive does not say: no article matches this question and filters.",
    "zh": "档案中没有相关记载：没有符合该问题和筛选条件的文章。",
}
_META_INTENT = {
    "en": re.compile(
        r"\b(who (wrote|authored|reported|wrote up)|author|byline|reporter of|(which|what) page|page number"
        r"|(what|which) (date|day)\b.*\b(publish|print|run|appear)|when was\b.*\b(published|printed|run)"
        r"|(which|what) column)\b",
        re.IGNORECASE,
    ),
    "zh": re.compile(
        r"作者|谁写|撰写|署名|第几版|哪一版|哪个版|哪版|版面|哪一天(刊登|发表|见报)|刊登(于|在)?(哪|什么)|发表(于|在)?(哪|什么)|哪个专栏|什么专栏"
    ),
}
MAX_SENTENCES = 3
HITS_CONSIDERED = 8


@dataclass
class _Sent:
    text: str
    lang: Lang
    passage: Passage
    hit: int


def refusal(lang: Lang, nothing_found: bool = False) -> str:
    return (NOTHING_FOUND if nothing_found else REFUSAL)[lang]


def evidence(hits: list[Hit], question: str, scorer: SupportScorer) -> float:
    """Best support any retrieved sentence gives the question (0..1)."""
    sents = _sentences(hits)
    if not sents:
        return 0.0
    return float(scorer.scores(question, [s.text for s in sents]).max())


def _sentences(hits: list[Hit]) -> list[_Sent]:
    out: list[_Sent] = []
    seen: set[str] = set()
    for h, hit in enumerate(hits[:HITS_CONSIDERED]):
        for p in (hit.passage, *hit.linked):
            if p.key in seen:
                continue
            seen.add(p.key)
            out.extend(_Sent(s, p.lang, p, h) for s in split_sentences(p.text, p.lang) if len(s) > 3)
    return out


class ExtractiveAnswerer:
    """Answers with the best-supported source sentences, or refuses."""

    name = "extractive"

    def __init__(self, embedder: Embedder, min_evidence: float = 0.35) -> None:
        self.embedder = embedder
        self.scorer = SupportScorer(embedder)
        self.min_evidence = min_evidence

    def answer(self, question: str, hits: list[Hit]) -> Answer:
        lang = detect_lang(question)
        if not hits:
            return Answer(question, refusal(lang, nothing_found=True), True, [], hits, self.name, lang=lang)
        sents = _sentences(hits)
        if not sents:
            return Answer(question, refusal(lang), True, [], hits, self.name, lang=lang)
        vecs = self.embedder.embed([question] + [s.text for s in sents])
        qv, sv = vecs[0], vecs[1:]
        scores = self.scorer.scores(question, [s.text for s in sents], qv, sv)
        best = float(scores.max())
        if best < self.min_evidence:
            ans = Answer(question, refusal(lang), True, [], hits, self.name, lang=lang)
            ans.support = best
            return ans

        if _META_INTENT[lang].search(question):
            return self._metadata_answer(question, hits, lang, best)

        order = np.argsort(-scores)
        chosen: list[int] = []
        used_units: set[str] = set()
        for i in order:
            if len(chosen) >= MAX_SENTENCES or scores[i] < max(self.min_evidence, 0.85 * best):
                break
            s = sents[i]
            unit = _unit(s.passage)
            if any(_same_text(s.text, sents[j].text) for j in chosen):
                continue
            if unit in used_units and s.lang != lang:
                continue  # its translation is already in the answer
            chosen.append(int(i))
            used_units.add(unit)

        # Keep source order within the answer: it reads like the article.
        chosen.sort(key=lambda i: (sents[i].hit, sents[i].passage.position, i))
        citations: dict[str, Citation] = {}
        parts: list[str] = []
        alt_parts: list[str] = []
        for i in chosen:
            s = sents[i]
            twin = self._twin(i, sents, sv, lang)
            shown = twin if twin is not None and s.lang != lang else i
            other = i if shown != i else twin
            unit = _unit(s.passage)
            if unit not in citations:
                citations[unit] = Citation.from_hit(len(citations) + 1, hits[s.hit], s.passage)
            cit = citations[unit]
            hl: dict[str, str] = {sents[shown].lang: sents[shown].text}
            if other is not None:
                hl[sents[other].lang] = sents[other].text
            citations[unit] = _with_highlight(cit, hl)
            parts.append(f"{sents[shown].text} [{cit.n}]")
            if other is not None:
                alt_parts.append(f"{sents[other].text} [{cit.n}]")
        text = " ".join(parts) if lang == "en" else "".join(parts)
        alt = (" " if lang == "zh" else "").join(alt_parts)
        return Answer(
            question=question,
            answer=text,
            refused=False,
            citations=list(citations.values()),
            hits=hits,
            backend=self.name,
            support=best,
            alt_answer=alt,
            lang=lang,
        )

    def _metadata_answer(self, question: str, hits: list[Hit], lang: Lang, best: float) -> Answer:
        """Who wrote it / which page / which day: answered from the cited article's header.

        The claim is backed by the citation's own title, date, page and byline,
        which the user sees beside it.
        """
        hit = hits[0]
        p = hit.passage
        cit = Citation.from_hit(1, hit, p)
        page = str(p.page) if p.page is not None else "?"
        if lang == "zh":
            author = f"作者：{p.author}" if p.author else "未署名"
            column = f"，专栏“{p.column}”" if p.column else ""
            text = f"《{p.title_zh or p.title_en}》刊登于{p.date.isoformat()}《人民日报》第{page}版{column}，{author}。 [1]"
            alt = f"“{p.title_en}” was published on {p.date.isoformat()}, page {page}." if p.title_en else ""
        else:
            author = f"byline: {p.author}" if p.author else "no byline is given"
            column = f", column “{p.column}”" if p.column else ""
            title = p.title_en or p.title_zh
            text = (
                f"“{title}” appeared in the People's Daily on {p.date.isoformat()}, page {page}{column}; {author}. [1]"
            )
            alt = f"《{p.title_zh}》{p.date.isoformat()} 第{page}版" if p.title_zh else ""
        return Answer(question, text, False, [cit], hits, self.name, support=best, alt_answer=alt, lang=lang)

    @staticmethod
    def _twin(i: int, sents: list[_Sent], sv: np.ndarray, lang: Lang) -> int | None:
        """The sentence in the linked passage(s) that translates sentence ``i``."""
        s = sents[i]
        links = set(s.passage.links)
        cand = [j for j, t in enumerate(sents) if t.passage.key in links]
        if not cand:
            return None
        sims = sv[cand] @ sv[i]
        return cand[int(np.argmax(sims))]


def _unit(p: Passage) -> str:
    """One key for a passage and its translation (they are one citation)."""
    return min((p.key, *p.links))


def _same_text(a: str, b: str) -> bool:
    return a.strip() == b.strip()


def _with_highlight(c: Citation, hl: Mapping[str, str]) -> Citation:
    en = " ".join(x for x in (c.highlight_en, hl.get("en", "")) if x and x not in c.highlight_en)
    zh = "".join(x for x in (c.highlight_zh, hl.get("zh", "")) if x and x not in c.highlight_zh)
    return replace(c, highlight_en=en or c.highlight_en, highlight_zh=zh or c.highlight_zh)
