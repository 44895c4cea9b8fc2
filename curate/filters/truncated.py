"""truncated: an answer cut off -- mid-sentence, mid-word, mid-number, inside a
bracket or a code block.

What it does *not* flag: lists of spans (``$417 million, $146 million``,
``Germany, Ghana, India``), names, addresses, titles and short extractive
answers, which end in a lowercase letter without being cut. A cut is only
visible where the answer is written in sentences, so the mid-sentence rule
needs an earlier complete sentence, and the end must not be a list item,
table row, heading, signature or code.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from .base import Filter, FilterConfig, register

# words a sentence does not end on
_DANGLING = ("the|a|an|of|to|and|or|in|for|with|by|from|at|on|as|is|was|were|are|be|been|that|which|than|its|"
             "their|our|his|her|this|these|those|but|if|because|while|per|into|over|between|such|whose|would|"
             "will|can|could|should|must|has|have|had|not")
# a sentence end followed by more text
_SENTENCE_END = r"[a-z0-9)\]%][.!?][\"”')\]]?\s+[\"“(]?[A-Z0-9]"
# the last line is a list item, table row, quote, heading, code or a short label/signature
_STRUCTURED_END = r"(?:^|\n)[ \t]*(?:[-*+|>#•]|\d+[.)]\s|[A-Za-z][.)]\s|```|    )[^\n]*$|(?:^|\n)[^\n ]*(?: [^\n ]*){0,3}$"


@dataclass
class TruncatedConfig(FilterConfig):
    min_words: int = 4      # shorter answers ('Net income') are never judged


@register
class TruncatedFilter(Filter):
    name = "truncated"
    config_cls = TruncatedConfig
    help = "cut mid-sentence, mid-word or mid-number, or inside an open bracket or code block"
    uses_scan = True

    def exprs(self) -> list[pl.Expr]:
        out = []
        for side in self.sides:
            t = pl.col(side).str.strip_chars_end()
            words = t.str.count_matches(" ", literal=True) + 1
            # ends inside an open bracket on its last line: "(419.9 + 36"
            open_bracket = t.str.contains(r"[(\[{][^)\]}\n]*$")
            # ends mid-number: "$1,2", "1,23" (a thousands group is three digits), a bare currency sign
            mid_number = t.str.contains(r"(?:\d,\d{0,2}|[$€£¥])$")
            # written in sentences (an extracted span starts lower case: "primarily due to ...")
            sentences = t.str.contains(r"^[\s\"“'(*#]*[\p{Lu}\p{N}]")
            # ends on a word or a mark no sentence ends on: "... of the", "... as follows:"
            dangling = t.str.contains(r"(?i)(?:[,;:\-–]|\b(?:" + _DANGLING + r"))$") & (words >= 8) & sentences
            # ends mid-sentence: written in sentences, the last one has no end mark
            mid_sentence = (t.str.contains(r"\p{Ll}$") & sentences & t.str.contains(_SENTENCE_END)
                            & (t.str.extract(r"[.!?][\"”')\]]?\s+([^.!?]*)$", 1)
                               .str.count_matches(" ", literal=True) >= 3))
            cut = ((words >= self.config.min_words) & (open_bracket | mid_number | dangling | mid_sentence)
                   & ~t.str.contains(_STRUCTURED_END))
            out.append(cut.fill_null(False).alias(self.col(f"cut{side}")))
        return out

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        from .scan import scanned

        hits = []
        for side in self.sides:
            sc = scanned(frame, side)
            # an odd number of ``` fences: the answer ends inside a code block
            hits.append(frame[self.col(f"cut{side}")] | (sc["```"] % 2 == 1))
        hit = hits[0] if len(hits) == 1 else hits[0] | hits[1]
        return frame.drop([self.col(f"cut{s}") for s in self.sides]).with_columns(
            hit.alias(self.col("hit")), hit.cast(pl.Float64).alias(self.col("score")),
            pl.when(hit).then(pl.lit("ends: …") + pl.coalesce(
                [pl.col(s).str.strip_chars_end().str.slice(-40) for s in self.sides]))
            .alias(self.col("detail")))


