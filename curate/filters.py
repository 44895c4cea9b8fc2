"""Noise filters: named, configurable row checks, vectorized with polars.

Each filter looks at the *prompt* side, the *response* side or *both* of a row
(``bakeoff.schema.prompt_text`` / ``response_text``) and says, per row, whether
it hit, a score and a short detail. What happens to a hit row is the filter's
``action``:

- ``flag``   keep the row, add the tag ``flag:<filter>``;
- ``drop``   remove it (ledger: stage ``filter``, rule = filter name, score);
- ``redact`` (``pii``) replace each validated match with ``[EMAIL]``/``[PHONE]``/...;
- ``repair`` (``mojibake``: ftfy; ``control``: strip the characters) -- a row that
  is still bad after repair is dropped.

Rewritten rows get new content ids (``with_ids``). The filters:

=============  ================================================================
structure      chat structure: roles in a valid order, an answer at the end
empty          an empty or whitespace-only turn
length         characters (and, with a local tokenizer, tokens) out of bounds
control        control / non-printable characters (C0, C1, DEL, zero-width, U+FFFD)
mojibake       UTF-8 decoded as Windows-1252 and the like (ftfy ``is_bad``)
repetition     Gopher-style: duplicate-line fraction, duplicate word n-gram
               fraction, symbol-to-word ratio
refusal        "As an AI language model...", "I cannot help with that..."
pii            emails, phone numbers, card numbers (Luhn), IBANs (mod 97)
echo           the response repeats the prompt
truncated      cut mid-sentence, unbalanced code fences or brackets
language       not in the expected language(s) (langid, offline)
=============  ================================================================

Speed: ``detect`` builds the prompt/response texts once and runs every
text-level filter (all but structure and empty) once per distinct (kind,
prompt, response) -- corpora repeat rows and turns a lot -- and gathers the
results back. Detection is one batch of polars expressions (the Rust regex
engine), plus two numba kernels for what would otherwise take many string
scans (``byte_scan``: control characters, non-ASCII, brackets, code fences in
one pass; ``piece_stats``: line/word counts and distinct counts for
repetition). Python runs only on the few candidate rows of the checks that need
a library (ftfy, langid, a tokenizer) and, once per distinct turn, to rewrite
hit rows. ``benchmarks/bench_filters.py`` measures rows/s.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import polars as pl

from bakeoff.schema import prompt_text, response_text, with_ids
from bakeoff.steps import StepOutput
from bakeoff.workspace import BakeoffError, new_ledger

ROLE_CHOICES = ("prompt", "response", "both")
_SIDES = {"prompt": ("_p",), "response": ("_r",), "both": ("_p", "_r")}


# --- configs -------------------------------------------------------------------------

@dataclass
class FilterConfig:
    enabled: bool = True
    roles: str = "response"     # prompt | response | both
    action: str = "drop"        # flag | drop (| redact for pii, repair for mojibake/control)


@dataclass
class StructureConfig(FilterConfig):
    roles: str = "both"


@dataclass
class EmptyConfig(FilterConfig):
    roles: str = "both"


@dataclass
class LengthConfig(FilterConfig):
    roles: str = "both"
    min_chars: int = 1
    max_chars: int = 32_000
    min_tokens: int | None = None
    max_tokens: int | None = None
    tokenizer: str | None = None    # a local tokenizer directory (AutoTokenizer)


@dataclass
class ControlConfig(FilterConfig):
    roles: str = "both"


@dataclass
class MojibakeConfig(FilterConfig):
    roles: str = "both"
    action: str = "repair"


@dataclass
class RepetitionConfig(FilterConfig):
    max_dup_line_fraction: float = 0.3
    ngram: int = 5
    max_dup_ngram_fraction: float = 0.3
    max_symbol_word_ratio: float = 0.1
    symbols: list[str] = field(default_factory=lambda: ["#", "...", "…"])
    min_words: int = 12           # shorter texts are not judged on n-grams


@dataclass
class RefusalConfig(FilterConfig):
    extra_patterns: list[str] = field(default_factory=list)


@dataclass
class PiiConfig(FilterConfig):
    roles: str = "both"
    action: str = "redact"
    kinds: list[str] = field(default_factory=lambda: ["email", "phone", "card", "iban"])


@dataclass
class EchoConfig(FilterConfig):
    min_words: int = 4


@dataclass
class TruncatedConfig(FilterConfig):
    min_words: int = 4             # shorter answers ('Net income') are not judged mid-sentence


@dataclass
class LanguageConfig(FilterConfig):
    expected: list[str] = field(default_factory=lambda: ["en"])
    min_chars: int = 40           # shorter texts are not judged
    min_confidence: float = 0.9
    candidates: list[str] = field(default_factory=lambda: [
        "en", "de", "fr", "es", "it", "pt", "nl", "sv", "da", "no", "pl", "cs", "ro", "tr", "ru",
        "zh", "ja", "ko", "ar"])
    stopword_ratio: float = 0.12  # above this share of English stopwords: English, no langid call


# --- helpers -------------------------------------------------------------------------

def _contents(col: str, roles: tuple[str, ...] | None) -> pl.Expr:
    """The contents of the turns of ``col`` whose role is in ``roles`` (list[str])."""
    msgs = pl.col(col)
    if roles is not None:
        msgs = msgs.list.eval(pl.element().filter(pl.element().struct.field("role").is_in(list(roles))))
    return msgs.list.eval(pl.element().struct.field("content"))


def _side_contents(side: str) -> pl.Expr:
    """Turn contents of one side of a row, as a list of strings."""
    is_sft = pl.col("kind") == "sft"
    if side == "_p":
        return pl.when(is_sft).then(_contents("messages", ("system", "user", "tool"))).otherwise(
            _contents("messages", None))
    return (pl.when(is_sft).then(_contents("messages", ("assistant",)))
            .when(pl.col("kind") == "preference").then(
                pl.concat_list([_contents("chosen", None), _contents("rejected", None)]))
            .otherwise(pl.lit([], dtype=pl.List(pl.String))))


def _digits_checksum(values: pl.Series, weights: str) -> pl.Series:
    """Luhn (``weights='luhn'``) or ISO 7064 mod 97 (``'mod97'``) validity of digit
    strings, vectorized: explode digits with their position from the right and sum.

    Mod 97 of a long number is sum(d_i * (10^i mod 97)) mod 97, so it needs no
    big integers and no per-row loop.
    """
    if values.len() == 0:
        return pl.Series(values.name, [], dtype=pl.Boolean)
    df = pl.DataFrame({"s": values}).with_row_index("i")
    ex = (df.with_columns(pl.col("s").str.reverse().str.split("").alias("d"))
          .explode("d").filter(pl.col("d") != "")
          .with_columns(pl.col("d").cast(pl.Int64), (pl.int_range(pl.len()).over("i")).alias("pos")))
    if weights == "luhn":
        doubled = pl.col("d") * 2
        val = pl.when(pl.col("pos") % 2 == 1).then(
            pl.when(doubled > 9).then(doubled - 9).otherwise(doubled)).otherwise(pl.col("d"))
        agg = ex.group_by("i").agg((val.sum() % 10 == 0).alias("ok"), pl.len().alias("n"))
        agg = agg.with_columns(pl.col("ok") & pl.col("n").is_between(12, 19))
    else:
        pow10 = pl.Series([pow(10, k, 97) for k in range(128)], dtype=pl.Int64)
        ex = ex.with_columns(pl.col("pos").clip(0, 127).replace_strict(
            pl.int_range(128, eager=True), pow10).alias("w"))
        agg = ex.group_by("i").agg(((pl.col("d") * pl.col("w")).sum() % 97 == 1).alias("ok"))
    return df.join(agg, on="i", how="left").sort("i")["ok"].fill_null(False).rename(values.name)


def luhn_ok(digits: pl.Series) -> pl.Series:
    """Luhn check of digit-only strings."""
    return _digits_checksum(digits, "luhn")


def iban_ok(ibans: pl.Series) -> pl.Series:
    """Mod-97 check of IBANs (spaces allowed, upper case)."""
    compact = ibans.str.replace_all(" ", "")
    rearranged = compact.str.slice(4) + compact.str.slice(0, 4)
    # letters -> two digits (A=10 ... Z=35), digits stay
    numeric = rearranged
    for k in range(26):
        numeric = numeric.str.replace_all(chr(65 + k), str(10 + k), literal=True)
    ok = _digits_checksum(numeric, "mod97")
    return ok & compact.str.len_chars().is_between(15, 34)


# ASCII word boundary. A Unicode \b (the default) makes Rust's regex engine give
# up its DFA on non-ASCII text and run ~20x slower; the patterns that use it are
# English/ASCII anyway. Python's re reads (?-u:\b) differently, so the Python
# copies of patterns (for redaction) use plain \b.
WB = r"(?-u:\b)"

# PII patterns (Rust regex in polars, Python re for redaction)
EMAIL_RE = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
# candidates for phone and card numbers: three or more digit groups joined by
# single separators ("+1 (415) 555-0134", "4539 1488 0343 6467", "+49 30 1581214"),
# or one long run of digits; "1,234.5" or "(521.5 - 400.0)" are not candidates
_GROUP = r"(?:\(\d{1,4}\)|\d{1,8})"
NUMBER_RE = r"\+?" + _GROUP + r"(?:[ .\-]{1,2}" + _GROUP + r"){2,}|\d{13,19}"
IBAN_RE = WB + r"[A-Z]{2}\d{2} ?[A-Z0-9]{4}(?: ?[A-Z0-9]{1,4}){2,7}" + WB
_IBAN_PY = re.compile(r"\b[A-Z]{2}\d{2} ?[A-Z0-9]{4}(?: ?[A-Z0-9]{1,4}){2,7}\b")
_NANP_RE = r"^\+?1?[ .\-]?\(?\d{3}\)?[ .\-]?\d{3}[ .\-]\d{4}$"


def classify_numbers(cands: pl.Series) -> pl.DataFrame:
    """For number-like candidates: is it a card (13-19 digits, Luhn) or a phone
    (10-13 digits, written with a leading + or in North American shape)?"""
    df = pl.DataFrame({"c": cands.str.strip_chars(" .-()")}).with_columns(
        pl.col("c").str.replace_all(r"\D", "").alias("d"))
    n = pl.col("d").str.len_chars()
    card = luhn_ok(df["d"]) & df["d"].str.len_chars().is_between(13, 19)
    phone = (n.is_between(10, 13) & (pl.col("c").str.starts_with("+") | pl.col("c").str.contains(_NANP_RE)))
    return df.with_columns(card.alias("card")).with_columns(
        (phone & ~pl.col("card")).alias("phone"))


_REFUSAL_PATTERNS = [
    r"\bas an ai\b", r"\bas a (?:large )?language model\b", r"\bas an ai (?:language )?model\b",
    r"\bi(?:'m| am) (?:sorry|afraid),? but i\b", r"\bi(?:'m| am) sorry,? (?:but )?i (?:can(?:not|'t)|am (?:not able|unable))\b",
    r"^\s*i (?:cannot|can't|can not|am unable to|am not able to|won't) (?:help|assist|provide|answer|comply|fulfil|do that|perform)",
    r"\bi (?:cannot|can't) (?:help|assist) with (?:that|this)\b",
    r"\bunfortunately,? i (?:cannot|can't|am unable to)\b", r"\bi am unable to (?:access|provide|assist|help)\b",
    r"\bi do(?: not|n't) have (?:access to|the ability to) (?:real-time|the internet|browse)",
    r"\bit(?: is|'s) not appropriate for me to\b", r"\bplease consult a (?:qualified|licensed) (?:financial|legal|medical)? ?(?:advisor|professional)\b",
    r"\bmy (?:knowledge cutoff|training data) (?:is|only goes)\b",
]

# English function words for the cheap language pre-check
_EN_STOPWORDS = ("the", "and", "of", "to", "in", "is", "was", "for", "that", "with", "from", "as",
                 "by", "on", "at", "are", "were", "be", "this", "it", "an", "or", "which", "so",
                 "has", "have", "its", "not", "but", "what", "how", "a")
_STOP_RE = r"(?i)" + WB + "(?:" + "|".join(_EN_STOPWORDS) + ")" + WB

# C0 (but tab, newline, CR), DEL, C1, zero-width and bidi controls, BOM, U+FFFD
CONTROL_RE = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF\uFFFD]"


# --- filters ---------------------------------------------------------------------------

class Filter:
    """A named check. ``exprs`` are vectorized polars expressions producing the
    columns ``<name>.hit`` (bool), ``<name>.score`` (float) and optionally
    ``<name>.detail`` (str); ``post`` may refine them with a library on candidate
    rows only."""

    name: ClassVar[str]
    config_cls: ClassVar[type[FilterConfig]]
    actions: ClassVar[tuple[str, ...]] = ("flag", "drop")
    #: looks at the turns (messages/chosen/rejected), not just (kind, _p, _r)
    row_level: ClassVar[bool] = False
    #: post() reads byte_scan counts (detect computes them once for all)
    uses_scan: ClassVar[bool] = False

    def __init__(self, config: FilterConfig | None = None):
        self.config = config or self.config_cls()
        if self.config.roles not in ROLE_CHOICES:
            raise BakeoffError(f"filter {self.name}: roles must be one of {', '.join(ROLE_CHOICES)}")
        if self.config.action not in self.actions:
            raise BakeoffError(f"filter {self.name}: action must be one of {', '.join(self.actions)}")

    @property
    def sides(self) -> tuple[str, ...]:
        return _SIDES[self.config.roles]

    def col(self, what: str) -> str:
        return f"{self.name}.{what}"

    def exprs(self) -> list[pl.Expr]:
        return []

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame

    def _on_sides(self, hit_of, score_of=None) -> list[pl.Expr]:
        """hit/score over the configured sides (any hit, max score)."""
        hits = [hit_of(pl.col(s)) for s in self.sides]
        hit = pl.any_horizontal(hits) if len(hits) > 1 else hits[0]
        if score_of is None:
            score = hit.cast(pl.Float64)
        else:
            scores = [score_of(pl.col(s)) for s in self.sides]
            score = pl.max_horizontal(scores) if len(scores) > 1 else scores[0]
        return [hit.fill_null(False).alias(self.col("hit")), score.cast(pl.Float64).alias(self.col("score"))]


class StructureFilter(Filter):
    name = "structure"
    config_cls = StructureConfig
    row_level = True

    def exprs(self) -> list[pl.Expr]:
        # the roles string first; the checks on it in post() (in the same batch,
        # polars would build it once per use: six times)
        return [pl.col("messages").list.eval(pl.element().struct.field("role")).list.join(",")
                .alias(self.col("roles"))]

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        roles = pl.col(self.col("roles"))
        ok_sft = roles.str.contains(r"^(system,)?user(,(assistant|user|tool))*,assistant$") & \
            ~roles.str.contains(r"(^|,)(user,user|assistant,assistant)(,|$)")
        ok_prompt = roles.str.contains(r"^(system,)?user(,(assistant|user|tool))*$") & \
            roles.str.ends_with("user") & ~roles.str.contains(r"(^|,)(user,user|assistant,assistant)(,|$)")
        only_assistant = lambda c: pl.col(c).list.eval(  # noqa: E731
            pl.element().struct.field("role") == "assistant").list.all() & (pl.col(c).list.len() > 0)
        ok = (pl.when(pl.col("kind") == "sft").then(ok_sft)
              .when(pl.col("kind") == "prompt").then(ok_prompt)
              .when(pl.col("kind") == "preference").then(ok_prompt & only_assistant("chosen")
                                                          & only_assistant("rejected"))
              .otherwise(False))
        hit = (~ok.fill_null(False))
        return frame.with_columns(
            hit.alias(self.col("hit")), hit.cast(pl.Float64).alias(self.col("score")),
            pl.when(hit).then(pl.col("kind") + ": " + roles.fill_null("no messages")).alias(self.col("detail"))
        ).drop(self.col("roles"))


class EmptyFilter(Filter):
    name = "empty"
    config_cls = EmptyConfig
    row_level = True

    def exprs(self) -> list[pl.Expr]:
        def empty_turn(side: str) -> pl.Expr:
            blank = _side_contents(side).list.eval(
                pl.element().fill_null("").str.strip_chars().str.len_chars() == 0).list.any()
            if side == "_r":  # an sft row with no assistant turn is also empty on that side
                blank = blank | ((pl.col("kind") != "prompt") & (pl.col("_r").str.strip_chars() == ""))
            return blank.fill_null(True)
        hits = [empty_turn(s) for s in self.sides]
        hit = pl.any_horizontal(hits) if len(hits) > 1 else hits[0]
        return [hit.alias(self.col("hit")), hit.cast(pl.Float64).alias(self.col("score"))]


class LengthFilter(Filter):
    name = "length"
    config_cls = LengthConfig

    def exprs(self) -> list[pl.Expr]:
        c: LengthConfig = self.config  # type: ignore[assignment]
        def out_of_bounds(s: pl.Expr) -> pl.Expr:
            n = s.str.len_chars()
            # an empty prompt side of a prompt-less row is the empty filter's business
            return (n < c.min_chars) & (n > 0) | (n > c.max_chars)
        return self._on_sides(out_of_bounds, lambda s: s.str.len_chars())

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        c: LengthConfig = self.config  # type: ignore[assignment]
        if c.min_tokens is None and c.max_tokens is None:
            return frame
        if not c.tokenizer:
            raise BakeoffError("filter length: min_tokens/max_tokens need `tokenizer:` (a local tokenizer directory)")
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(c.tokenizer, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a config error
            raise BakeoffError(f"filter length: cannot load tokenizer {c.tokenizer!r}: {exc}") from exc
        hit = frame[self.col("hit")].to_list()
        score = frame[self.col("score")].to_list()
        detail = [None] * frame.height
        for side in self.sides:
            texts = frame[side].to_list()
            # fast tokenizers encode a batch in Rust, in parallel
            counts = [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
            for i, n in enumerate(counts):
                if (c.min_tokens is not None and 0 < n < c.min_tokens) or (
                        c.max_tokens is not None and n > c.max_tokens):
                    hit[i], score[i] = True, float(n)
                    detail[i] = f"{n} tokens on {'prompt' if side == '_p' else 'response'}"
        return frame.with_columns(pl.Series(self.col("hit"), hit, dtype=pl.Boolean), pl.Series(self.col("score"), score, dtype=pl.Float64),
                                  pl.Series(self.col("detail"), detail, dtype=pl.String))


def _scan_py(data, offs, kind, out):  # pragma: no cover - compiled by numba
    """Per text, one pass over its UTF-8 bytes: out[:, i] = (control characters as
    CONTROL_RE counts them, any non-ASCII byte, count of ( ) [ ] { }, count of
    non-overlapping ```). ASCII bytes never occur inside a multi-byte UTF-8
    sequence, so byte counts are character counts; the non-ASCII members of
    CONTROL_RE are matched by their UTF-8 encodings. ``kind`` (256 entries,
    see _SCAN_KIND) sends the common bytes (letters, digits, spaces) down the
    fast path."""
    for i in _prange(offs.shape[0] - 1):
        a, b = offs[i], offs[i + 1]
        ctrl = 0
        nonascii = 0
        po = pc = so = sc = co = cc = 0
        fences = 0
        run = 0
        for j in range(a, b):
            x = data[j]
            k = kind[x]
            if k == 0:
                run = 0
                continue
            if k == 8:  # `
                run += 1
                if run == 3:
                    fences += 1
                    run = 0
                continue
            run = 0
            if k == 7:
                ctrl += 1
            elif k == 1:
                po += 1
            elif k == 2:
                pc += 1
            elif k == 3:
                so += 1
            elif k == 4:
                sc += 1
            elif k == 5:
                co += 1
            elif k == 6:
                cc += 1
            else:  # k == 9: a byte >= 0x80
                nonascii = 1
                if x == 0xC2 and j + 1 < b:  # U+0080-U+009F (C1)
                    if 0x80 <= data[j + 1] <= 0x9F:
                        ctrl += 1
                elif x == 0xE2 and j + 2 < b:  # U+200B-200F, U+202A-202E, U+2060-2064
                    y = data[j + 1]
                    z = data[j + 2]
                    if y == 0x80 and ((0x8B <= z <= 0x8F) or (0xAA <= z <= 0xAE)):
                        ctrl += 1
                    elif y == 0x81 and 0xA0 <= z <= 0xA4:
                        ctrl += 1
                elif x == 0xEF and j + 2 < b:  # U+FEFF, U+FFFD
                    y = data[j + 1]
                    z = data[j + 2]
                    if (y == 0xBB and z == 0xBF) or (y == 0xBF and z == 0xBD):
                        ctrl += 1
        out[0, i] = ctrl
        out[1, i] = nonascii
        out[2, i] = po
        out[3, i] = pc
        out[4, i] = so
        out[5, i] = sc
        out[6, i] = co
        out[7, i] = cc
        out[8, i] = fences


def _scan_kind() -> np.ndarray:
    """Byte classes for _scan_py: 0 plain, 1-6 ( ) [ ] { }, 7 ASCII control
    (C0 but tab/LF/CR, DEL), 8 backtick, 9 non-ASCII."""
    kind = np.zeros(256, np.uint8)
    for k, ch in enumerate("()[]{}", start=1):
        kind[ord(ch)] = k
    for x in [*range(0, 9), 11, 12, *range(14, 32), 127]:
        kind[x] = 7
    kind[ord("`")] = 8
    kind[128:] = 9
    return kind


_SCAN_KIND = _scan_kind()
_SCAN: Any = None
SCAN_FIELDS = ("control", "nonascii", "(", ")", "[", "]", "{", "}", "```")


def byte_scan(texts: pl.Series) -> pl.DataFrame:
    """Per text, the character counts several filters need (control characters,
    non-ASCII, brackets, code fences), from one pass over the UTF-8 bytes with a
    numba kernel instead of one regex/literal scan per count: each polars
    string scan costs ~0.2 CPU-s per 200k demo rows, and control, mojibake and
    truncated needed nine of them."""
    global _SCAN
    if _SCAN is None:
        import numba

        global _prange
        _prange = numba.prange
        _SCAN = numba.njit(cache=True, parallel=True)(_scan_py)
    from bakeoff.curate.minhash import _buffers, _threads_for

    data, offs = _buffers(texts)
    out = np.zeros((len(SCAN_FIELDS), texts.len()), np.int64)  # one contiguous row per field
    if texts.len():
        with _threads_for(texts.len()):
            _SCAN(data, offs, _SCAN_KIND, out)
    return pl.DataFrame({name: out[k] for k, name in enumerate(SCAN_FIELDS)})


def _scanned(frame: pl.DataFrame, side: str) -> pl.DataFrame:
    """byte_scan of a side, computed once per detect() (kept in the column
    ``_scan<side>``) or here when a filter runs on a frame without it."""
    col = f"_scan{side}"
    if col in frame.columns:
        return frame.select(pl.col(col).struct.unnest())
    return byte_scan(frame[side])


class ControlFilter(Filter):
    name = "control"
    config_cls = ControlConfig
    uses_scan = True
    actions = ("flag", "drop", "repair")

    def exprs(self) -> list[pl.Expr]:
        return []  # all in post(), from byte_scan

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        n = pl.DataFrame({side: _scanned(frame, side)["control"] for side in self.sides}).max_horizontal()
        n = n.cast(pl.Float64)
        return frame.with_columns((n > 0).alias(self.col("hit")), n.alias(self.col("score")))


def rust_regex(py_pattern: str) -> str:
    """A Python ``re.VERBOSE`` pattern as a Rust-regex pattern with the same
    meaning: Rust's verbose mode also drops whitespace (and '#') inside character
    classes, Python's keeps them, so those are escaped."""
    out, in_class, i = [], False, 0
    while i < len(py_pattern):
        ch = py_pattern[i]
        if ch == "\\":
            out.append(py_pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]" and out[-1] != "[":
                in_class = False
            elif ch.isspace() or ch == "#":
                out.append(f"\\x{{{ord(ch):x}}}")
                i += 1
                continue
        elif ch == "[":
            in_class = True
        out.append(ch)
        i += 1
    return "(?x)" + "".join(out)


_BADNESS_RE: str | None = None


def ftfy_badness_re() -> str:
    """ftfy's mojibake detector (``ftfy.badness.BADNESS_RE``) for polars: the same
    matches (tested against ``ftfy.badness.badness``), run by the Rust engine
    over the whole column -- ~200x faster than calling ftfy per row."""
    global _BADNESS_RE
    if _BADNESS_RE is None:
        from ftfy.badness import BADNESS_RE

        _BADNESS_RE = rust_regex(BADNESS_RE.pattern)
    return _BADNESS_RE


class MojibakeFilter(Filter):
    """Mojibake as ftfy detects it (``ftfy.badness``: score = number of unlikely
    character sequences); repair with ``ftfy.fix_encoding``."""

    name = "mojibake"
    config_cls = MojibakeConfig
    uses_scan = True
    actions = ("flag", "drop", "repair")

    def exprs(self) -> list[pl.Expr]:
        # mojibake needs non-ASCII characters: a cheap test first (byte_scan),
        # ftfy's pattern (large) in post() on those rows only
        return []

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        pattern = ftfy_badness_re()
        nonascii = [_scanned(frame, side)["nonascii"] > 0 for side in self.sides]
        idx = (nonascii[0] if len(nonascii) == 1 else nonascii[0] | nonascii[1]).arg_true()
        sub = frame[idx].select(pl.max_horizontal(
            [pl.col(s).str.count_matches(pattern) for s in self.sides]).cast(pl.Float64).alias("b"))["b"]
        score = pl.Series(self.col("score"), [0.0] * frame.height, dtype=pl.Float64).scatter(idx, sub) \
            if idx.len() else pl.Series(self.col("score"), [0.0] * frame.height, dtype=pl.Float64)
        return frame.with_columns(score, (score > 0).alias(self.col("hit")))


def dup_ngram_fraction(texts: pl.Series, n: int) -> pl.Series:
    """Gopher's duplicate n-gram fraction per text: the share of word n-gram
    positions whose n-gram occurs more than once in the same text.

    Flat and vectorized: words of all texts exploded into one column, each word
    hashed, an n-gram = the hash of n consecutive word hashes (a shift over the
    whole column; n-grams crossing into the next text are discarded), then one
    ``is_duplicated`` over (text, n-gram).
    """
    if texts.len() == 0:
        return pl.Series(texts.name, [], dtype=pl.Float64)
    w = (pl.DataFrame({"t": texts}).with_row_index("row")
         .select("row", pl.col("t").str.split(" ").alias("w")).explode("w")
         .filter(pl.col("w").is_not_null() & (pl.col("w") != ""))
         .with_columns(pl.col("w").hash(seed=7).alias("h")))
    gram = pl.struct([pl.col("h").shift(-k).alias(f"h{k}") for k in range(n)]).hash(seed=11)
    g = (w.with_columns(gram.alias("g"), (pl.col("row").shift(-(n - 1)) == pl.col("row")).alias("ok"))
         .filter(pl.col("ok"))
         .with_columns(pl.struct("row", "g").is_duplicated().alias("d"))
         .group_by("row").agg(pl.col("d").mean().alias("frac")))
    out = pl.DataFrame({"row": pl.int_range(texts.len(), eager=True).cast(pl.UInt32)}).join(
        g.with_columns(pl.col("row").cast(pl.UInt32)), on="row", how="left")
    return out["frac"].fill_null(0.0).rename(texts.name)


def _pieces_py(data, a, b, sep, skip_empty):  # pragma: no cover - compiled by numba
    """(pieces, distinct pieces) of data[a:b] split on the byte ``sep``; with
    skip_empty, empty pieces are not counted. Open addressing on an FNV-1a
    hash, equal hashes confirmed byte by byte: exact counts."""
    cnt = 1
    for j in range(a, b):
        if data[j] == sep:
            cnt += 1
    size = 4
    while size < 2 * cnt:
        size <<= 1
    mask = np.uint64(size - 1)
    tstart = np.full(size, -1, np.int64)
    tend = np.empty(size, np.int64)
    thash = np.empty(size, np.uint64)
    total = 0
    uniq = 0
    s = a
    for j in range(a, b + 1):
        if j == b or data[j] == sep:
            e = j
            if not (skip_empty and e == s):
                total += 1
                h = np.uint64(14695981039346656037)
                for k in range(s, e):
                    h = (h ^ np.uint64(data[k])) * np.uint64(1099511628211)
                slot = np.int64(h & mask)
                while True:
                    if tstart[slot] == -1:
                        tstart[slot] = s
                        tend[slot] = e
                        thash[slot] = h
                        uniq += 1
                        break
                    if thash[slot] == h and tend[slot] - tstart[slot] == e - s:
                        same = True
                        t0 = tstart[slot]
                        for k in range(e - s):
                            if data[t0 + k] != data[s + k]:
                                same = False
                                break
                        if same:
                            break
                    slot = np.int64((np.uint64(slot) + np.uint64(1)) & mask)
            s = j + 1
    return total, uniq


def _piece_stats_py(data, offs, out):  # pragma: no cover - compiled by numba
    for i in _prange(offs.shape[0] - 1):
        a, b = offs[i], offs[i + 1]
        out[0, i], out[1, i] = _pieces_nb(data, a, b, np.uint8(10), True)   # lines, "\n"
        out[2, i], out[3, i] = _pieces_nb(data, a, b, np.uint8(32), False)  # words, " "


_pieces_nb: Any = None
_prange: Any = range  # numba.prange once numba is imported
_PIECE_STATS: Any = None


def _piece_kernels() -> Any:
    """The numba kernels, compiled on first use (numba is imported only when the
    repetition filter runs; module-level functions so numba's disk cache works)."""
    global _pieces_nb, _prange, _PIECE_STATS
    if _PIECE_STATS is None:
        import numba

        _prange = numba.prange
        _pieces_nb = numba.njit(cache=True)(_pieces_py)
        _PIECE_STATS = numba.njit(cache=True, parallel=True)(_piece_stats_py)
    return _PIECE_STATS


def piece_stats(texts: pl.Series) -> pl.DataFrame:
    """Per text: non-empty lines, distinct non-empty lines, words (``split(" ")``
    pieces, empty ones included) and distinct words -- what
    ``str.split(...).list.len()/.n_unique()`` give, in one pass over the UTF-8
    bytes. The polars form (split into list columns, then hash every piece in
    ``n_unique``) was the suite's single biggest cost, ~1.7 CPU-s per 200k rows;
    this kernel (numba, as in ``minhash``) does it ~10x cheaper. "\n" and " "
    are single bytes in UTF-8, so splitting bytes splits characters."""
    from bakeoff.curate.minhash import _buffers, _threads_for

    stats = _piece_kernels()
    data, offs = _buffers(texts)
    out = np.zeros((4, texts.len()), np.int64)  # one contiguous row per field
    if texts.len():
        with _threads_for(texts.len()):
            stats(data, offs, out)
    return pl.DataFrame({name: out[k] for k, name in enumerate(("n_lines", "u_lines", "n_words", "u_words"))})


class RepetitionFilter(Filter):
    """Gopher-style repetition (Rae et al. 2021): duplicate-line fraction,
    duplicate word n-gram fraction, symbol-to-word ratio."""

    name = "repetition"
    config_cls = RepetitionConfig

    def exprs(self) -> list[pl.Expr]:
        c: RepetitionConfig = self.config  # type: ignore[assignment]
        # symbol counts here (literal searches, cheap, batched with the other
        # filters); line/word statistics in post() by the piece_stats kernel
        return [sum(pl.col(side).str.count_matches(sym, literal=True) for sym in c.symbols)
                .cast(pl.Int64).alias(self.col(f"sym{side}")) for side in self.sides]

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        c: RepetitionConfig = self.config  # type: ignore[assignment]
        hits, scores, cands = [], [], []
        st = {side: piece_stats(frame[side]) for side in self.sides}
        cols = {}
        for side in self.sides:
            for k, v in st[side].to_dict().items():
                cols[f"{k}{side}"] = v
        calc = pl.DataFrame(cols).with_columns(frame.select([self.col(f"sym{side}") for side in self.sides]))
        for side in self.sides:
            n_lines, uniq = pl.col(f"n_lines{side}"), pl.col(f"u_lines{side}")
            nw, nu = pl.col(f"n_words{side}"), pl.col(f"u_words{side}")
            # duplicate-line fraction over the non-empty lines
            dup_lines = pl.when(n_lines > 1).then(1 - uniq / n_lines).otherwise(0.0)
            symbols = pl.col(self.col(f"sym{side}"))
            sym_ratio = pl.when(nw >= 1).then(symbols / nw).otherwise(0.0)
            hits.append((dup_lines > c.max_dup_line_fraction) | (sym_ratio > c.max_symbol_word_ratio))
            scores.append(pl.max_horizontal(dup_lines / c.max_dup_line_fraction,
                                            sym_ratio / c.max_symbol_word_ratio).fill_null(0.0))
            # n-grams are costly; only texts that repeat enough words can exceed
            # the threshold: if a share f of n-gram positions is duplicated, at
            # least f/2 of them are later copies, whose words all repeat earlier
            # ones -- so repeated words >= f/2 * (positions). A necessary
            # condition, hence no recall is lost.
            repeated = nw - nu
            need = (c.max_dup_ngram_fraction / 2) * (nw - c.ngram + 1)
            cands.append(((nw >= c.min_words) & (repeated >= need)).fill_null(False).alias(f"cand{side}"))
        hit0 = pl.any_horizontal(hits) if len(hits) > 1 else hits[0]
        score0 = pl.max_horizontal(scores) if len(scores) > 1 else scores[0]
        res = calc.select(hit0.fill_null(False).alias("hit"), score0.cast(pl.Float64).alias("score"), *cands)
        hit = res["hit"].rename(self.col("hit"))
        score = res["score"].rename(self.col("score"))
        for side in self.sides:
            cand = res[f"cand{side}"]
            idx = cand.arg_true()
            if idx.len():
                frac = dup_ngram_fraction(frame[side].gather(idx), c.ngram)
                full = pl.Series([0.0] * frame.height, dtype=pl.Float64).scatter(idx, frac)
                hit = hit | (full > c.max_dup_ngram_fraction)
                score = pl.DataFrame({"a": score, "b": full / c.max_dup_ngram_fraction}).select(
                    pl.max_horizontal("a", "b").alias(score.name)).to_series()
        return frame.drop([self.col(f"sym{s}") for s in self.sides]).with_columns(
            hit.alias(self.col("hit")), score.alias(self.col("score")))


class RefusalFilter(Filter):
    name = "refusal"
    config_cls = RefusalConfig

    def exprs(self) -> list[pl.Expr]:
        c: RefusalConfig = self.config  # type: ignore[assignment]
        pattern = "(?im)" + "|".join(f"(?:{p})" for p in [*_REFUSAL_PATTERNS, *c.extra_patterns])
        pattern = pattern.replace(r"\b", WB)
        return self._on_sides(lambda s: s.str.contains(pattern))


class PiiFilter(Filter):
    name = "pii"
    config_cls = PiiConfig
    actions = ("flag", "drop", "redact")
    KINDS = ("email", "phone", "card", "iban")

    def __init__(self, config: FilterConfig | None = None):
        super().__init__(config)
        bad = set(self.config.kinds) - set(self.KINDS)  # type: ignore[attr-defined]
        if bad:
            raise BakeoffError(f"filter pii: unknown kinds {sorted(bad)}; expected {list(self.KINDS)}")

    def exprs(self) -> list[pl.Expr]:
        # cheap candidate test; exact validation (Luhn, mod 97, phone shape) in post()
        kinds = self.config.kinds  # type: ignore[attr-defined]
        def candidate(s: pl.Expr) -> pl.Expr:
            # one simple test per kind, OR-ed (one big alternation is much slower)
            tests = []
            if "email" in kinds:
                tests.append(s.str.contains("@", literal=True))
            if "phone" in kinds or "card" in kinds:
                tests.append(s.str.contains(NUMBER_RE))
            if "iban" in kinds:
                tests.append(s.str.contains(IBAN_RE))
            return pl.any_horizontal(tests) if tests else pl.lit(False)
        return self._on_sides(candidate)

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        # validation on the candidate rows only, vectorized: per kind, one bool
        # per candidate row (any side), then score = number of kinds, detail =
        # the kinds in alphabetical order
        kinds = self.config.kinds  # type: ignore[attr-defined]
        cand = frame.with_row_index("_i").filter(pl.col(self.col("hit"))).select(["_i", *self.sides])
        found = cand.select("_i", *[pl.lit(False).alias(k) for k in sorted(self.KINDS)])

        def per_row(matches: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
            """any() per candidate row of the bool columns of exploded matches."""
            agg = matches.group_by("_i").agg([pl.col(c).any() for c in cols])
            return found.select("_i").join(agg, on="_i", how="left", maintain_order="left").fill_null(False)

        for side in self.sides:
            t = cand.select("_i", pl.col(side).alias("t"))
            new: dict[str, pl.Series] = {}
            if "email" in kinds:
                new["email"] = t["t"].str.contains(EMAIL_RE)
            if "phone" in kinds or "card" in kinds:
                nums = t.select("_i", pl.col("t").str.extract_all(NUMBER_RE).alias("c")).explode("c").drop_nulls()
                if nums.height:
                    cls = classify_numbers(nums["c"])
                    got = per_row(nums.with_columns(cls["card"], cls["phone"]), ["card", "phone"])
                    for k in ("card", "phone"):
                        if k in kinds:
                            new[k] = got[k]
            if "iban" in kinds:
                ib = t.select("_i", pl.col("t").str.extract_all(IBAN_RE).alias("c")).explode("c").drop_nulls()
                if ib.height:
                    new["iban"] = per_row(ib.with_columns(iban_ok(ib["c"]).alias("iban")), ["iban"])["iban"]
            if new:
                found = found.with_columns([(pl.col(k) | v).alias(k) for k, v in new.items()])
        ks = sorted(self.KINDS)
        res = found.select(
            "_i", pl.any_horizontal(ks).alias("hit"),
            pl.sum_horizontal([pl.col(k).cast(pl.Float64) for k in ks]).alias("score"),
            pl.concat_list([pl.when(pl.col(k)).then(pl.lit(k)).otherwise(None) for k in ks])
            .list.drop_nulls().list.join(",").alias("detail")).filter(pl.col("hit"))
        full = frame.select(pl.int_range(pl.len(), dtype=pl.UInt32).alias("_i")).join(
            res, on="_i", how="left", maintain_order="left")
        return frame.with_columns(full["hit"].fill_null(False).alias(self.col("hit")),
                                  full["score"].fill_null(0.0).alias(self.col("score")),
                                  full["detail"].alias(self.col("detail")))


def _luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _iban_valid(iban: str) -> bool:
    s = iban.replace(" ", "")
    if not 15 <= len(s) <= 34:
        return False
    return int("".join(str(int(ch, 36)) for ch in s[4:] + s[:4])) % 97 == 1


def _number_kind(candidate: str) -> tuple[bool, bool]:
    """(is a card, is a phone) for one match; the scalar twin of classify_numbers."""
    c = candidate.strip(" .-()")
    d = re.sub(r"\D", "", c)
    card = 13 <= len(d) <= 19 and _luhn_valid(d)
    phone = not card and 10 <= len(d) <= 13 and (c.startswith("+") or re.search(_NANP_RE, c) is not None)
    return card, phone


def redact_pii(text: str, kinds: list[str] | tuple[str, ...] = PiiFilter.KINDS) -> str:
    """Replace validated PII in ``text`` with [EMAIL], [PHONE], [CARD], [IBAN]."""
    if not text:
        return text
    if "iban" in kinds:
        def iban_sub(m: re.Match) -> str:
            return "[IBAN]" if _iban_valid(m.group(0)) else m.group(0)
        text = _IBAN_PY.sub(iban_sub, text)
    if "email" in kinds:
        text = re.sub(EMAIL_RE, "[EMAIL]", text)
    if "phone" in kinds or "card" in kinds:
        def num_sub(m: re.Match) -> str:
            card, phone = _number_kind(m.group(0))
            if card and "card" in kinds:
                return "[CARD]"
            if phone and "phone" in kinds:
                lead = m.group(0)[: len(m.group(0)) - len(m.group(0).lstrip(" .-("))]
                return lead + "[PHONE]"
            return m.group(0)
        text = re.sub(NUMBER_RE, num_sub, text)
    return text


class EchoFilter(Filter):
    """The response is a verbatim copy of (part of) the prompt, e.g. the question
    repeated. Case-sensitive and literal (a copy is a copy); leading/trailing
    whitespace and end punctuation of the response are ignored."""

    name = "echo"
    config_cls = EchoConfig

    def exprs(self) -> list[pl.Expr]:
        c: EchoConfig = self.config  # type: ignore[assignment]
        r = pl.col("_r").str.strip_chars(" \t\n.?!")
        long_enough = r.str.count_matches(" ", literal=True) >= c.min_words - 1
        hit = (long_enough & (pl.col("kind") != "prompt") & pl.col("_p").str.contains(r, literal=True)).fill_null(False)
        score = (r.str.len_chars() / pl.max_horizontal(pl.col("_p").str.len_chars(), pl.lit(1))).cast(pl.Float64)
        return [hit.alias(self.col("hit")), pl.when(hit).then(score).otherwise(0.0).alias(self.col("score"))]


class TruncatedFilter(Filter):
    name = "truncated"
    config_cls = TruncatedConfig
    uses_scan = True

    def exprs(self) -> list[pl.Expr]:
        # ends like a cut-off sentence: cheap, on every row; the rest in post()
        return [pl.col(side).str.strip_chars_end().str.contains(r"[a-z,;:\-]$").fill_null(False)
                .alias(self.col(f"end{side}")) for side in self.sides]

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        c: TruncatedConfig = self.config  # type: ignore[assignment]
        hits = []
        for side in self.sides:
            sc = _scanned(frame, side)
            # an odd number of ``` fences, or unbalanced brackets (byte_scan counts;
            # stripping trailing whitespace would not change them)
            hit = ((sc["```"] % 2 == 1) | (sc["("] != sc[")"]) | (sc["["] != sc["]"]) | (sc["{"] != sc["}"]))
            # mid-sentence: long enough and the last line is not a list item, table
            # row, quote, heading or code -- judged on the rows that end like one
            idx = frame[self.col(f"end{side}")].arg_true()
            if idx.len():
                t = frame[side].gather(idx).str.strip_chars_end()
                structured = t.str.contains(r"(?:^|\n)[ \t]*(?:[-*+|>#]|\d+[.)]\s|```|    )[^\n]*$")
                mid = ((t.str.count_matches(" ", literal=True) >= c.min_words - 1) & ~structured).fill_null(False)
                hit = hit | pl.Series([False] * frame.height, dtype=pl.Boolean).scatter(idx, mid)
            hits.append(hit.fill_null(False))
        hit = hits[0] if len(hits) == 1 else hits[0] | hits[1]
        return frame.drop([self.col(f"end{s}") for s in self.sides]).with_columns(
            hit.alias(self.col("hit")), hit.cast(pl.Float64).alias(self.col("score")))


class LanguageFilter(Filter):
    name = "language"
    config_cls = LanguageConfig

    def exprs(self) -> list[pl.Expr]:
        c: LanguageConfig = self.config  # type: ignore[assignment]
        def candidate(s: pl.Expr) -> pl.Expr:
            letters = s.str.len_chars()
            words = s.str.count_matches(" ", literal=True) + 1
            # structured answers (JSON, "field: value" lines) are not prose
            structured = s.str.contains(r"^\s*[\[{]") | (
                s.str.count_matches(": ", literal=True) * 2 >= s.str.count_matches("\n", literal=True) + 1)
            if c.expected == ["en"]:
                # Most English text is recognisable by its function words alone;
                # only the rest goes to langid (which runs per row in Python).
                english = s.str.count_matches(_STOP_RE) >= c.stopword_ratio * words
            else:
                english = pl.lit(False)
            return (letters >= c.min_chars) & ~english & ~structured
        return self._on_sides(candidate)

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        c: LanguageConfig = self.config  # type: ignore[assignment]
        cand = frame.with_row_index("_i").filter(pl.col(self.col("hit")))
        hit = [False] * frame.height
        score = [0.0] * frame.height
        detail: list[str | None] = [None] * frame.height
        if cand.height:
            ident = langid_identifier()
            ident.set_languages(sorted(set(c.candidates) | set(c.expected)))
            for row in cand.select(["_i", *self.sides]).iter_rows():
                for text in row[1:]:
                    if not text or len(text) < c.min_chars:
                        continue
                    lang, prob = ident.classify(text[:1000])  # cost grows with length
                    if lang not in c.expected and prob >= c.min_confidence:
                        hit[row[0]], score[row[0]], detail[row[0]] = True, float(prob), lang
        return frame.with_columns(pl.Series(self.col("hit"), hit, dtype=pl.Boolean), pl.Series(self.col("score"), score, dtype=pl.Float64),
                                  pl.Series(self.col("detail"), detail, dtype=pl.String))


_LANGID: Any = None


def langid_identifier() -> Any:
    """langid's identifier, loaded once per process.

    langid ships its model as a bz2-compressed pickle that takes several seconds
    to decode on every load; the decoded arrays are cached once per machine as
    .npy files (under $XDG_CACHE_HOME/bakeoff/langid), which load in milliseconds.
    """
    global _LANGID
    if _LANGID is not None:
        return _LANGID
    import os
    import pickle
    import uuid

    import numpy as np
    from langid.langid import LanguageIdentifier

    cache = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bakeoff" / "langid-1.1.6"
    try:
        nb_ptc = np.load(cache / "nb_ptc.npy")
        nb_pc = np.load(cache / "nb_pc.npy")
        tk_nextmove = np.load(cache / "tk_nextmove.npy").tolist()  # list indexing: fast per byte
        with open(cache / "rest.pkl", "rb") as fh:
            nb_classes, tk_output = pickle.load(fh)
        _LANGID = LanguageIdentifier(nb_ptc, nb_pc, nb_ptc.shape[0], nb_classes, tk_nextmove, tk_output,
                                     norm_probs=True)
        return _LANGID
    except (OSError, ValueError, EOFError, pickle.UnpicklingError):
        pass
    from langid.langid import model

    ident = LanguageIdentifier.from_modelstring(model, norm_probs=True)
    try:
        tmp = cache.with_name(f".{cache.name}.{uuid.uuid4().hex}")
        tmp.mkdir(parents=True)
        np.save(tmp / "nb_ptc.npy", np.asarray(ident.nb_ptc))
        np.save(tmp / "nb_pc.npy", np.asarray(ident.nb_pc))
        np.save(tmp / "tk_nextmove.npy", np.asarray(ident.tk_nextmove))
        with open(tmp / "rest.pkl", "wb") as fh:
            pickle.dump((list(ident.nb_classes), dict(ident.tk_output)), fh)
        os.replace(tmp, cache) if not cache.exists() else None
    except OSError:
        pass
    _LANGID = ident
    return _LANGID


#: Every filter, in the order they run (and the order the ledger's rule is picked in).
FILTERS: dict[str, type[Filter]] = {f.name: f for f in (
    StructureFilter, EmptyFilter, LengthFilter, ControlFilter, MojibakeFilter, RepetitionFilter,
    RefusalFilter, PiiFilter, EchoFilter, TruncatedFilter, LanguageFilter)}


# --- configuration ---------------------------------------------------------------------------

def parse_filter_config(spec: dict[str, Any] | None) -> dict[str, FilterConfig]:
    """``{filter name: {option: value}}`` (e.g. from filters.yaml) -> configs for every
    filter (unnamed filters keep their defaults; ``enabled: false`` turns one off;
    ``only: [names]`` at the top level enables just those)."""
    spec = dict(spec or {})
    only = spec.pop("only", None)
    unknown = set(spec) - set(FILTERS)
    if unknown:
        raise BakeoffError(f"unknown filter(s) {sorted(unknown)}; known: {', '.join(FILTERS)}")
    configs: dict[str, FilterConfig] = {}
    for name, cls in FILTERS.items():
        opts = spec.get(name) or {}
        if opts is True or opts is False:
            opts = {"enabled": opts}
        if not isinstance(opts, dict):
            raise BakeoffError(f"filter {name}: expected a mapping of options, got {opts!r}")
        fields = {f.name for f in dataclasses.fields(cls.config_cls)}
        bad = set(opts) - fields
        if bad:
            raise BakeoffError(f"filter {name}: unknown option(s) {sorted(bad)}; valid: {', '.join(sorted(fields))}")
        cfg = cls.config_cls(**opts)
        if only is not None:
            cfg.enabled = name in only
        configs[name] = cfg
    return configs


def load_filter_config(path: str | Path | None) -> dict[str, FilterConfig]:
    if path is None:
        return parse_filter_config(None)
    import yaml

    p = Path(path)
    if not p.is_file():
        raise BakeoffError(f"filter config not found: {p}")
    try:
        spec = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise BakeoffError(f"cannot parse {p}: {exc}") from exc
    if not isinstance(spec, dict):
        raise BakeoffError(f"{p}: expected a mapping of filter name -> options")
    return parse_filter_config(spec.get("filters", spec))


# --- running -----------------------------------------------------------------------------------

@dataclass
class FilterSuiteConfig:
    """All filter configs (the ``filter`` step of a recipe)."""

    filters: dict[str, FilterConfig] = field(default_factory=lambda: parse_filter_config(None))
    examples: int = 3

    @classmethod
    def from_dict(cls, spec: dict[str, Any] | None) -> "FilterSuiteConfig":
        spec = dict(spec or {})
        examples = spec.pop("examples", 3)
        return cls(filters=parse_filter_config(spec.get("filters", spec)), examples=examples)

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(c) for name, c in self.filters.items()}


def detect(df: pl.DataFrame, config: FilterSuiteConfig | None = None,
           show_progress: bool | None = None) -> tuple[pl.DataFrame, list[Filter]]:
    """Per-row hit/score/detail columns of every enabled filter (no rows changed).
    A progress bar (stderr) shows for large inputs (``show_progress=None``: from
    50k rows)."""
    from bakeoff.console import progress

    config = config or FilterSuiteConfig()
    active = [FILTERS[n](c) for n, c in config.filters.items() if c.enabled]
    show = df.height >= 50_000 if show_progress is None else show_progress
    with progress() if show else _nullcontext() as bar:
        task = bar.add_task("filters: detect", total=len(active) + 1) if show else None
        frame = df.select("kind", "messages", "chosen", "rejected").with_columns(
            prompt_text().alias("_p"), response_text().alias("_r"))
        # Structure and empty look at the turns themselves; every other filter is a
        # function of (kind, prompt text, response text) only, so it runs once per
        # distinct triple and its columns are gathered back to the rows. Corpora
        # repeat a lot (the same question in many conversations, copied rows);
        # the exact string join costs ~0.1 CPU-s per 200k rows, less than any
        # one filter. With (almost) no repeats the join is skipped.
        row_level = [f for f in active if f.row_level]
        text_level = [f for f in active if not f.row_level]
        exprs = [e for f in row_level for e in f.exprs()]
        if exprs:
            frame = frame.with_columns(exprs)
        keys = frame.select("kind", "_p", "_r")
        uniq, inverse = _distinct(keys) if text_level else (keys, None)
        exprs = [e for f in text_level for e in f.exprs()]
        if exprs:  # one batch: polars runs the expressions in parallel
            uniq = uniq.with_columns(exprs)
        scan_sides = sorted({s for f in text_level if f.uses_scan for s in f.sides})
        if scan_sides:  # one byte_scan per side, shared by the filters that use it
            uniq = uniq.with_columns(byte_scan(uniq[side]).to_struct(f"_scan{side}") for side in scan_sides)
        if show:
            bar.advance(task)
        for f in active:
            if show:
                bar.update(task, description=f"filters: {f.name}")
            if f.row_level:
                frame = f.post(frame)
            else:
                uniq = f.post(uniq)
                if f.col("detail") not in uniq.columns:
                    uniq = uniq.with_columns(pl.lit(None, dtype=pl.String).alias(f.col("detail")))
            if f.col("detail") not in frame.columns and f.row_level:
                frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(f.col("detail")))
            if show:
                bar.advance(task)
        out_cols = [c for c in uniq.columns if c not in keys.columns and not c.startswith("_scan")]
        results = uniq.select(out_cols)
        if inverse is not None:
            results = results[inverse]
        frame = frame.hstack(results)
        order = ["kind", "messages", "chosen", "rejected", "_p", "_r"] + [
            f.col(x) for f in active for x in ("hit", "score", "detail")]
        frame = frame.select(order + [c for c in frame.columns if c not in order])
    return frame, active


def _distinct(keys: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series | None]:
    """Distinct rows of ``keys`` (string columns; first-seen order) and, per input
    row, the index of its distinct row -- or (keys, None) when repeats are too few
    to pay off.

    Grouped by a 64-bit hash of the row (~4x cheaper than grouping the strings),
    then verified exactly: every row's strings are compared with those of the
    distinct row it maps to; on any hash collision, the exact string grouping."""
    if keys.height < 2:
        return keys, None
    # hash each column, then the struct of those u64s (hashing a struct of strings
    # directly goes through row encoding and costs ~8x more)
    h = keys.select(pl.struct([pl.col(c).hash(seed=3) for c in keys.columns]).hash(seed=5).alias("h"))["h"]
    first = h.is_first_distinct()
    if int(first.sum()) > 0.9 * keys.height:
        return keys, None
    firsts = pl.DataFrame({"h": h.filter(first)}).with_row_index("_u")
    inverse = pl.DataFrame({"h": h}).join(firsts, on="h", how="left", maintain_order="left")["_u"]
    uniq = keys.filter(first)
    same = keys.select([(pl.col(c).eq_missing(uniq[c].gather(inverse))).all() for c in keys.columns]).row(0)
    if all(same):
        return uniq, inverse
    first = keys.select(pl.struct(keys.columns).is_first_distinct()).to_series()
    uniq = keys.filter(first).with_row_index("_u")
    inverse = keys.join(uniq, on=keys.columns, how="left", nulls_equal=True, maintain_order="left")["_u"]
    return uniq.drop("_u"), inverse


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _map_contents(df: pl.DataFrame, mask: pl.Series, fn) -> pl.DataFrame:
    """Apply ``fn(str) -> str`` to every non-empty turn of the masked rows.

    ``fn`` (ftfy, a Python regex) runs once per *distinct* content of those rows --
    hit rows are often copies of each other -- and the results go back in with a
    vectorized replace; the other rows are not touched and the row order is kept."""
    if not bool(mask.any()):
        return df
    idx = mask.arg_true()
    sub = df[idx]
    cols = {}
    for col in ("messages", "chosen", "rejected"):
        contents = sub.select(pl.col(col).list.eval(pl.element().struct.field("content"))
                              .explode().drop_nulls().unique().alias("c"))["c"]
        contents = contents.filter(contents != "")
        if not contents.len():
            continue
        mapped = pl.Series([fn(t) for t in contents.to_list()], dtype=pl.String)
        changed = contents != mapped
        if not bool(changed.any()):
            continue
        old, new = contents.filter(changed), mapped.filter(changed)
        # when/then over the whole column: gathering list[struct] rows back into
        # place (take) costs ~3x more than this hash lookup of every turn
        cols[col] = pl.when(mask).then(pl.col(col).list.eval(pl.element().struct.with_fields(
            pl.field("content").replace(old, new)))).otherwise(pl.col(col))
    return df.with_columns(**cols) if cols else df


def reid_rows(df: pl.DataFrame, changed: pl.Series) -> pl.DataFrame:
    """New content ids (``with_ids``) for the rewritten rows only: hashing every
    row again would cost more than the filters themselves. A new id that equals an
    existing one (a repaired row now identical to another row) gets the
    ``~N`` suffix, as ``with_ids`` gives duplicates."""
    idx = changed.arg_true()
    fresh = with_ids(df[idx])["id"].str.replace(r"~\d+$", "")
    ids = df["id"].scatter(idx, fresh)
    # only fresh ids that clash (with a kept id or with each other) need the loop
    kept_ids = df["id"].filter(~changed)
    clash = fresh.is_in(kept_ids.implode()) | fresh.is_duplicated()
    if not bool(clash.any()):
        return df.with_columns(ids.alias("id"))
    # a candidate id is a fresh base or base~k: only kept ids of that form can clash
    bases = fresh.implode()
    taken = set(kept_ids.filter(kept_ids.is_in(bases) | kept_ids.str.replace(r"~\d+$", "").is_in(bases)).to_list())
    out = ids.to_list()
    next_k: dict[str, int] = {}  # per base: every suffix below it is taken already
    for i in idx.to_list():
        base = out[i]
        k = next_k.get(base, 1)
        cand = base if k == 1 else f"{base}~{k}"
        while cand in taken:
            k += 1
            cand = f"{base}~{k}"
        next_k[base] = k
        out[i] = cand
        taken.add(cand)
    return df.with_columns(pl.Series("id", out, dtype=pl.String))


def _snippet(text: str | None, n: int = 160) -> str:
    """One line for a report: newlines shown as ⏎, control characters escaped."""
    text = (text or "").replace("\n", " ⏎ ")
    text = re.sub(CONTROL_RE, lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _examples(f: Filter, frame: pl.DataFrame, ids: pl.Series, k: int) -> list[dict[str, Any]]:
    """Up to ``k`` hit rows, showing the side (prompt/response) that hit; PII is
    shown redacted, so the report does not spread it."""
    sel = frame.with_columns(ids.alias("_id")).filter(pl.col(f.col("hit"))).head(k)
    if not sel.height:
        return []
    side_of = ["_r" if "_r" in f.sides else "_p"] * sel.height
    if len(f.sides) == 2:
        only_r = type(f)(dataclasses.replace(f.config, roles="response"))
        probe = sel.with_columns(only_r.exprs()) if only_r.exprs() else sel
        probe = only_r.post(probe)
        side_of = ["_r" if h else "_p" for h in probe[f.col("hit")].to_list()]
    out = []
    for row, side in zip(sel.iter_rows(named=True), side_of):
        text = row[side]
        if f.name == "pii":  # centre on the (redacted) match
            text = redact_pii(text or "")
            m = re.search(r"\[(?:EMAIL|PHONE|CARD|IBAN)\]", text)
            if m and m.start() > 80:
                text = "…" + text[m.start() - 70:]
        out.append({"id": row["_id"], "side": "response" if side == "_r" else "prompt",
                    "detail": row[f.col("detail")], "text": _snippet(text)})
    return out


def filter_rows(df: pl.DataFrame, config: FilterSuiteConfig | dict | None = None) -> StepOutput:
    """Run the filter suite on a version's rows: drop, flag, repair or redact as
    configured. Rows in = rows kept + ledger rows."""
    t0 = time.perf_counter()
    if not isinstance(config, FilterSuiteConfig):
        config = FilterSuiteConfig.from_dict(config)
    frame, active = detect(df, config)
    names = [f.name for f in active]
    hit_cols = [f"{n}.hit" for n in names]
    n = df.height

    # actions
    drop = pl.Series("drop", [False] * n, dtype=pl.Boolean)
    rule = pl.Series("rule", [None] * n, dtype=pl.String)
    rule_score = pl.Series("score", [None] * n, dtype=pl.Float64)
    rows = df
    changed = pl.Series("changed", [False] * n, dtype=pl.Boolean)
    extra_report: dict[str, dict[str, Any]] = {}
    flags: list[str] = []
    for f in active:
        hit = frame[f.col("hit")]
        act = f.config.action
        if act == "drop":
            newly = hit & ~drop
            rule = pl.select(pl.when(newly).then(pl.lit(f.name)).otherwise(rule)).to_series()
            rule_score = pl.select(pl.when(newly).then(frame[f.col("score")]).otherwise(rule_score)).to_series()
            drop = drop | hit
        elif act == "flag":
            flags.append(f.name)
        elif act == "repair" and f.name == "mojibake":
            import ftfy

            # fix_encoding is the mojibake part of ftfy.fix_text (which would also
            # uncurl quotes, unescape HTML, ...: not this filter's business); it
            # returns good text unchanged
            fixer = ftfy.fix_encoding
            todo = hit & ~drop
            rows = _map_contents(rows, todo, fixer)
            # re-check: a row ftfy could not fix is dropped
            idx = todo.arg_true()
            recheck, _ = detect(rows[idx], FilterSuiteConfig(
                filters={"mojibake": dataclasses.replace(f.config, action="flag")}))
            still = pl.Series([False] * n, dtype=pl.Boolean)
            bad_idx = idx.filter(recheck["mojibake.hit"]) if idx.len() else idx
            if bad_idx.len():
                still = still.scatter(bad_idx, True)
            newly = still & ~drop
            rule = pl.select(pl.when(newly).then(pl.lit("mojibake")).otherwise(rule)).to_series()
            rule_score = pl.select(pl.when(newly).then(frame[f.col("score")]).otherwise(rule_score)).to_series()
            drop = drop | still
            changed = changed | (todo & ~still)
            extra_report[f.name] = {"detected": int(hit.sum()), "repaired": int((todo & ~still).sum()),
                                    "unrepairable": int(still.sum())}
        elif act == "repair" and f.name == "control":
            todo = hit & ~drop
            rows = _map_contents(rows, todo, lambda t: re.sub(CONTROL_RE, "", t))
            changed = changed | todo
            extra_report[f.name] = {"detected": int(hit.sum()), "repaired": int(todo.sum())}
        elif act == "redact":
            todo = hit & ~drop
            kinds = tuple(f.config.kinds)  # type: ignore[attr-defined]
            rows = _map_contents(rows, todo, lambda t: redact_pii(t, kinds))
            changed = changed | todo
            extra_report[f.name] = {"detected": int(hit.sum()), "redacted": int(todo.sum())}

    if flags:
        flag_tags = pl.concat_list([pl.when(frame[f"{n}.hit"]).then(pl.lit(f"flag:{n}")).otherwise(None)
                                    for n in flags]).list.drop_nulls()
        tags = pl.select(pl.concat_list([pl.lit(rows["tags"]).fill_null(pl.lit([], dtype=pl.List(pl.String))),
                                         flag_tags]).list.unique(maintain_order=True)).to_series()
        rows = rows.with_columns(tags.alias("tags"))

    # ledger: one row per dropped row, with every filter that hit it (built on the
    # dropped rows only)
    sub = frame.filter(drop)
    hits_list = sub.select(pl.concat_list([
        pl.when(pl.col(c)).then(pl.lit(c.removesuffix(".hit"))).otherwise(None) for c in hit_cols]
    ).list.drop_nulls().alias("h"))["h"] if hit_cols and sub.height else pl.Series("h", [], dtype=pl.List(pl.String))
    details = sub.select(pl.concat_list([
        pl.when(pl.col(f"{x}.detail").is_not_null()).then(pl.lit(x + ": ") + pl.col(f"{x}.detail")).otherwise(None)
        for x in names]).list.drop_nulls().list.join("; ").alias("d"))["d"] if names and sub.height \
        else pl.Series("d", [], dtype=pl.String)
    dropped = pl.DataFrame({"row_id": df["id"].filter(drop), "rule": rule.filter(drop),
                            "score": rule_score.filter(drop), "h": hits_list, "d": details})
    ledger = new_ledger(
        row_id=dropped["row_id"], stage=["filter"] * dropped.height, rule=dropped["rule"],
        score=dropped["score"],
        detail=dropped.select(pl.struct(filters=pl.col("h"), detail=pl.col("d")).struct.json_encode())
        .to_series() if dropped.height else pl.Series([], dtype=pl.String))

    rewritten = changed & ~drop
    if bool(rewritten.any()):
        rows = reid_rows(rows, rewritten)
    kept = rows.filter(~drop)

    # report
    per_filter: dict[str, Any] = {}
    for f in active:
        h = frame[f.col("hit")]
        ex = _examples(f, frame, df["id"], config.examples)
        per_filter[f.name] = {"hits": int(h.sum()), "share": round(float(h.sum()) / n, 4) if n else 0.0,
                              "action": f.config.action, "roles": f.config.roles,
                              "dropped": int((rule == f.name).sum()), "examples": ex,
                              **extra_report.get(f.name, {})}
    hm = frame.select(hit_cols).cast(pl.Int32).to_numpy() if hit_cols else None
    overlap = (hm.T @ hm).tolist() if hm is not None and n else [[0] * len(names) for _ in names]
    report = {"filter": {"rows_in": n, "rows_out": kept.height, "dropped": ledger.height,
                         "rewritten": int((changed & ~drop).sum()),
                         "flagged": {x: int(frame[f"{x}.hit"].sum()) for x in flags},
                         "filters": per_filter, "overlap": {"filters": names, "matrix": overlap},
                         "config": config.to_dict(), "seconds": round(time.perf_counter() - t0, 3)}}
    return StepOutput(rows=kept, ledger=ledger, report=report)


__all__ = ["FILTERS", "Filter", "FilterConfig", "FilterSuiteConfig", "filter_rows", "detect",
           "parse_filter_config", "load_filter_config", "redact_pii", "luhn_ok", "iban_ok",
           "classify_numbers"]
