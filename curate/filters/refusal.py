"""refusal: the answer declines the task, or disclaims itself ("As an AI, I cannot ...").

A refusal is a *statement about the assistant's own inability or unwillingness*,
so each pattern needs two parts: who (I, as an AI ...) and a refusing verb
phrase aimed at the task (help, assist, provide, access, create ...). That
keeps "I'm sorry, but I'm unable to come into work today" (a letter the user
asked for) and helpful answers that open with "As an AI assistant, I would ..."
while catching paraphrases ("I must decline", "That's not something I can help
with", "I won't be able to assist with this request").
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from .base import WB, Filter, FilterConfig, register

_APOS = "['\u2019]"
_NEG = (rf"(?:can{_APOS}?t|cannot|can not|am unable to|{_APOS}m unable to|am not able to|{_APOS}m not able to|"
        rf"won{_APOS}t be able to|will not be able to|won{_APOS}t|will not|am not in a position to|"
        rf"{_APOS}m not in a position to|am not allowed to|{_APOS}m not allowed to|am not permitted to|"
        rf"am not comfortable|{_APOS}m not comfortable|do not feel comfortable|don{_APOS}t feel comfortable)")
#: what an assistant declines to do
_TASK = (r"(?:help|assist|provid|offer|give|share|access|browse|retrieve|look up|search|read|view|see|open|"
         r"create|draw|display|generate|produce|write|compose|make|answer|respond|comply|fulfil|fulfill|"
         r"complete|perform|do (?:that|this|so)|process|engage|support|discuss|disclose|recommend|predict|"
         r"estimate|calculate|interpret|analy[sz]e|summari[sz]e|translate|verify|confirm|guarantee)\w*")
_AI = r"(?:as an ai|as a (?:large )?language model|as an ai (?:language )?model|(?:i am|i{a}m) (?:just |only )?an ai)".format(a=_APOS)

REFUSAL_PATTERNS = [
    # "As an AI, I don't have access to real-time data" / "As an AI language model, I cannot ..."
    rf"{_AI}\b[^.!?\n]{{0,120}}?\b(?:{_NEG}|do not|don{_APOS}t|am not|{_APOS}m not|not capable|lack)\b",
    # "I'm sorry, but I can't help with that" (an apology followed by a refusal of the task)
    rf"(?:sorry|apologi[sz]e|apologies|unfortunately|regrettably)\b[^.!?\n]{{0,60}}?\bi\s*{_NEG}\s+(?:\w+\s+){{0,2}}?{_TASK}\b",
    rf"(?:sorry|apologi[sz]e|apologies|unfortunately|regrettably)\b[^.!?\n]{{0,60}}?\b{_AI}",
    # plain refusals of the task, anywhere
    rf"\bi\s*{_NEG}\s+(?:\w+\s+){{0,2}}?{_TASK}\s+(?:you\s+)?with\s+(?:that|this|your|the|such)\b",
    rf"\bi\s*(?:must|have to|need to|{_APOS}ll have to|will have to|am going to have to)\s+(?:respectfully\s+|politely\s+)?(?:decline|refuse|pass on)\b",
    rf"\b(?:that|this|it){_APOS}?s? (?:is )?not something i (?:can|am able to|{_APOS}m able to|will|{_APOS}m willing to|am willing to)\s+{_TASK}",
    rf"\bi{_APOS}?d rather not\b",
    r"\b(?:goes|go|is) against my (?:guidelines|policies|programming|principles|ethical guidelines)\b",
    rf"\bit (?:would|is|{_APOS}s) (?:not be )?(?:inappropriate|not appropriate|unethical) for me to\b",
    rf"\bi do(?: not|n{_APOS}t) have (?:access to|the ability to) (?:real-time|the internet|browse|external|current|personal)",
    r"\bmy (?:knowledge cutoff|training data) (?:is|only goes)\b",
    # a refusal that opens the answer: "I cannot provide ...", "I won't write that."
    rf"\A\W*i\s*{_NEG}\s+(?:\w+\s+){{0,2}}?{_TASK}\b",
]


@dataclass
class RefusalConfig(FilterConfig):
    extra_patterns: list[str] = field(default_factory=list)


@register
class RefusalFilter(Filter):
    name = "refusal"
    config_cls = RefusalConfig
    help = "the answer declines or disclaims the task ('As an AI, I cannot ...', 'I must decline')"

    def pattern(self) -> str:
        c: RefusalConfig = self.config  # type: ignore[assignment]
        pattern = "(?i)" + "|".join(f"(?:{p})" for p in [*REFUSAL_PATTERNS, *c.extra_patterns])
        return pattern.replace(r"\b", WB)

    def exprs(self) -> list[pl.Expr]:
        pattern = self.pattern()
        return self._on_sides(lambda s: s.str.contains(pattern))

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        # the phrase that matched, for the ledger: extracted on the hit rows only
        # (a when/then over all rows would run the extract on every row)
        pattern = self.pattern()
        idx = frame[self.col("hit")].arg_true()
        detail = pl.Series(self.col("detail"), [None] * frame.height, dtype=pl.String)
        if idx.len():
            said = frame[idx].select(pl.lit("says: ") + pl.coalesce(
                [pl.col(s).str.extract(f"({pattern})", 1) for s in self.sides])).to_series()
            detail = detail.scatter(idx, said)
        return frame.with_columns(detail)
