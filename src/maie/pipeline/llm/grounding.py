"""Evidence for every summary claim: each leaf of a summary matched against the transcript segments.

Method (lexical, because it must run on every model and every machine, and be explainable in the
UI): text is NFC-normalised and casefolded (diacritics kept: in Vietnamese they tell words apart),
split into words, and English words get a light suffix stemmer (``-s``, ``-es``, ``-ies``, ``-ed``,
``-ing``) applied to both sides. English and Vietnamese function words are dropped; what remains are
a leaf's *content words*. A leaf is split into sentences, and each sentence is matched against every
window of up to ``MAX_WINDOW`` adjacent segments:

* **coverage**: the share of the sentence's content words found in the window (exactly after
  stemming, or with ``fuzz.ratio`` >= ``FUZZY_WORD`` for words of 5+ letters, which absorbs
  inflection the stemmer misses and ASR spelling variants);
* **hard words** (the rule): every number (digits, English/Vietnamese number words, dates) and every
  name (a capitalised word not at a sentence start; at a sentence start or in a Title Case leaf, a
  capitalised word the tokenizer finds rare in lower case, see ``_rare_word``; letter-digit labels
  such as ``S1``) must occur in the window.

A sentence is supported when all its hard words occur and coverage >= ``MIN_COVERAGE``; a leaf when
all its sentences are. A leaf equal (or nearly, ``fuzz.ratio`` >= ``COPY_SIMILARITY``) to a leaf of
the template's example is a *copy*: it is supported only with coverage >= ``COPIED_MIN_COVERAGE``,
i.e. when the transcript itself says it. The reported score is ``0.75 * coverage + 0.25 *
fuzz.partial_ratio`` of the sentence against its window (0..1, the weakest sentence of a leaf).

Checked leaves: strings and numbers, and each string or number in a list. Not checked (not counted
in the total): booleans, nulls (a null means "not said", which is what an honest summary writes)
and strings fixed by an ``enum`` in the schema (a category such as ``"mixed"`` is a judgement over
the whole transcript, not words that could be found in it).

Why not embeddings or an NLI model: the default deployment runs on a CPU with a 135M-parameter LLM;
a second model would cost more than the summary itself, and lexical evidence is what a person can
verify by clicking the segment. It under-credits deep paraphrase (a leaf in different words is
reported unsupported, never the reverse for names and numbers), which is the safe direction.
"""

from __future__ import annotations

import contextlib
import functools
import re
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rapidfuzz import fuzz, process

from maie.pipeline.context import TaskContext
from maie.schemas import SummaryEvidence

MAX_WINDOW = 3
"""Most adjacent segments that together support one sentence of a leaf."""
MIN_COVERAGE = 0.5
"""Share of a sentence's content words that must occur in its window."""
COPIED_MIN_COVERAGE = 0.8
"""The same for a leaf copied from the template's example: the transcript must nearly say it."""
FUZZY_WORD = 85
"""``fuzz.ratio`` at which two words of 5+ letters count as the same word."""
COPY_SIMILARITY = 90
"""``fuzz.ratio`` of normalised texts at which a leaf counts as copied from the example."""
TITLE_CASE_WORDS = 3
"""A leaf of this many words or more, all capitalised, is Title Case: its capitals mark no names."""

_WORD = re.compile(r"\d+(?:[.,]\d+)+|[^\W_]+")
_SENTENCE_END = re.compile(r"(?<=[.!?…;])\s+|\n+")
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_ORDINAL_DIGITS = re.compile(r"^(\d+)(?:st|nd|rd|th)$")


def _wordset(text: str) -> frozenset[str]:
    return frozenset(text.split())


_TITLE_CONNECTORS = _wordset("a an and as at but by for from in into nor of on or per the to vs via with")


