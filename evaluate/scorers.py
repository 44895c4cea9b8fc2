"""Scorers: how well a model's answer matches an item's reference.

Every scorer maps (prediction, reference, options) to a score, 1.0 being a
perfect answer. Each has a version string; the cache keys scores by it, so
changing a scorer's logic (bump its version) or its options re-scores the stored
outputs without generating again.

Methods (a test set row names one in its ``scoring`` JSON):

- ``exact``     normalised exact match (case, whitespace, surrounding punctuation).
- ``numeric``   the first number in the answer against the reference number, with a
                relative ``tolerance`` (default 1e-6, i.e. 0.0001 %) and ``scale``
                words (``1.2 million`` == 1200000; ``12%`` == 0.12 when
                ``percent_as_fraction``), thousands separators, ``(1,200)`` negatives,
                currency symbols.
- ``token_f1``  SQuAD-style bag-of-tokens F1.
- ``rouge_l``   ROUGE-L F-measure (longest common subsequence of tokens).
- ``choice``    label accuracy: which of ``choices`` the answer names.
- ``fields``    field extraction: fraction of reference fields (JSON object, or
                ``field: value`` lines) the answer reproduces; values compared as
                numbers when both parse, else normalised text.
- ``reward``    a reward model's score of (prompt, answer), normalised with the
                reward checkpoint's ``reward_stats.json``; needs a :class:`RewardScorer`.

Binary scorers (every score 0 or 1) get McNemar's test in the ranking;
the others get a paired bootstrap.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import string
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from bakeoff.workspace import BakeoffError

# --- text normalisation ------------------------------------------------------

_PUNCT = re.escape(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b", re.IGNORECASE)
_TOKEN = re.compile(r"\w+(?:[.,]\w+)*", re.UNICODE)


def normalize(text: str | None) -> str:
    """Lower-case, collapse whitespace, strip surrounding punctuation/quotes."""
    text = (text or "").strip().lower()
    text = re.sub(r"\s+", " ", text)
    return text.strip(string.punctuation + " \"'`“”‘’")


def tokens(text: str | None) -> list[str]:
    """Word tokens for F1/ROUGE: lower-cased, articles dropped; numbers keep their
    inner separators (``1,200.50`` is one token)."""
    text = _ARTICLES.sub(" ", (text or "").lower())
    return _TOKEN.findall(text)


# --- numbers ---------------------------------------------------------------------

_SCALES = {
    "thousand": 1e3, "k": 1e3, "thousands": 1e3,
    "million": 1e6, "mn": 1e6, "mm": 1e6, "m": 1e6, "millions": 1e6,
    "billion": 1e9, "bn": 1e9, "billions": 1e9,
    "trillion": 1e12, "tn": 1e12, "trillions": 1e12,
}
_NUMBER = re.compile(
    r"""(?P<neg_paren>\()?\s*
        (?P<sign>[-+−–])?\s*
        (?P<cur>[$€£¥])?\s*
        (?P<num>\d{1,3}(?:[,\u202f\u00a0 ]\d{3})+(?!\d)(?:\.\d+)?|\d+(?:\.\d+)?|\.\d+)
        \s*(?P<close>\))?
        (?:\s*(?P<pct>%|percent\b|per\s+cent\b)
          |\s*(?P<scale>thousands?|millions?|billions?|trillions?|mn|bn|tn|k|mm|m)\b)?
    """,
    re.IGNORECASE | re.VERBOSE,
)


@dataclass(frozen=True)
class Number:
    value: float
    percent: bool


def parse_numbers(text: str | None) -> list[Number]:
    """Every number in ``text`` with its sign, scale word and percent flag applied
    (``(1,200)`` -> -1200, ``1.2 million`` -> 1200000, ``12%`` -> 12 percent)."""
    found = []
    for m in _NUMBER.finditer(text or ""):
        raw = re.sub(r"[,\u202f\u00a0 ]", "", m["num"])
        try:
            value = float(raw)
        except ValueError:  # pragma: no cover - the regex only admits numbers
            continue
        if m["scale"]:
            value *= _SCALES[m["scale"].lower()]
        negative = bool(m["sign"] and m["sign"] != "+") or bool(m["neg_paren"] and m["close"])
        found.append(Number(-value if negative else value, bool(m["pct"])))
    return found


def parse_number(text: str | None) -> Number | None:
    """The number an answer gives: the only one, or the last one when there are
    several (a worked calculation ends with its result, as in GSM8K scoring)."""
    nums = parse_numbers(text)
    return nums[-1] if nums else None


def numbers_match(pred: Number, ref: Number, tolerance: float, abs_tolerance: float,
                  percent_as_fraction: bool) -> bool:
    """Equal within a relative or absolute tolerance; a percent on one side and a
    fraction on the other also match when ``percent_as_fraction``."""
    candidates = [pred.value]
    if percent_as_fraction and pred.percent != ref.percent:
        candidates.append(pred.value / 100 if pred.percent else pred.value * 100)
    for v in candidates:
        if math.isclose(v, ref.value, rel_tol=tolerance, abs_tol=abs_tolerance):
            return True
    return False


# --- scorers ---------------------------------------------------------------------

def score_exact(pred: str, ref: str, opts: dict[str, Any]) -> float:
    if opts.get("case_sensitive"):
        return float((pred or "").strip() == (ref or "").strip())
    return float(normalize(pred) == normalize(ref))


def score_numeric(pred: str, ref: str, opts: dict[str, Any]) -> float:
    """1.0 when the answer's number equals the reference within ``tolerance``
    (relative) or ``abs_tolerance``. ``scale`` is the unit the source states its
    figures in (e.g. 1000 for "in thousands"): the answer may then be given in
    that unit or fully expanded, on either side."""
    ref_num = parse_number(ref)
    if ref_num is None:  # reference is not a number: fall back to exact match
        return score_exact(pred, ref, opts)
    pred_num = parse_number(pred)
    if pred_num is None:
        return 0.0
    tol, abs_tol = float(opts.get("tolerance", 1e-6)), float(opts.get("abs_tolerance", 1e-9))
    pct = bool(opts.get("percent_as_fraction", True))
    scale = float(opts.get("scale", 1.0) or 1.0)
    variants = [(pred_num, ref_num)]
    if scale != 1.0:
        variants += [(Number(pred_num.value * scale, pred_num.percent), ref_num),
                     (pred_num, Number(ref_num.value * scale, ref_num.percent))]
    return float(any(numbers_match(p, r, tol, abs_tol, pct) for p, r in variants))


def _f1(pred_toks: Sequence[str], ref_toks: Sequence[str], common: int) -> float:
    if not pred_toks and not ref_toks:
        return 1.0
    if not pred_toks or not ref_toks or common == 0:
        return 0.0
    p, r = common / len(pred_toks), common / len(ref_toks)
    return 2 * p * r / (p + r)


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


def score_rouge_l(pred: str, ref: str, opts: dict[str, Any]) -> float:
    # Written here rather than depending on rouge-score: it is 15 lines and the
    # package drags nltk in.
    p, r = tokens(pred), tokens(ref)
    return _f1(p, r, lcs_length(p, r))


def _label_norm(text: str | None) -> str:
    """Labels compare without case, punctuation, and with ``_``/``-`` as spaces
    (``limitation_of_liability`` == "Limitation of liability")."""
    return re.sub(r"[\s_\-]+", " ", normalize(text)).strip()


def _choice_of(text: str, choices: Sequence[str]) -> str | None:
    """Which choice an answer names: an exact (normalised) match, else the choice
    mentioned as a whole word — earliest in the text, longest on ties."""
    norm = _label_norm(text)
    by_norm = {_label_norm(c): c for c in choices}
    if norm in by_norm:
        return by_norm[norm]
    hits = []
    for c in choices:
        m = re.search(r"(?<!\w)" + re.escape(_label_norm(c)) + r"(?!\w)", norm)
        if m:
            hits.append((m.start(), -len(c), c))
    return min(hits)[2] if hits else None


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


def _values_match(pred: str, ref: str, tolerance: float) -> bool:
    pn, rn = parse_numbers(pred), parse_numbers(ref)
    # Compare as numbers only when both sides are a single number (dates like
    # 2024-03-01 hold several and compare as text).
    if len(pn) == 1 and len(rn) == 1 and re.fullmatch(r"[\s$€£¥\d.,()%+\-−a-zA-Z]*", ref or ""):
        if normalize(re.sub(r"[\d.,()%+\-−$€£¥\s]", "", ref)) in ("", "k", "m", "million", "bn", "billion"):
            return numbers_match(pn[0], rn[0], tolerance, 1e-9, True)
    return normalize(pred) == normalize(ref)


def score_fields(pred: str, ref: str, opts: dict[str, Any]) -> float:
    ref_fields = parse_fields(ref)
    wanted = [_field_key(f) for f in (opts.get("fields") or ref_fields.keys())]
    if not wanted:
        return score_exact(pred, ref, opts)
    got = parse_fields(pred)
    tol = float(opts.get("tolerance", 1e-6))
    hits = sum(1 for f in wanted if f in got and _values_match(got[f], ref_fields.get(f, ""), tol))
    return hits / len(wanted)


@dataclass(frozen=True)
class Scorer:
    method: str
    version: str
    fn: Callable[[str, str, dict[str, Any]], float] | None
    binary: bool


SCORERS: dict[str, Scorer] = {
    "exact": Scorer("exact", "1", score_exact, True),
    "numeric": Scorer("numeric", "1", score_numeric, True),
    "token_f1": Scorer("token_f1", "1", score_token_f1, False),
    "rouge_l": Scorer("rouge_l", "1", score_rouge_l, False),
    "choice": Scorer("choice", "2", score_choice, True),
    "fields": Scorer("fields", "1", score_fields, False),
    "reward": Scorer("reward", "1", None, False),
}


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
    spec.setdefault("method", default)
    if spec["method"] not in SCORERS:
        raise BakeoffError(f"unknown scoring method {spec['method']!r}; known: {', '.join(SCORERS)}")
    return spec


def scorer_version(spec: dict[str, Any], reward_digest: str | None = None) -> str:
    """The cache key of a scorer as configured for one item: method, its version,
    and a digest of its options (and of the reward model, for ``reward``)."""
    scorer = SCORERS[spec["method"]]
    opts = {k: v for k, v in spec.items() if k != "method"}
    if scorer.method == "reward":
        opts["_reward_model"] = reward_digest
    h = hashlib.sha256(json.dumps(opts, sort_keys=True, default=str).encode()).hexdigest()[:12]
    return f"{scorer.method}@{scorer.version}:{h}"


def score_one(pred: str, ref: str, spec: dict[str, Any]) -> float:
    """Score one answer with a non-model scorer."""
    scorer = SCORERS[spec["method"]]
    if scorer.fn is None:
        raise BakeoffError(f"scoring method {scorer.method!r} needs a model (pass --reward-model)")
    opts = {k: v for k, v in spec.items() if k != "method"}
    return float(scorer.fn(pred or "", ref or "", opts))


class RewardScorer:
    """Scores (prompt, answer) with a reward checkpoint (sequence classification,
    one label), normalised by the checkpoint's ``reward_stats.json`` so that 0 is
    the mean reward of the training data and 1 one standard deviation above."""

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
        from bakeoff.train.chat import score_responses
        from bakeoff.train.models import max_input_length

        model, tok = self._load()
        # the token sequence the reward model was trained on, read at its last token (as PPO reads it)
        raw = score_responses(model, tok, prompts, [a or "" for a in answers], self.batch_size,
                              max_input_length(tok))
        return [(x - self.mean) / self.std for x in raw]
