"""pii: e-mail addresses, phone numbers, payment card numbers and IBANs; redacted by default.

Precision comes from validating each candidate as what it claims to be, not from
its digit count alone:

- card: Luhn *and* an issuer's prefix and length (Visa 16/19, Mastercard 16,
  Amex 15, Discover, JCB, Diners, UnionPay), written as one run or in groups,
  and not an operand of arithmetic (``472547338 + 960397912423686``). EAN-13
  barcodes, invoice and order numbers pass Luhn one time in ten but have no
  issuer shape.
- phone: international (``+`` and 8-15 digits), North American
  (``(415) 555-0134``, ``415-555-0134``) or UK national (``020 7946 0958``,
  ``07700 900123``) shape.
- IBAN: the country's own length (ISO 13616 registry) and the mod-97 check.
- e-mail: the usual local@domain.tld shape.

Why hand-written and not Presidio or phonenumbers: Presidio needs spaCy models
(not available offline here) and runs per text in Python; ``phonenumbers``
validates one candidate at a time in Python. The checks above are vectorized
polars expressions on the candidates (a few per thousand rows), and the tests
measure recall and precision on planted and real data.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable

import polars as pl

from bakeoff.workspace import BakeoffError

from .base import WB, Filter, FilterConfig, register

EMAIL_RE = r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)*\.[A-Za-z]{2,}"
# candidates for phone and card numbers: three or more digit groups joined by
# single separators ("+1 (415) 555-0134", "4539 1488 0343 6467", "+49 30 1581214"),
# or one long run of digits; "1,234.5" or "(521.5 - 400.0)" are not candidates
_GROUP = r"(?:\(\d{1,4}\)|\d{1,8})"
# UK national ("07700 900123", "(020) 7946 0958"): two groups only, so it needs
# word boundaries, or it would start inside a longer number ("355909190063-746")
_UK = r"(?:\(0\d{2,4}\)|<b>0\d{2,4})[ \-]?\d{3,4}[ \-]?\d{3,4}<b>"
NUMBER_RE = r"\+?" + _GROUP + r"(?:[ .\-]{1,2}" + _GROUP + r"){2,}|\d{13,19}|" + _UK.replace("<b>", WB)
_NUMBER_PY = r"\+?" + _GROUP + r"(?:[ .\-]{1,2}" + _GROUP + r"){2,}|\d{13,19}|" + _UK.replace("<b>", r"\b")
IBAN_RE = WB + r"[A-Z]{2}\d{2} ?[A-Z0-9]{4}(?: ?[A-Z0-9]{1,4}){2,7}" + WB
_IBAN_PY = re.compile(r"\b[A-Z]{2}\d{2} ?[A-Z0-9]{4}(?: ?[A-Z0-9]{1,4}){2,7}\b")
_NANP_RE = r"^(?:\+?1[ .\-]?)?(?:\([2-9]\d{2}\)|[2-9]\d{2})[ .\-]?\d{3}[ .\-]\d{4}$"
_UK_RE = r"^(?:\(0\d{2,4}\)|0\d{2,4})[ \-]?\d{3,4}[ \-]?\d{3,4}$"
#: issuer prefixes and lengths of payment cards (digits only)
_CARD_RE = (r"^(?:4\d{15}|4\d{18}|5[1-5]\d{14}|2(?:2[2-9][1-9]|2[3-9]\d|[3-6]\d{2}|7[01]\d|720)\d{12}"
            r"|3[47]\d{13}|(?:6011|65\d{2}|64[4-9]\d)\d{12,15}|35(?:2[89]|[3-8]\d)\d{12,15}"
            r"|3(?:0[0-5]|[689]\d)\d{11,13}|62\d{14,17})$")
#: how a card is written: one run, or groups of 4 (Amex 4-6-5) with one separator kind
_CARD_SHAPE = r"^(?:\d{13,19}|\d{4}(?:[ \-]\d{4}){2,3}(?:[ \-]\d{1,3})?|\d{4}[ \-]\d{6}[ \-]\d{4,5})$"
#: IBAN length per country (ISO 13616 registry)
IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22, "BR": 29,
    "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28, "EE": 20, "EG": 29,
    "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23, "GL": 18, "GR": 27, "GT": 28,
    "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26, "IT": 27, "JO": 30, "KW": 30, "KZ": 20,
    "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20, "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19,
    "MR": 27, "MT": 31, "MU": 30, "NL": 18, "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29,
    "RO": 24, "RS": 22, "SA": 24, "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28,
    "TL": 23, "TN": 24, "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}
_OPERATOR = r"[-+*/=×÷^]"


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
    """Country length and mod-97 check of IBANs (spaces allowed, upper case)."""
    compact = ibans.str.replace_all(" ", "")
    rearranged = compact.str.slice(4) + compact.str.slice(0, 4)
    # letters -> two digits (A=10 ... Z=35), digits stay
    numeric = rearranged
    for k in range(26):
        numeric = numeric.str.replace_all(chr(65 + k), str(10 + k), literal=True)
    ok = _digits_checksum(numeric, "mod97")
    length = compact.str.slice(0, 2).replace_strict(IBAN_LENGTHS, default=0, return_dtype=pl.Int64)
    return ok & (compact.str.len_chars() == length)


def classify_numbers(cands: pl.Series) -> pl.DataFrame:
    """For number-like candidates: is it a card (issuer prefix and length, Luhn,
    card-like grouping) or a phone (international, North American or UK shape)?"""
    df = pl.DataFrame({"c": cands.str.strip_chars(" .-")}).with_columns(
        pl.col("c").str.replace_all(r"\D", "").alias("d"))
    n = pl.col("d").str.len_chars()
    card = luhn_ok(df["d"]) & df["d"].str.contains(_CARD_RE) & df["c"].str.contains(_CARD_SHAPE)
    phone = ((pl.col("c").str.starts_with("+") & n.is_between(8, 15))
             | pl.col("c").str.contains(_NANP_RE) | (pl.col("c").str.contains(_UK_RE) & n.is_between(10, 11)))
    return df.with_columns(card.alias("card")).with_columns((phone & ~pl.col("card")).alias("phone"))


def _in_arithmetic(text: str, number: str) -> bool:
    """Is ``number`` an operand in ``text`` (an operator right before or after it)?"""
    pattern = _OPERATOR + r"\s*" + re.escape(number) + "|" + re.escape(number) + r"\s*" + _OPERATOR
    return re.search(pattern, text) is not None


@dataclass
class PiiConfig(FilterConfig):
    roles: str = "both"
    action: str = "redact"
    kinds: list[str] = field(default_factory=lambda: ["email", "phone", "card", "iban"])


@register
class PiiFilter(Filter):
    name = "pii"
    config_cls = PiiConfig
    help = "e-mail, phone (international, US, UK), payment card (issuer, Luhn), IBAN (country length, mod 97)"
    rewrite_action = "redact"
    KINDS = ("email", "phone", "card", "iban")

    def __init__(self, config: FilterConfig | None = None):
        super().__init__(config)
        bad = set(self.config.kinds) - set(self.KINDS)  # type: ignore[attr-defined]
        if bad:
            raise BakeoffError(f"filter pii: unknown kinds {sorted(bad)}; expected {list(self.KINDS)}")

    def candidate(self, s: pl.Expr) -> pl.Expr:
        """A text that may hold PII: one simple test per kind, OR-ed (one big
        alternation is much slower)."""
        kinds = self.config.kinds  # type: ignore[attr-defined]
        tests = []
        if "email" in kinds:
            tests.append(s.str.contains("@", literal=True))
        if "phone" in kinds or "card" in kinds:
            tests.append(s.str.contains(NUMBER_RE))
        if "iban" in kinds:
            tests.append(s.str.contains(IBAN_RE))
        return pl.any_horizontal(tests) if tests else pl.lit(False)

    def exprs(self) -> list[pl.Expr]:
        # cheap candidate test; exact validation (Luhn, mod 97, phone shape) in post()
        return self._on_sides(self.candidate)

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
                    card = cls["card"]
                    if bool(card.any()):  # few: the arithmetic check in Python
                        texts = dict(zip(t["_i"].to_list(), t["t"].to_list()))
                        ok = [not (is_card and _in_arithmetic(texts[i], c.strip(" .-")))
                              for i, c, is_card in zip(nums["_i"].to_list(), nums["c"].to_list(), card.to_list())]
                        cls = cls.with_columns(pl.col("card") & pl.Series(ok, dtype=pl.Boolean))
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



    def rewriter(self) -> Callable[[str], str]:
        kinds = tuple(self.config.kinds)  # type: ignore[attr-defined]
        return lambda t: redact_pii(t, kinds)

    def may_rewrite(self, text: pl.Expr) -> pl.Expr:
        # redact_pii replaces matches of EMAIL_RE (which has an "@"), _NUMBER_PY and
        # _IBAN_PY; their Rust twins here use ASCII word boundaries, which match
        # wherever Python's Unicode ones do (and more): a superset, so no miss
        return self.candidate(text)

    def example_text(self, text: str) -> str:
        # centred on the (redacted) match, so the report does not spread it
        text = redact_pii(text or "")
        m = re.search(r"\[(?:EMAIL|PHONE|CARD|IBAN)\]", text)
        return "…" + text[m.start() - 70:] if m and m.start() > 80 else text


def _luhn_valid(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def _iban_valid(iban: str) -> bool:
    s = iban.replace(" ", "")
    if len(s) != IBAN_LENGTHS.get(s[:2], 0):
        return False
    return int("".join(str(int(ch, 36)) for ch in s[4:] + s[:4])) % 97 == 1


def _number_kind(candidate: str, text: str) -> tuple[bool, bool]:
    """(is a card, is a phone) for one match; the scalar twin of classify_numbers."""
    c = candidate.strip(" .-")
    d = re.sub(r"\D", "", c)
    card = (_luhn_valid(d) and re.search(_CARD_RE, d) is not None and re.search(_CARD_SHAPE, c) is not None
            and not _in_arithmetic(text, c))
    phone = not card and ((c.startswith("+") and 8 <= len(d) <= 15) or re.search(_NANP_RE, c) is not None
                          or (re.search(_UK_RE, c) is not None and 10 <= len(d) <= 11))
    return card, phone


def redact_pii(text: str, kinds: list[str] | tuple[str, ...] = PiiFilter.KINDS) -> str:
    """Replace validated PII in ``text`` with [EMAIL], [PHONE], [CARD], [IBAN].
    Only the number itself is replaced: the punctuation around it stays, and a
    bracket that belongs to the number (``(415) 555-0134``) goes with it."""
    if not text:
        return text
    if "iban" in kinds:
        text = _IBAN_PY.sub(lambda m: "[IBAN]" if _iban_valid(m.group(0)) else m.group(0), text)
    if "email" in kinds:
        text = re.sub(EMAIL_RE, "[EMAIL]", text)
    if "phone" in kinds or "card" in kinds:
        original = text

        def num_sub(m: re.Match) -> str:
            raw = m.group(0)
            card, phone = _number_kind(raw, original)
            tag = "[CARD]" if card and "card" in kinds else "[PHONE]" if phone and "phone" in kinds else None
            if tag is None:
                return raw
            core = raw.strip(" .-")
            if core.startswith("(") and ")" not in core[1:]:  # an opening bracket of the sentence
                core = core[1:]
            start = raw.index(core)
            return raw[:start] + tag + raw[start + len(core):]
        text = re.sub(_NUMBER_PY, num_sub, text)
    return text