STOPWORDS_EN = _wordset(
    """a about above after again against all also am an and any are as at be because been before being
    below between both but by can could did do does doing down during each else even ever every few for
    from further had has have having he her here hers herself him himself his how i if in into is it its
    itself just let lets me more most much must my myself no nor not now of off oh ok okay on once only or
    other our ours ourselves out over own per quite rather really same shall she should so some such than
    that the their theirs them themselves then there these they this those though through thus to too
    under until up upon us very was we well were what when where which while who whom whose why will with
    would yes yet you your yours yourself yourselves um uh like get got go going gone know think say said
    says tell told thing things way one's s t d ll m re ve"""
)
STOPWORDS_VI = _wordset(
    """và là của có được cho với các những trong này đó thì mà không đã sẽ đang rất cũng như để khi về từ
    ra vào lên đến tại bị lại còn nên vì nếu nhưng hay hoặc thế vậy đây kia ấy nào gì ai sao tôi ta chúng
    mình họ nó bạn ông bà em ở theo cùng mọi việc điều cái chiếc con nhiều ít hơn nhất đều chỉ vẫn đều
    rằng thật lắm quá à ạ ừ ơi nhé nhỉ thôi luôn ngay trên dưới sau trước giữa qua bởi do"""
)


_UNITS_EN = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7, "eight": 8,
    "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13, "fourteen": 14, "fifteen": 15,
    "sixteen": 16, "seventeen": 17, "eighteen": 18, "nineteen": 19, "first": 1, "second": 2, "third": 3,
    "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7, "eighth": 8, "ninth": 9, "tenth": 10,
    "eleventh": 11, "twelfth": 12, "thirteenth": 13, "fourteenth": 14, "fifteenth": 15, "sixteenth": 16,
    "seventeenth": 17, "eighteenth": 18, "nineteenth": 19, "twentieth": 20, "thirtieth": 30,
}  # fmt: skip
_TENS_EN = {"twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60, "seventy": 70, "eighty": 80,
            "ninety": 90}  # fmt: skip
_SCALES = {"hundred": 100, "thousand": 1000, "million": 1_000_000, "billion": 1_000_000_000, "trăm": 100,
           "nghìn": 1000, "ngàn": 1000, "triệu": 1_000_000, "tỷ": 1_000_000_000}  # fmt: skip
_UNITS_VI = {"một": 1, "hai": 2, "ba": 3, "bốn": 4, "tư": 4, "năm": 5, "lăm": 5, "sáu": 6, "bảy": 7,
             "tám": 8, "chín": 9, "mười": 10, "mươi": 10}  # fmt: skip
_MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
           "november", "december"]  # fmt: skip
_NUMBER_WORDS = {**_UNITS_EN, **_TENS_EN, **_UNITS_VI}
# "first"/"second" etc. are numbers only as dates and counts; as hard words they would make every
# "first point" unsupported, so ordinals are recognised but not required (see _numbers).
_SOFT_NUMBER_WORDS = frozenset(
    {"first", "second", "third", "one", "năm", "một", "ba", "tư"}
)  # also everyday words: "one of", "năm" (year), "ba" (father)


@dataclass(frozen=True)
class Unit:
    """A piece of the transcript evidence can point at: an ASR segment, or a line/sentence of
    given text (``start``/``end`` None: text has no times)."""

    index: int
    text: str
    start: float | None
    end: float | None
    speaker: str | None = None


@dataclass(frozen=True)
class Grounding:
    evidence: list[SummaryEvidence] = field(default_factory=list)

    @property
    def total(self) -> int:
        return len(self.evidence)

    @property
    def supported(self) -> int:
        return sum(e.supported for e in self.evidence)

    @property
    def ratio(self) -> float:
        return round(self.supported / self.total, 4) if self.total else 1.0

    @property
    def unsupported(self) -> list[str]:
        return [e.path for e in self.evidence if not e.supported]

    @property
    def copied(self) -> list[str]:
        return [e.path for e in self.evidence if e.copied]

    def summary(self) -> dict[str, Any]:
        """``results.summary_grounding``."""
        return {
            "supported": self.supported,
            "total": self.total,
            "ratio": self.ratio,
            "unsupported": self.unsupported,
            "copied_from_example": self.copied,
        }


# -- text ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Token:
    raw: str
    key: str
    """Casefolded and stemmed: what is compared."""
    sentence_start: bool


