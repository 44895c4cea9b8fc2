"""Scorers: how well a model's answer matches an item's reference.

Every scorer maps (prediction, reference, options) to a score, 1.0 being a
perfect answer, and is registered with ``@scorer(name, binary=...)`` in
:data:`SCORERS` (the one list of methods; the test-set builder reads it). Its
version is a digest of its code and of everything in this module it uses
(:func:`code_version`), so a changed scorer re-scores stored outputs without
generating again, and nobody has to remember to bump a number.

Methods (a test set row names one in its ``scoring`` JSON):

- ``exact``     normalised exact match (case, whitespace, surrounding punctuation;
                signs, currency and percent are part of the answer).
- ``numeric``   the answer's number (:func:`answer_number`: after an explicit
                marker, else the last number once years, dates and footnote
                markers are set aside) against the reference number at the
                reference's own precision (:func:`numbers_match`), with signs,
                ``(1,200)`` negatives, percent, scale words (where they are scale
                words), number words and the source's ``scale``.
- ``token_f1``  SQuAD-style bag-of-tokens F1 (number tokens keep sign and currency).
- ``rouge_l``   ROUGE-L F-measure (longest common subsequence of tokens).
- ``choice``    label accuracy: which of ``choices`` the answer names, ignoring
                labels it rules out ("not a lease").
- ``fields``    field extraction: fraction of reference fields (JSON object, or
                ``field: value`` lines) the answer reproduces; values compared as
                numbers when both parse, else normalised text.
- ``reward``    a reward model's score of (prompt, answer), normalised with the
                reward checkpoint's ``reward_stats.json`` (model-backed: needs a
                :class:`RewardScorer`).

Binary scorers (every score 0 or 1) get McNemar-type statistics in the ranking;
the others a paired bootstrap.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from dataclasses import dataclass, replace
from typing import Any, Callable, Sequence

from bakeoff.workspace import BakeoffError

# --- text normalisation ------------------------------------------------------

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
# A number token keeps its sign (at a word start), currency and percent: "-12",
# "$12" and "12" are three different answers.
_TOKEN = re.compile(r"(?:(?<![\w.])[-−+])?[$€£¥]?\d+(?:[.,]\d+)*%?|\w+(?:[.,]\w+)*", re.UNICODE)
#: Stripped from both ends by :func:`normalize`: punctuation and quotes, but not
#: what changes an answer's meaning (sign, currency, percent, parentheses).
_STRIP = "".join(c for c in string.punctuation if c not in "-+$%()") + " \"'`“”‘’"


def normalize(text: str | None) -> str:
    """Lower-case, collapse whitespace, strip surrounding punctuation/quotes
    (keeping signs, currency symbols, percent and parentheses)."""
    text = (text or "").strip().lower()
    text = re.sub(r"\s+", " ", text)
    return text.strip(_STRIP)


def tokens(text: str | None) -> list[str]:
    """Word tokens for F1/ROUGE: lower-cased, articles dropped; numbers keep their
    inner separators, sign, currency and percent (``-$1,200.50`` is one token)."""
    text = _ARTICLES.sub(" ", (text or "").lower())
    text = re.sub(r"\(([$€£¥]?\d[\d.,]*)\)", r"-\1", text)  # "(12)" is -12, as in financial statements
    return [t.replace("−", "-") for t in _TOKEN.findall(text)]


# --- numbers ---------------------------------------------------------------------
#
# How the answer number is found follows finance QA evaluation: TAT-QA's official
# evaluation (scale words thousand/million/billion/percent applied to the number,
# "(134)" read as -134, numbers compared after rounding) and lm-evaluation-harness'
# extraction filters (an explicit marker such as "#### 42" or "The answer is 42"
# wins; otherwise the last number, with "$" and "," removed). Years, dates and
# footnote markers are skipped when other numbers are present.

_LONG_SCALES = {"thousand": 1e3, "thousands": 1e3, "million": 1e6, "millions": 1e6,
                "billion": 1e9, "billions": 1e9, "trillion": 1e12, "trillions": 1e12}
_SHORT_SCALES = {"k": 1e3, "mn": 1e6, "mm": 1e6, "m": 1e6, "bn": 1e9, "tn": 1e12}
_CURRENCY = r"[$€£¥]|(?:usd|eur|gbp|sek|nok|dkk|chf|jpy|cad|aud|rmb|cny|inr)\b"
_NUMBER = re.compile(
    rf"""(?<![\w.,])
        (?P<open>\()?\s*
        (?P<sign>[-+−–](?=\s*(?:{_CURRENCY}|\d|\.\d)))?\s*
        (?P<cur>{_CURRENCY})?\s*
        (?P<sign2>[-−–])?
        (?P<num>\d{{1,3}}(?:[,\u202f\u00a0]\d{{3}})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
        (?P<close>\s*\))?
        (?:\s*(?P<pct>%|percent\b|per\s?cent\b|pct\b)
          |(?P<gap>\s*)(?P<scale>thousands?|millions?|billions?|trillions?|mn|bn|tn|k|mm|m)\b)?
        (?P<close2>(?(close)|\s*\)))?
    """,
    re.IGNORECASE | re.VERBOSE,
)
_MONTH = r"(?:jan|feb|mar|apr|may|jun|jul|aug|sep|sept|oct|nov|dec)[a-z]*\.?"
#: Spans that hold numbers which are not answers: dates, fiscal periods, footnotes.
_NOT_ANSWERS = re.compile(
    rf"""\b\d{{4}}-\d{{1,2}}-\d{{1,2}}\b
       |\b\d{{1,2}}/\d{{1,2}}/\d{{2,4}}\b
       |\b{_MONTH}\s+\d{{1,2}}(?:st|nd|rd|th)?(?:,?\s*\d{{4}})?\b
       |\b\d{{1,2}}(?:st|nd|rd|th)?\s+(?:of\s+)?{_MONTH}(?:,?\s*\d{{4}})?
       |\b(?:fy|q[1-4]|h[12])\s?'?\d{{2,4}}\b|\bq[1-4]\b|\bh[12]\b
       |\b(?:see\s+)?(?:foot)?notes?\s+\d+[a-z]?\b
       |\[\d+\]|[¹²³⁴⁵⁶⁷⁸⁹⁰]+
    """,
    re.IGNORECASE | re.VERBOSE,
)
#: Explicit answer markers (lm-evaluation-harness' GSM8K "strict-match" filters, and
#: the "Answer:" convention of instruction-tuned models).
_MARKER = re.compile(r"####|\b(?:the\s+)?(?:final\s+)?answer\s*(?:is|:)|\bresult\s*(?:is|:)", re.IGNORECASE)


@dataclass(frozen=True)
class Number:
    """A number as written: ``value`` with sign and scale applied, ``written`` the
    figure as it appears (``3.7`` in "3.7 million"), ``unit`` the scale applied
    (1e6), ``decimals`` how many decimals the figure was written with."""

    value: float
    percent: bool
    written: float = math.nan
    unit: float = 1.0
    decimals: int = 0
    year: bool = False


def _scale_of(m: re.Match) -> float:
    """The scale a scale word gives, only where it is one: long words always;
    ``k``/``bn``/``mn``/``tn`` attached to the number or after a currency; ``m``
    and ``mm`` only after a currency ("$5mm", "EUR 3.7m", not "12 m" or "5 mm")."""
    word = (m["scale"] or "").lower()
    if not word:
        return 1.0
    if word in _LONG_SCALES:
        return _LONG_SCALES[word]
    if word in ("m", "mm"):
        return _SHORT_SCALES[word] if m["cur"] else 1.0
    return _SHORT_SCALES[word] if (m["cur"] or not m["gap"]) else 1.0


def parse_numbers(text: str | None) -> list[Number]:
    """Every number in ``text`` with its sign, scale word and percent flag applied
    (``(1,200)`` -> -1200, ``1.2 million`` -> 1200000, ``12%`` -> 12 percent)."""
    found = []
    for m in _NUMBER.finditer(text or ""):
        raw = re.sub(r"[,\u202f\u00a0]", "", m["num"])
        try:
            written = float(raw)
        except ValueError:  # pragma: no cover - the regex only admits numbers
            continue
        unit = _scale_of(m)
        is_year = (re.fullmatch(r"(19|20)\d\d", m["num"]) is not None and not m["cur"] and not m["pct"]
                   and unit == 1.0 and not m["sign"] and not m["sign2"])
        negative = (bool(m["sign"] and m["sign"] != "+") or bool(m["sign2"])
                    or (bool(m["open"] and (m["close"] or m["close2"])) and not is_year))
        decimals = len(raw.split(".", 1)[1]) if "." in raw else 0
        value = written * unit
        found.append(Number(-value if negative else value, bool(m["pct"]), -written if negative else written,
                            unit, decimals, is_year))
    return found


_WORD_NUMBERS = {w: i for i, w in enumerate(
    "zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen fifteen "
    "sixteen seventeen eighteen nineteen".split())}
_WORD_NUMBERS.update({w: 10 * i for i, w in enumerate("twenty thirty forty fifty sixty seventy eighty ninety".split(), 2)})
_WORD_RUN = re.compile(r"\b(?:(?:%s|hundred|thousand|million|billion|and)[\s-]*)+" % "|".join(_WORD_NUMBERS),
                       re.IGNORECASE)


def parse_number_words(text: str | None) -> list[Number]:
    """Numbers written in words ("five", "twenty-one", "three hundred", "two million")."""
    out = []
    for m in _WORD_RUN.finditer(text or ""):
        words = [w for w in re.split(r"[\s-]+", m.group(0).lower()) if w and w != "and"]
        if not words or all(w in ("hundred", "thousand", "million", "billion") for w in words):
            continue
        total, current = 0.0, 0.0
        for w in words:
            if w in _WORD_NUMBERS:
                current += _WORD_NUMBERS[w]
            elif w == "hundred":
                current = (current or 1) * 100
            else:
                total += (current or 1) * _LONG_SCALES[w]
                current = 0.0
        value = total + current
        out.append(Number(value, False, value, 1.0, 0, False))
    return out


def answer_number(text: str | None, keep_years: bool = False) -> Number | None:
    """The number an answer gives. After an explicit marker ("#### 42", "The
    answer is 42", "Answer: 42") the first number there; otherwise the last number
    (a worked calculation ends with its result, as in GSM8K scoring) once dates,
    fiscal periods, footnote markers and — unless ``keep_years`` or they are all
    there is — years are set aside. Number words when there are no digits."""
    text = text or ""
    markers = list(_MARKER.finditer(text))
    if markers:
        after = parse_numbers(_NOT_ANSWERS.sub(" ", text[markers[-1].end():])) or \
            parse_number_words(text[markers[-1].end():])
        if after:
            return after[0]
    nums = parse_numbers(_NOT_ANSWERS.sub(" ", text))
    if not keep_years and any(not n.year for n in nums):
        nums = [n for n in nums if not n.year]
    if not nums:
        nums = parse_numbers(text) or parse_number_words(text)
    return nums[-1] if nums else None


def parse_number(text: str | None) -> Number | None:
    """The number an answer gives (see :func:`answer_number`)."""
    return answer_number(text)


def _round_half_up(x: float, decimals: int) -> float:
    from decimal import ROUND_HALF_UP, Decimal

    return float(Decimal(repr(x)).quantize(Decimal(1).scaleb(-decimals), rounding=ROUND_HALF_UP))


def numbers_match(pred: Number, ref: Number, tolerance: float | None = None, abs_tolerance: float | None = None,
                  percent_as_fraction: bool = True) -> bool:
    """Equal at the reference's own precision: the prediction, expressed in the
    reference's unit, rounded to as many decimals as the reference was written
    with (TAT-QA's evaluation rounds before comparing), equals the reference. So
    3.74 matches 3.7, 1,230 does not match 1234.5 and 0.001 does not match 0.004.
    An explicit relative ``tolerance`` / ``abs_tolerance`` replaces the rounding
    rule. A percent on one side and a fraction on the other also match when
    ``percent_as_fraction``."""
    candidates = [pred.value]
    if percent_as_fraction and pred.percent != ref.percent:
        candidates.append(pred.value / 100 if pred.percent else pred.value * 100)
    for v in candidates:
        if tolerance is not None or abs_tolerance is not None:
            if math.isclose(v, ref.value, rel_tol=float(tolerance or 0.0), abs_tol=float(abs_tolerance or 0.0)):
                return True
            continue
        written = ref.written if not math.isnan(ref.written) else ref.value
        unit = ref.unit or 1.0
        if _round_half_up(v / unit, ref.decimals) == _round_half_up(written, ref.decimals):
            return True
    return False


# --- the registry -----------------------------------------------------------------

@dataclass(frozen=True)
class Scorer:
    """A scoring method. ``fn(pred, ref, opts)`` for text scorers; a model-backed
    scorer (``needs_model``) has ``fn(preds, refs, opts, prompts, model)`` over a
    batch. ``version`` is a digest of the code it runs (see :func:`code_version`)."""

    method: str
    fn: Callable[..., Any]
    binary: bool
    needs_model: bool = False

    @property
    def version(self) -> str:
        return code_version(self.fn)


#: Every scoring method, by name. Filled by the :func:`scorer` decorator; the
#: test-set builder reads its list of methods from here.
SCORERS: dict[str, Scorer] = {}


def scorer(name: str, binary: bool, needs_model: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Register a scoring function under ``name``. ``binary``: every score is 0
    or 1 (the ranking then uses McNemar-type statistics)."""
    def register(fn: Callable[..., Any]) -> Callable[..., Any]:
        SCORERS[name] = Scorer(name, fn, binary, needs_model)
        return fn
    return register


_VERSIONS: dict[Any, str] = {}


def code_version(fn: Callable[..., Any]) -> str:
    """A digest of ``fn``'s source and of everything of this module it uses,
    transitively (helper functions, classes, regexes, tables). A changed scorer
    gets a new version, so stale cached scores are never reused because nobody
    bumped a number by hand."""
    if fn in _VERSIONS:
        return _VERSIONS[fn]
    import inspect
    import types

    module = inspect.getmodule(fn)
    glb = vars(module) if module else {}
    seen: set[str] = set()
    parts: list[str] = []

    def names_of(code: types.CodeType) -> set[str]:
        out = set(code.co_names)
        for c in code.co_consts:
            if isinstance(c, types.CodeType):
                out |= names_of(c)
        return out

    def visit(obj: Any) -> None:
        codes: list[types.CodeType] = []
        if inspect.isfunction(obj):
            parts.append(inspect.getsource(obj))
            codes.append(obj.__code__)
        elif inspect.isclass(obj):
            parts.append(inspect.getsource(obj))
            codes += [f.__code__ for f in vars(obj).values() if inspect.isfunction(f)]
        for code in codes:
            for name in sorted(names_of(code)):
                if name in seen or name not in glb:
                    continue
                seen.add(name)
                val = glb[name]
                if (inspect.isfunction(val) or inspect.isclass(val)) and getattr(val, "__module__", None) == fn.__module__:
                    visit(val)
                elif isinstance(val, re.Pattern):
                    parts.append(f"{name}={val.pattern!r}/{val.flags}")
                elif isinstance(val, (str, int, float, tuple, frozenset, dict, list)):
                    parts.append(f"{name}={val!r}")

    visit(fn)
    _VERSIONS[fn] = hashlib.sha256("\n".join(parts).encode()).hexdigest()[:10]
    return _VERSIONS[fn]


# --- scorers ---------------------------------------------------------------------

@scorer("exact", binary=True)
def score_exact(pred: str, ref: str, opts: dict[str, Any]) -> float:
    if opts.get("case_sensitive"):
        return float((pred or "").strip() == (ref or "").strip())
    return float(normalize(pred) == normalize(ref))


@scorer("numeric", binary=True)
def score_numeric(pred: str, ref: str, opts: dict[str, Any]) -> float:
    """1.0 when the answer's number (:func:`answer_number`) equals the reference
    at the reference's precision (:func:`numbers_match`), or within an explicit
    ``tolerance``/``abs_tolerance``. ``scale`` is the unit the source states its
    figures in (e.g. 1000 for "in thousands"): the answer may then be given in
    that unit or fully expanded, on either side."""
    ref_num = answer_number(ref, keep_years=True)
    if ref_num is None:  # reference is not a number: fall back to exact match
        return score_exact(pred, ref, opts)
    pred_num = answer_number(pred, keep_years=ref_num.year)
    if pred_num is None:
        return 0.0
    tol, abs_tol = opts.get("tolerance"), opts.get("abs_tolerance")
    pct = bool(opts.get("percent_as_fraction", True))
    scale = float(opts.get("scale", 1.0) or 1.0)
    variants = [(pred_num, ref_num)]
    if scale != 1.0:
        variants += [(replace(pred_num, value=pred_num.value * scale), ref_num),
                     (pred_num, replace(ref_num, value=ref_num.value * scale, unit=ref_num.unit * scale))]
    return float(any(numbers_match(p, r, tol, abs_tol, pct) for p, r in variants))


def _f1(pred_toks: Sequence[str], ref_toks: Sequence[str], common: int) -> float:
    if not pred_toks and not ref_toks:
        return 1.0
    if not pred_toks or not ref_toks or common == 0:
        return 0.0
    p, r = common / len(pred_toks), common / len(ref_toks)
    return 2 * p * r / (p + r)


@scorer("token_f1", binary=False)
def score_token_f1(pred: str, ref: str, opts: dict[str, Any]) -> float:
    from collections import Counter

    p, r = tokens(pred), tokens(ref)
    common = sum((Counter(p) & Counter(r)).values())
    return _f1(p, r, common)


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Longest common subsequence, O(len(a)*len(b)) time, O(len(b)) memory."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


@scorer("rouge_l", binary=False)
def score_rouge_l(pred: str, ref: str, opts: dict[str, Any]) -> float:
    # Written here rather than depending on rouge-score: it is 15 lines and the
    # package drags nltk in.
    p, r = tokens(pred), tokens(ref)
    return _f1(p, r, lcs_length(p, r))


def _label_norm(text: str | None) -> str:
    """Labels compare without case, punctuation, and with ``_``/``-`` as spaces
    (``limitation_of_liability`` == "Limitation of liability")."""
    return re.sub(r"[\s_\-]+", " ", normalize(text).strip("-+$%()")).strip()


#: A label mentioned right after one of these is one the answer rules out
#: ("not a lease; it is an NDA").
_NEGATED = re.compile(r"(?:\b(?:not|no|never|neither|nor|isn't|isnt|aren't|wasn't|without|except)"
                      r"|\brather than|\binstead of)\s+(?:\w+\s+){0,2}$")


def _choice_of(text: str, choices: Sequence[str]) -> str | None:
    """Which choice an answer names: an exact (normalised) match, else the choice
    mentioned as a whole word and not negated — earliest in the text, longest on ties."""
    norm = _label_norm(text)
    by_norm = {_label_norm(c): c for c in choices}
    if norm in by_norm:
        return by_norm[norm]
    hits = []
    for c in choices:
        for m in re.finditer(r"(?<!\w)" + re.escape(_label_norm(c)) + r"(?!\w)", norm):
            if not _NEGATED.search(norm[:m.start()]):
                hits.append((m.start(), -len(c), c))
                break
    return min(hits)[2] if hits else None


@scorer("choice", binary=True)
def score_choice(pred: str, ref: str, opts: dict[str, Any]) -> float:
    choices = list(opts.get("choices") or [])
    if not choices:
        return score_exact(pred, ref, opts)
    picked = _choice_of(pred, choices)
    return float(picked is not None and _label_norm(picked) == _label_norm(ref))


_FIELD_LINE = re.compile(r"^\s*[-*]?\s*\"?([A-Za-z_][\w .\-/]*?)\"?\s*[:=]\s*(.*?)\s*,?\s*$")


def parse_fields(text: str | None) -> dict[str, str]:
    """Fields of an answer: a JSON object (also inside a ```json fence or
    surrounded by prose), else ``field: value`` lines. Keys are normalised
    (lower-case, spaces/dashes -> underscores)."""
    text = text or ""
    candidates = re.findall(r"```(?:json)?\s*(\{.*?\})\s*```", text, flags=re.S)
    brace = re.search(r"\{.*\}", text, flags=re.S)
    if brace:
        candidates.append(brace.group(0))
    for cand in candidates:
        try:
            obj = json.loads(cand)
        except ValueError:
            continue
        if isinstance(obj, dict):
            return {_field_key(k): "" if v is None else (json.dumps(v) if isinstance(v, (dict, list)) else str(v))
                    for k, v in obj.items()}
    fields = {}
    for line in text.splitlines():
        m = _FIELD_LINE.match(line)
        if m:
            fields.setdefault(_field_key(m[1]), m[2].strip().strip('"'))
    return fields


def _field_key(key: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().lower())


def _values_match(pred: str, ref: str, tolerance: float | None) -> bool:
    pn, rn = parse_numbers(pred), parse_numbers(ref)
    # Compare as numbers only when both sides are a single number (dates like
    # 2024-03-01 hold several and compare as text).
    if len(pn) == 1 and len(rn) == 1 and re.fullmatch(r"[\s$€£¥\d.,()%+\-−a-zA-Z]*", ref or ""):
        if normalize(re.sub(r"[\d.,()%+\-−$€£¥\s]", "", ref)) in ("", "k", "m", "million", "bn", "billion"):
            return numbers_match(pn[0], rn[0], tolerance, None, True)
    return normalize(pred) == normalize(ref)


@scorer("fields", binary=False)
def score_fields(pred: str, ref: str, opts: dict[str, Any]) -> float:
    ref_fields = parse_fields(ref)
    wanted = [_field_key(f) for f in (opts.get("fields") or ref_fields.keys())]
    if not wanted:
        return score_exact(pred, ref, opts)
    got = parse_fields(pred)
    tol = opts.get("tolerance")
    hits = sum(1 for f in wanted if f in got and _values_match(got[f], ref_fields.get(f, ""), tol))
    return hits / len(wanted)


@scorer("reward", binary=False, needs_model=True)
def score_reward(preds: Sequence[str], refs: Sequence[str], opts: Sequence[dict[str, Any]],
                 prompts: Sequence[list[dict]], model: "RewardScorer") -> list[float]:
    """A reward model's score of (prompt, answer), normalised so that 0 is the
    mean reward of its training data and 1 one standard deviation above."""
    return model.score(list(prompts), list(preds))


def parse_scoring(scoring: str | dict | None, default: str = "token_f1") -> dict[str, Any]:
    """A row's ``scoring`` JSON as a dict with a known ``method``."""
    if scoring is None or scoring == "":
        spec: dict[str, Any] = {"method": default}
    elif isinstance(scoring, dict):
        spec = dict(scoring)
    else:
        try:
            spec = json.loads(scoring)
        except ValueError as exc:
            raise BakeoffError(f"scoring is not JSON: {scoring!r}") from exc
        if isinstance(spec, str):
            spec = {"method": spec}
        if not isinstance(spec, dict):
            raise BakeoffError(f"scoring must be a JSON object or a method name, got {scoring!r}")
    spec.setdefault("method", default)
    if spec["method"] not in SCORERS:
        raise BakeoffError(f"unknown scoring method {spec['method']!r}; known: {', '.join(SCORERS)}")
    return spec


def scorer_version(spec: dict[str, Any], reward_digest: str | None = None) -> str:
    """The cache key of a scorer as configured for one item: method, the digest
    of its code, and a digest of its options (and of the reward model, for
    model-backed scorers)."""
    scorer = SCORERS[spec["method"]]
    opts = {k: v for k, v in spec.items() if k != "method"}
    if scorer.needs_model:
        opts["_reward_model"] = reward_digest
    h = hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{scorer.method}@{scorer.version}:{h}"


def score_one(pred: str, ref: str, spec: dict[str, Any], prompt: list[dict] | None = None,
              reward: "RewardScorer | None" = None) -> float:
    """Score one answer. A model-backed scorer (``reward``) needs the prompt and
    the reward model."""
    scorer = SCORERS[spec["method"]]
    opts = {k: v for k, v in spec.items() if k != "method"}
    if scorer.needs_model:
        if reward is None:
            raise BakeoffError(f"scoring method {scorer.method!r} needs a model (pass --reward-model)")
        return float(scorer.fn([pred or ""], [ref or ""], [opts], [prompt or []], reward)[0])
    return float(scorer.fn(pred or "", ref or "", opts))


def reward_model_scores(model: Any, tok: Any, prompts: list[list[dict]], answers: list[str],
                        batch_size: int) -> list[float]:
    """Raw reward-model scores of (prompt, answer) pairs. The one place evaluation
    calls a reward model: it scores exactly the token sequence the reward model
    was trained on, read at its last token, as PPO, GRPO and RLOO read it
    (``bakeoff.train.chat.score_responses``)."""
    from bakeoff.train.chat import score_responses
    from bakeoff.train.models import max_input_length

    return score_responses(model, tok, prompts, [a or "" for a in answers], batch_size,
                           max_input_length(tok))


class RewardScorer:
    """A reward checkpoint (sequence classification, one label) as the model of
    the ``reward`` scorer, normalised by the checkpoint's ``reward_stats.json``
    so that 0 is the mean reward of the training data and 1 one standard
    deviation above."""

    def __init__(self, path: str, device: str | None = None, batch_size: int = 8):
        from pathlib import Path

        from bakeoff.evaluate.cache import weights_digest

        self.path = str(path)
        self.digest = weights_digest(path)
        stats_path = Path(path) / "reward_stats.json"
        stats = json.loads(stats_path.read_text()) if stats_path.exists() else {"mean": 0.0, "std": 1.0}
        self.mean = float(stats.get("mean", 0.0))
        self.std = float(stats.get("std", 1.0)) or 1.0
        self.device = device
        self.batch_size = batch_size
        self._model = None

    def _load(self):
        if self._model is None:
            from bakeoff.evaluate.generate import load_reward

            self._model, self._tok = load_reward(self.path, self.device)
        return self._model, self._tok

    def score(self, prompts: list[list[dict]], answers: list[str]) -> list[float]:
        model, tok = self._load()
        raw = reward_model_scores(model, tok, prompts, answers, self.batch_size)
        return [(x - self.mean) / self.std for x in raw]
