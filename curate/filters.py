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

Speed: the detection of every filter is one batch of polars expressions (the
Rust regex engine, run in parallel across columns); Python runs only on the few
candidate rows of the checks that need a library (ftfy, langid, a tokenizer) and
for rewriting hit rows. ``benchmarks/bench_filters.py`` measures rows/s.
"""

from __future__ import annotations

import dataclasses
import json
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

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


# PII patterns (Rust regex in polars, Python re for redaction: both accept these)
EMAIL_RE = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
# digit runs with separators: candidates for phone and card numbers
NUMBER_RE = r"\+?\(?\d[\d ().\-]{7,}\d"
IBAN_RE = r"\b[A-Z]{2}\d{2} ?[A-Z0-9]{4}(?: ?[A-Z0-9]{1,4}){2,7}\b"
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
_STOP_RE = r"(?i)\b(?:" + "|".join(_EN_STOPWORDS) + r")\b"

_CP1252_HIGH = "\u20ac\u201a\u0192\u201e\u2026\u2020\u2021\u02c6\u2030\u0160\u2039\u0152\u017d" \
    "\u2018\u2019\u201c\u201d\u2022\u2013\u2014\u02dc\u2122\u0161\u203a\u0153\u017e\u0178"
MOJIBAKE_CANDIDATE_RE = "[\u00c2-\u00f4][\u0080-\u00bf" + _CP1252_HIGH + "]"

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

    def exprs(self) -> list[pl.Expr]:
        roles = pl.col("messages").list.eval(pl.element().struct.field("role")).list.join(",")
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
        return [hit.alias(self.col("hit")), hit.cast(pl.Float64).alias(self.col("score")),
                pl.when(hit).then(pl.col("kind") + ": " + roles.fill_null("no messages")).alias(self.col("detail"))]


class EmptyFilter(Filter):
    name = "empty"
    config_cls = EmptyConfig

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
        return frame.with_columns(pl.Series(self.col("hit"), hit), pl.Series(self.col("score"), score),
                                  pl.Series(self.col("detail"), detail, dtype=pl.String))


class ControlFilter(Filter):
    name = "control"
    config_cls = ControlConfig
    actions = ("flag", "drop", "repair")

    def exprs(self) -> list[pl.Expr]:
        return self._on_sides(lambda s: s.str.contains(CONTROL_RE),
                              lambda s: s.str.count_matches(CONTROL_RE).cast(pl.Float64))


class MojibakeFilter(Filter):
    name = "mojibake"
    config_cls = MojibakeConfig
    actions = ("flag", "drop", "repair")

    def exprs(self) -> list[pl.Expr]:
        # Candidates, vectorized: a UTF-8 lead byte (Â..ô) read as Latin-1/cp1252
        # followed by a continuation byte read the same way (\x80-\xBF or the
        # cp1252 characters of bytes 0x80-0x9F). Every UTF-8 -> cp1252/Latin-1
        # misreading (the common kind of mojibake) produces such a pair; ftfy's
        # own check (``is_bad``, a Python regex per text) then decides on the
        # candidates only.
        return self._on_sides(lambda s: s.str.contains(MOJIBAKE_CANDIDATE_RE))

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        from ftfy.badness import badness, is_bad

        cand = frame.with_row_index("_i").filter(pl.col(self.col("hit")))
        hit = [False] * frame.height
        score = [0.0] * frame.height
        for row in cand.select(["_i", *self.sides]).iter_rows():
            i, texts = row[0], row[1:]
            if any(t and is_bad(t) for t in texts):
                hit[i] = True
                score[i] = float(max(badness(t) for t in texts if t))
        return frame.with_columns(pl.Series(self.col("hit"), hit), pl.Series(self.col("score"), score))


class RepetitionFilter(Filter):
    name = "repetition"
    config_cls = RepetitionConfig

    def exprs(self) -> list[pl.Expr]:
        c: RepetitionConfig = self.config  # type: ignore[assignment]
        def parts(s: pl.Expr) -> tuple[pl.Expr, pl.Expr, pl.Expr]:
            lines = s.str.split("\n").list.eval(pl.element().str.strip_chars().filter(pl.element() != ""))
            n_lines = lines.list.len()
            dup_lines = pl.when(n_lines > 1).then(
                1 - lines.list.n_unique() / n_lines).otherwise(0.0)
            words = s.str.split(" ").list.eval(pl.element().filter(pl.element() != ""))
            n_words = words.list.len()
            # word n-grams as joined strings; the share of n-gram positions whose
            # n-gram occurs more than once (Gopher's duplicate n-gram fraction)
            grams = words.list.eval(pl.concat_str([pl.element().shift(-k) for k in range(c.ngram)],
                                                  separator=" ").drop_nulls())
            dup_grams = pl.when(n_words >= c.min_words).then(
                grams.list.eval(pl.element().is_duplicated().mean()).list.first()).otherwise(0.0)
            symbols = sum(s.str.count_matches(re.escape(sym)) for sym in c.symbols)
            sym_ratio = pl.when(n_words >= 1).then(symbols / n_words).otherwise(0.0)
            return dup_lines.fill_null(0.0), dup_grams.fill_null(0.0), sym_ratio.fill_null(0.0)

        hits, scores = [], []
        for side in self.sides:
            dl, dg, sr = parts(pl.col(side))
            hits.append((dl > c.max_dup_line_fraction) | (dg > c.max_dup_ngram_fraction)
                        | (sr > c.max_symbol_word_ratio))
            scores.append(pl.max_horizontal(dl / c.max_dup_line_fraction, dg / c.max_dup_ngram_fraction,
                                            sr / c.max_symbol_word_ratio))
        hit = pl.any_horizontal(hits) if len(hits) > 1 else hits[0]
        score = pl.max_horizontal(scores) if len(scores) > 1 else scores[0]
        return [hit.alias(self.col("hit")), score.alias(self.col("score"))]


class RefusalFilter(Filter):
    name = "refusal"
    config_cls = RefusalConfig

    def exprs(self) -> list[pl.Expr]:
        c: RefusalConfig = self.config  # type: ignore[assignment]
        pattern = "(?im)" + "|".join(f"(?:{p})" for p in [*_REFUSAL_PATTERNS, *c.extra_patterns])
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
        pats = []
        if "email" in kinds:
            pats.append(EMAIL_RE)
        if "phone" in kinds or "card" in kinds:
            pats.append(NUMBER_RE)
        if "iban" in kinds:
            pats.append(IBAN_RE)
        pattern = "|".join(f"(?:{p})" for p in pats) or "$^"
        return self._on_sides(lambda s: s.str.contains(pattern))

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        kinds = self.config.kinds  # type: ignore[attr-defined]
        cand = frame.with_row_index("_i").filter(pl.col(self.col("hit"))).select(["_i", *self.sides])
        found: dict[int, set[str]] = {}
        for side in self.sides:
            t = cand.select("_i", pl.col(side).alias("t"))
            if "email" in kinds:
                em = t.filter(pl.col("t").str.contains(EMAIL_RE))
                for i in em["_i"]:
                    found.setdefault(i, set()).add("email")
            if "phone" in kinds or "card" in kinds:
                nums = t.select("_i", pl.col("t").str.extract_all(NUMBER_RE).alias("c")).explode("c").drop_nulls()
                if nums.height:
                    cls = classify_numbers(nums["c"])
                    nums = nums.with_columns(cls["card"], cls["phone"])
                    for i, card, phone in nums.select("_i", "card", "phone").iter_rows():
                        if card and "card" in kinds:
                            found.setdefault(i, set()).add("card")
                        if phone and "phone" in kinds:
                            found.setdefault(i, set()).add("phone")
            if "iban" in kinds:
                ib = t.select("_i", pl.col("t").str.extract_all(IBAN_RE).alias("c")).explode("c").drop_nulls()
                if ib.height:
                    ok = iban_ok(ib["c"])
                    for i in ib.filter(ok)["_i"]:
                        found.setdefault(i, set()).add("iban")
        hit = [False] * frame.height
        score = [0.0] * frame.height
        detail: list[str | None] = [None] * frame.height
        for i, ks in found.items():
            hit[i], score[i], detail[i] = True, float(len(ks)), ",".join(sorted(ks))
        return frame.with_columns(pl.Series(self.col("hit"), hit), pl.Series(self.col("score"), score),
                                  pl.Series(self.col("detail"), detail, dtype=pl.String))


def redact_pii(text: str, kinds: list[str] | tuple[str, ...] = PiiFilter.KINDS) -> str:
    """Replace validated PII in ``text`` with [EMAIL], [PHONE], [CARD], [IBAN]."""
    if not text:
        return text
    if "iban" in kinds:
        def iban_sub(m: re.Match) -> str:
            return "[IBAN]" if iban_ok(pl.Series([m.group(0)]))[0] else m.group(0)
        text = re.sub(IBAN_RE, iban_sub, text)
    if "email" in kinds:
        text = re.sub(EMAIL_RE, "[EMAIL]", text)
    if "phone" in kinds or "card" in kinds:
        def num_sub(m: re.Match) -> str:
            cls = classify_numbers(pl.Series([m.group(0)])).row(0, named=True)
            if cls["card"] and "card" in kinds:
                return "[CARD]"
            if cls["phone"] and "phone" in kinds:
                lead = m.group(0)[: len(m.group(0)) - len(m.group(0).lstrip(" .-("))]
                return lead + "[PHONE]"
            return m.group(0)
        text = re.sub(NUMBER_RE, num_sub, text)
    return text


def _norm(s: pl.Expr) -> pl.Expr:
    return s.str.to_lowercase().str.replace_all(r"[^\w]+", " ").str.strip_chars()


class EchoFilter(Filter):
    name = "echo"
    config_cls = EchoConfig

    def exprs(self) -> list[pl.Expr]:
        c: EchoConfig = self.config  # type: ignore[assignment]
        r, p = _norm(pl.col("_r")), _norm(pl.col("_p"))
        long_enough = pl.col("_r").str.count_matches(r"\S+") >= c.min_words
        hit = (long_enough & (pl.col("kind") != "prompt") & p.str.contains(r, literal=True)).fill_null(False)
        score = (r.str.len_chars() / pl.max_horizontal(p.str.len_chars(), pl.lit(1))).cast(pl.Float64)
        return [hit.alias(self.col("hit")), pl.when(hit).then(score).otherwise(0.0).alias(self.col("score"))]


class TruncatedFilter(Filter):
    name = "truncated"
    config_cls = TruncatedConfig

    def exprs(self) -> list[pl.Expr]:
        c: TruncatedConfig = self.config  # type: ignore[assignment]
        def truncated(s: pl.Expr) -> pl.Expr:
            t = s.str.strip_chars_end()
            fences = t.str.count_matches("```") % 2 == 1
            unbalanced = pl.any_horizontal(
                t.str.count_matches(re.escape(a)) != t.str.count_matches(re.escape(b))
                for a, b in (("(", ")"), ("[", "]"), ("{", "}")))
            last_line = t.str.extract(r"([^\n]*)$")
            structured = last_line.str.contains(r"^\s*(?:[-*+|>#]|\d+[.)]\s|```|    )")
            mid_sentence = (t.str.count_matches(r"\S+") >= c.min_words) & t.str.contains(r"[a-z,;:\-]$") & ~structured
            return (fences | unbalanced | mid_sentence).fill_null(False)
        return self._on_sides(truncated)


class LanguageFilter(Filter):
    name = "language"
    config_cls = LanguageConfig

    def exprs(self) -> list[pl.Expr]:
        c: LanguageConfig = self.config  # type: ignore[assignment]
        def candidate(s: pl.Expr) -> pl.Expr:
            letters = s.str.count_matches(r"\p{L}")
            words = s.str.count_matches(r"\p{L}+")
            if c.expected == ["en"]:
                # Most English text is recognisable by its function words alone;
                # only the rest goes to langid (which runs per row in Python).
                english = s.str.count_matches(_STOP_RE) >= c.stopword_ratio * words
            else:
                english = pl.lit(False)
            return (letters >= c.min_chars) & ~english
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
                    lang, prob = ident.classify(text)
                    if lang not in c.expected and prob >= c.min_confidence:
                        hit[row[0]], score[row[0]], detail[row[0]] = True, float(prob), lang
        return frame.with_columns(pl.Series(self.col("hit"), hit), pl.Series(self.col("score"), score),
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


def detect(df: pl.DataFrame, config: FilterSuiteConfig | None = None) -> tuple[pl.DataFrame, list[Filter]]:
    """Per-row hit/score/detail columns of every enabled filter (no rows changed)."""
    config = config or FilterSuiteConfig()
    active = [FILTERS[n](c) for n, c in config.filters.items() if c.enabled]
    frame = df.select("kind", "messages", "chosen", "rejected").with_columns(
        prompt_text().alias("_p"), response_text().alias("_r"))
    exprs = [e for f in active for e in f.exprs()]
    if exprs:
        frame = frame.with_columns(exprs)
    for f in active:
        frame = f.post(frame)
        if f.col("detail") not in frame.columns:
            frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(f.col("detail")))
    return frame, active


def _map_contents(df: pl.DataFrame, mask: pl.Series, fn) -> pl.DataFrame:
    """Apply ``fn(str) -> str`` to every turn of the masked rows (Python; hit rows only)."""
    idx = [i for i, m in enumerate(mask.to_list()) if m]
    if not idx:
        return df
    cols = {}
    for col in ("messages", "chosen", "rejected"):
        values = df[col].to_list()
        for i in idx:
            if values[i]:
                values[i] = [{"role": m["role"], "content": fn(m["content"]) if m["content"] else m["content"]}
                             for m in values[i]]
        cols[col] = pl.Series(col, values, dtype=df.schema[col])
    return df.with_columns(**cols)


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
    drop = pl.Series("drop", [False] * n)
    rule = pl.Series("rule", [None] * n, dtype=pl.String)
    rule_score = pl.Series("score", [None] * n, dtype=pl.Float64)
    rows = df
    changed = pl.Series("changed", [False] * n)
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

            fixer = lambda t: ftfy.fix_text(t, uncurl_quotes=False)  # noqa: E731
            todo = hit & ~drop
            rows = _map_contents(rows, todo, fixer)
            # re-check: a row ftfy could not fix is dropped
            recheck, _ = detect(rows.filter(todo), FilterSuiteConfig(
                filters={"mojibake": dataclasses.replace(f.config, action="flag")}))
            still = pl.Series([False] * n)
            if recheck.height:
                idx = [i for i, m in enumerate(todo.to_list()) if m]
                bad = recheck["mojibake.hit"].to_list()
                still = pl.Series([False] * n).scatter([i for i, b in zip(idx, bad) if b], True) \
                    if any(bad) else still
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

    # ledger: one row per dropped row, with every filter that hit it
    hits_list = frame.select(pl.concat_list([
        pl.when(pl.col(c)).then(pl.lit(c.removesuffix(".hit"))).otherwise(None) for c in hit_cols]
    ).list.drop_nulls().alias("h"))["h"] if hit_cols else pl.Series("h", [[]] * n, dtype=pl.List(pl.String))
    details = frame.select(pl.concat_list([
        pl.when(pl.col(f"{x}.detail").is_not_null()).then(pl.lit(x + ": ") + pl.col(f"{x}.detail")).otherwise(None)
        for x in names]).list.drop_nulls().list.join("; ").alias("d"))["d"] if names else pl.Series([""] * n)
    dropped = pl.DataFrame({"row_id": df["id"], "rule": rule, "score": rule_score, "h": hits_list,
                            "d": details, "drop": drop}).filter(pl.col("drop"))
    ledger = new_ledger(
        row_id=dropped["row_id"], stage=["filter"] * dropped.height, rule=dropped["rule"],
        score=dropped["score"],
        detail=dropped.select(pl.struct(filters=pl.col("h"), detail=pl.col("d")).struct.json_encode())
        .to_series() if dropped.height else pl.Series([], dtype=pl.String))

    kept = rows.filter(~drop)
    if bool((changed & ~drop).any()):
        kept = with_ids(kept)

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