def _normalise(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _stem(word: str) -> str:
    """Light English suffix stripping, the same on both sides (``discusses``, ``discussed``,
    ``discussing`` -> ``discuss``; ``planned`` -> ``plan``; ``releases`` -> ``releas``). Other scripts
    and short words are left alone."""
    if not word.isascii() or not word.isalpha() or len(word) <= 4:
        return word
    stem = word
    if word.endswith("ies"):
        stem = word[:-3] + "y"
    elif word.endswith(("sses", "ches", "shes", "xes", "zes")):
        stem = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        stem = word[:-1]
    elif word.endswith("ing"):
        stem = word[:-3]
    elif word.endswith("ed"):
        stem = word[:-2]
    if len(stem) < 3:
        return word
    if stem != word and len(stem) >= 4 and stem[-1] == stem[-2] and stem[-1] not in "lsz":
        stem = stem[:-1]  # planned, planning -> plan
    if len(stem) >= 5 and stem.endswith("e"):
        stem = stem[:-1]  # introduce, introduces, introduced -> introduc
    return stem


META_WORDS = frozenset(
    _stem(w)
    for w in _wordset(
        """speaker speakers discuss discussion talk conversation mention meeting introduce introduction
        describe explain share participant topic summary overview cover
        thảo luận cuộc họp người nói đề cập chia sẻ giới thiệu"""
    )
)
"""Words about the conversation rather than its content ("the speakers discuss ..."): a summary says
them, a transcript rarely does, so they are not content words."""
STOPWORDS = STOPWORDS_EN | STOPWORDS_VI | META_WORDS


def _stopword(token: _Token) -> bool:
    return token.key in STOPWORDS or token.raw.casefold() in STOPWORDS


def _tokens(text: str) -> list[_Token]:
    out: list[_Token] = []
    text = _normalise(text)
    for sentence in _SENTENCE_END.split(text):
        first = True
        for m in _WORD.finditer(sentence):
            raw = m.group()
            out.append(_Token(raw, _stem(raw.casefold()), first))
            first = False
    return out


def _numbers(tokens: list[_Token], text: str, *, required: bool) -> set[int]:
    """Number values in the text: digits (``4th``, ``2024-03-04``), and runs of number words
    (``twenty five`` = 25, ``hai mươi`` = 20). ``required``: leave out the words that are also
    everyday words (``one``, ``first``, ``năm``), which a leaf may say without meaning a number."""
    values: set[int] = set()
    for m in _ISO_DATE.finditer(text):
        values.update(int(g) for g in m.groups())
    run: list[str] = []

    def flush() -> None:
        if not run:
            return
        if not (required and len(run) == 1 and run[0] in _SOFT_NUMBER_WORDS):
            values.add(_words_value(run))
        run.clear()

    last_digits: int | None = None  # "50 triệu", "45 thousand": the digits times the scale word
    for tok in tokens:
        word = tok.raw.casefold()
        if last_digits is not None and word in _SCALES and not run:
            values.discard(last_digits)
            last_digits *= _SCALES[word]
            values.add(last_digits)
            continue
        last_digits = None
        if word.replace(".", "").replace(",", "").isdigit():
            flush()
            digits = word.replace(",", "") if word.count(",") and "." not in word else word
            with contextlib.suppress(ValueError):  # "1.2.3": not one number
                last_digits = int(float(digits)) if "." in digits else int(digits)
                values.add(last_digits)
            continue
        ordinal = _ORDINAL_DIGITS.match(word)
        if ordinal:
            flush()
            values.add(int(ordinal.group(1)))
            continue
        if word in _NUMBER_WORDS or (run and word in _SCALES):
            run.append(word)
        else:
            flush()
    flush()
    return values


def _words_value(words: list[str]) -> int:
    total, current = 0, 0
    for w in words:
        if w in _SCALES:
            current = max(current, 1) * _SCALES[w]
            if _SCALES[w] >= 1000:
                total, current = total + current, 0
        elif w == "mươi":  # "hai mươi" = 2 x 10
            current = max(current, 1) * 10
        else:
            current += _NUMBER_WORDS[w]
    return total + current


def _is_capitalised(raw: str) -> bool:
    return raw[:1].isupper()


def _names(tokens: list[_Token]) -> set[str]:
    """Keys of the words that name someone or something: capitalised words not at a sentence start,
    capitalised words the tokenizer finds rare in lower case (``_rare_word``: at a sentence start, and
    everywhere in a Title Case leaf, whose capitals say nothing), and letter-digit labels (``S1``)."""
    content = [t for t in tokens if not _stopword(t) and not t.raw.isdigit()]
    names: set[str] = {t.key for t in content if any(c.isdigit() for c in t.raw) and any(c.isalpha() for c in t.raw)}
    words = [t for t in content if t.raw.isalpha()]
    capitalised = [t for t in words if _is_capitalised(t.raw)]
    title_case = (
        len(words) >= TITLE_CASE_WORDS
        and len(capitalised) == len(words)
        # a heading lowercases only connectors; "Diane and Mark are from Chicago" is a sentence
        and all(t.raw.casefold() in _TITLE_CONNECTORS for t in tokens if not _is_capitalised(t.raw))
    )
    for t in capitalised:
        if (not t.sentence_start and not title_case) or _rare_word(t.raw):
            names.add(t.key)
    return names


@functools.lru_cache(maxsize=1)
def _vocab() -> Any | None:
    """The bundled SmolLM2 GGUF's tokenizer (vocabulary only: 0.3 s, no weights), or None."""
    try:
        import llama_cpp

        from maie.pipeline.llm.embedded import bundled_gguf_path

        return llama_cpp.Llama(str(bundled_gguf_path()), vocab_only=True, verbose=False)
    except Exception:  # no llama-cpp or no bundled model: fall back to the strict rule
        return None


@functools.lru_cache(maxsize=8192)
def _rare_word(word: str) -> bool:
    """Whether a capitalised word at a sentence start is a name rather than an ordinary word.

    Capitals cannot tell at a sentence start ("Rahul will send" vs "Citizens should ask"), so the
    bundled model's 49k-token BPE vocabulary, learnt from web text, decides: an everyday English word
    is one token in lower case (" citizens", " launch", " redesign"); a name is split in lower case
    and no longer capitalised (" rahul" 3 tokens, " Rahul" 2; " anna" 2, " Anna" 1), or its capitalised
    token comes first in the merge order (" Tom", " John", " Lan"). Names that are everyday words too
    (Ben, Mark, Will, May) are not caught at a sentence start: coverage alone judges those leaves.
    Words outside ASCII (Vietnamese syllables are all split) are not judged this way. Without the
    vocabulary every such word counts as a name: stricter, never looser."""
    if not word.isascii() or not word.isalpha():
        return False
    vocab = _vocab()
    if vocab is None:
        return True
    lower = vocab.tokenize((" " + word.lower()).encode(), add_bos=False)
    upper = vocab.tokenize((" " + word.capitalize()).encode(), add_bos=False)
    if len(lower) >= 2:
        return len(upper) <= len(lower)
    # One token either way: BPE ids follow merge order, roughly frequency, so a capitalised form
    # learnt first is a name (" Tom" before " tom"; " Citizens" long after " citizens").
    return len(upper) == 1 and upper[0] < lower[0]


@dataclass(frozen=True)
class _Claim:
    """One sentence of a leaf, as it is matched."""

    text: str
    content: list[str]
    names: set[str]
    numbers: set[int]


def _claims(text: str) -> list[_Claim]:
    out: list[_Claim] = []
    for sentence in _SENTENCE_END.split(_normalise(text).strip()):
        if not sentence.strip():
            continue
        tokens = _tokens(sentence)
        if not tokens:
            continue  # punctuation only: nothing said, nothing to find (a leaf of only that is unsupported)
        numbers = _numbers(tokens, sentence, required=True)
        content = list(
            dict.fromkeys(
                t.key
                for t in tokens
                if not _stopword(t)
                and not t.raw.replace(".", "").replace(",", "").isdigit()
                and (t.raw.casefold() not in _NUMBER_WORDS or t.raw.casefold() in _SOFT_NUMBER_WORDS)
                and len(t.key) > 1
            )
        )
        out.append(_Claim(sentence, content, _names(tokens), numbers))
    return out


# -- leaves --------------------------------------------------------------------------------------


def pointer(parts: list[str | int]) -> str:
    """RFC 6901 JSON pointer: ``~`` is written ``~0`` and ``/`` is written ``~1``."""
    return "".join("/" + str(p).replace("~", "~0").replace("/", "~1") for p in parts)


def leaves(data: Any, schema: dict[str, Any] | None = None) -> Iterator[tuple[list[str | int], str]]:
    """(path, text) of every checked leaf: strings and numbers, skipping booleans, nulls and
    strings the schema restricts to an ``enum``."""
    yield from _walk(data, schema or {}, [])


def _walk(value: Any, schema: dict[str, Any], path: list[str | int]) -> Iterator[tuple[list[str | int], str]]:
    if isinstance(value, dict):
        props = schema.get("properties", {}) if isinstance(schema, dict) else {}
        for key, item in value.items():
            yield from _walk(item, props.get(key, {}), [*path, key])
    elif isinstance(value, list):
        items = schema.get("items", {}) if isinstance(schema, dict) else {}
        for i, item in enumerate(value):
            yield from _walk(item, items if isinstance(items, dict) else {}, [*path, i])
    elif isinstance(value, bool) or value is None:
        return
    elif isinstance(value, (int, float)):
        yield path, str(value)
    elif isinstance(value, str):
        if isinstance(schema, dict) and "enum" in schema:
            return
        if value.strip():
            yield path, value


# -- the transcript ------------------------------------------------------------------------------


def units_from_ctx(ctx: TaskContext) -> list[Unit]:
    """The evidence the summary is checked against: the raw ASR segments (indices as in
    ``results.segments``), never the LLM's clean transcript, so evidence is what was heard. For a
    text task, its non-empty lines, each split into sentences, without times."""
    if ctx.transcript is not None:
        return [
            Unit(i, s.text, s.start, s.end, s.speaker) for i, s in enumerate(ctx.transcript.segments) if s.text.strip()
        ]
    return units_from_text(ctx.options.text or "")


_LABEL = re.compile(r"^\s*([A-Z][A-Za-z0-9_]*(?: \d+)?)\s*:\s+(\S.*)$")


def units_from_text(text: str) -> list[Unit]:
    units: list[Unit] = []
    for line in text.splitlines():
        m = _LABEL.match(line)
        speaker, body = (m.group(1), m.group(2)) if m else (None, line)
        for sentence in re.split(r"(?<=[.!?…])\s+", body.strip()):
            if sentence.strip():
                units.append(Unit(len(units), sentence.strip(), None, None, speaker))
    return units


class _Index:
    """Per-unit word keys and number values, and an inverted index from word key to units."""

    def __init__(self, units: list[Unit]) -> None:
        self.units = units
        self.texts: list[str] = []
        self.numbers: list[set[int]] = []
        self.where: dict[str, set[int]] = {}
        for pos, unit in enumerate(units):
            tokens = _tokens(unit.text)
            self.numbers.append(_numbers(tokens, unit.text, required=False))
            keys = {t.key for t in tokens}
            if unit.speaker:
                keys.add(unit.speaker.casefold())
            for key in keys:
                self.where.setdefault(key, set()).add(pos)
            prefix = f"{unit.speaker}: " if unit.speaker else ""
            self.texts.append(_normalise(prefix + unit.text).casefold())
        self.vocab = list(self.where)
        self._cache: dict[str, set[int]] = {}

    def units_with(self, key: str, *, fuzzy: bool = True) -> set[int]:
        """Units containing the word (exactly, or a similar word of 5+ letters)."""
        if key in self._cache:
            return self._cache[key]
        found = set(self.where.get(key, ()))
        if fuzzy and len(key) >= 5:
            for word, _score, _ in process.extract(
                key, self.vocab, scorer=fuzz.ratio, score_cutoff=FUZZY_WORD, limit=None
            ):
                if len(word) >= 5:
                    found |= self.where[word]
        self._cache[key] = found
        return found

    def units_with_number(self, value: int) -> set[int]:
        return {i for i, nums in enumerate(self.numbers) if value in nums}


@dataclass(frozen=True)
class _Match:
    window: tuple[int, int]
    """Positions [first, last] in the unit list."""
    coverage: float
    hard_ok: bool
    score: float


def _best_window(claim: _Claim, index: _Index) -> _Match | None:
    n = len(index.units)
    if n == 0:
        return None
    content_sets = [index.units_with(k) for k in claim.content]
    name_sets = [index.units_with(k, fuzzy=len(k) >= 6) for k in claim.names]
    number_sets = [index.units_with_number(v) for v in claim.numbers]
    anchors: set[int] = set().union(*content_sets, *name_sets, *number_sets)
    if not (claim.content or claim.names or claim.numbers):
        anchors = set(range(n))  # only function words: every segment is a candidate
    if not anchors:
        return None
    candidates: set[tuple[int, int]] = set()
    for a in anchors:
        for size in range(1, MAX_WINDOW + 1):
            for first in range(max(0, a - size + 1), min(a, n - size) + 1):
                candidates.add((first, first + size - 1))
    best: tuple[tuple[Any, ...], _Match] | None = None
    for first, last in candidates:
        inside = range(first, last + 1)

        def hit(units: set[int], inside: range = inside) -> bool:
            return any(i in units for i in inside)

        hard_ok = all(hit(s) for s in name_sets) and all(hit(s) for s in number_sets)
        coverage = sum(hit(s) for s in content_sets) / len(content_sets) if content_sets else 1.0
        key = (hard_ok, coverage, -(last - first), -first)  # ties: the fewest, earliest segments
        if best is None or key > best[0]:
            best = (key, _Match((first, last), coverage, hard_ok, 0.0))
    assert best is not None
    match = best[1]
    first, last = match.window
    window_text = " ".join(index.texts[first : last + 1])
    partial = fuzz.partial_ratio(claim.text.casefold(), window_text) / 100
    return _Match(match.window, match.coverage, match.hard_ok, round(0.75 * match.coverage + 0.25 * partial, 4))


# -- grounding -----------------------------------------------------------------------------------


def ground(
    data: dict[str, Any],
    units: list[Unit],
    *,
    schema: dict[str, Any] | None = None,
    examples: list[Any] | None = None,
) -> Grounding:
    """Evidence for every checked leaf of ``data`` (see the module docstring for the method).
    ``examples``: what the prompt may have shown the model (the template's example, its
    placeholder form); a leaf repeating one of their leaves is a copy."""
    index = _Index(units)
    example_texts = {_normalise(t).casefold().strip() for ex in examples or [] for _, t in leaves(ex, schema)}
    evidence: list[SummaryEvidence] = []
    for path, text in leaves(data, schema):
        norm = _normalise(text).casefold().strip()
        copied = any(norm == e or fuzz.ratio(norm, e) >= COPY_SIMILARITY for e in example_texts)
        evidence.append(_leaf_evidence(pointer(path), text, index, copied))
    return Grounding(evidence)


def _leaf_evidence(path: str, text: str, index: _Index, copied: bool) -> SummaryEvidence:
    need = COPIED_MIN_COVERAGE if copied else MIN_COVERAGE
    positions: set[int] = set()
    supported = True
    score = 1.0
    for claim in _claims(text):
        match = _best_window(claim, index)
        if match is None:
            supported, score = False, 0.0
            continue
        ok = match.hard_ok and match.coverage >= need
        if not claim.content and not claim.names and not claim.numbers:
            # Only function words ("yes", "all of it"): only a near-verbatim occurrence counts.
            ok = match.score >= 0.9
        supported = supported and ok
        score = min(score, match.score if match.hard_ok else 0.0)
        if ok or claim.content or claim.names or claim.numbers:
            # the closest window, even when it falls short: the UI shows where to look
            positions.update(range(match.window[0], match.window[1] + 1))
    units = [index.units[p] for p in sorted(positions)]
    starts = [u.start for u in units if u.start is not None]
    ends = [u.end for u in units if u.end is not None]
    return SummaryEvidence(
        path=path,
        segments=[u.index for u in units],
        start=min(starts) if starts else None,
        end=max(ends) if ends else None,
        score=round(score, 4) if positions else 0.0,
        supported=supported and bool(positions),
        copied=copied,
    )
