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

from .base import WB, Filter, FilterConfig, register

# words a sentence does not end on
_DANGLING = ("the|a|an|of|to|and|or|in|for|with|by|from|at|on|as|is|was|were|are|be|been|that|which|than|its|"
             "their|our|his|her|this|these|those|but|if|because|while|per|into|over|between|such|whose|would|"
             "will|can|could|should|must|has|have|had|not")
# a sentence end followed by more text
_SENTENCE_END = r"[\p{L}0-9)\]%\"”'][.!?][\"”')\]]?\s+[\"“(]?[A-Z0-9]"
# the last line is a list item, table row, quote, heading, code or a short label/signature
_STRUCTURED_END = r"(?:^|\n)[ \t]*(?:[-*+•]\s|[|>#]|\d+[.)]\s|[A-Za-z][.)]\s|```|    )[^\n]*$|(?:^|\n)[^\n ]*(?: [^\n ]*){0,3}$"


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
        # a cheap look at the last character on every row; the rules in post(),
        # on the rows that end like a cut (a letter, digit, comma, currency sign ...)
        return [pl.col(side).str.strip_chars_end().str.contains(r"[\p{Ll}\p{N},;:\-–$€£¥]$").fill_null(False)
                .alias(self.col(f"end{side}")) for side in self.sides]

    def _rules(self, side: str) -> tuple[pl.Expr, pl.Expr]:
        """(cut, mid_sentence) for one side (see the module doc)."""
        t = pl.col(side).str.strip_chars_end()
        words = t.str.count_matches(" ", literal=True) + 1
        # ends inside an open bracket on its last line: "(419.9 + 36"
        open_bracket = t.str.contains(r"[(\[{][^)\]}\n]*$")
        # ends mid-number: "$1,2", "1,23" (a thousands group is three digits), a bare currency sign
        mid_number = t.str.contains(r"(?:\d,\d{1,2}|[$€£¥])$")
        # written in sentences: starts like one, or has a sentence end inside (an
        # extracted span starts lower case and has none: "primarily due to ...")
        sentences = t.str.contains(r"^[\s\"“'(*#]*[\p{Lu}\p{N}]") | t.str.contains(_SENTENCE_END)
        # ends on a word or a mark no sentence ends on: "... of the", "... as follows:"
        # (a comma ends many lists of spans: judged on longer texts only)
        dangling = sentences & ((t.str.contains(r"(?i)" + WB + r"(?:" + _DANGLING + r")$") & (words >= 5))
                                | (t.str.contains(r"[,;:\-–]$") & (words >= 12)))
        # ends mid-sentence: written in sentences, the last one has no end mark
        mid_sentence = (t.str.contains(r"\p{Ll}$") & sentences & t.str.contains(_SENTENCE_END)
                        & (t.str.extract(r"[.!?][\"”')\]]?\s+([^.!?]*)$", 1)
                           .str.count_matches(" ", literal=True) >= 3))
        long_enough = words >= self.config.min_words
        prose_end = ~t.str.contains(_STRUCTURED_END)
        # a cut number or bracket is a cut wherever it is; a sentence-like end
        # only counts outside lists, tables, headings and code
        return ((long_enough & (open_bracket | mid_number | dangling)).fill_null(False),
                (long_enough & mid_sentence & prose_end).fill_null(False))

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        from .scan import scanned

        hits = []
        for side in self.sides:
            sc = scanned(frame, side)
            # an odd number of ``` fences: the answer ends inside a code block
            idx = frame[self.col(f"end{side}")].arg_true()
            cut = pl.Series([False] * frame.height, dtype=pl.Boolean)
            mid = cut.clone()
            if idx.len():  # every rule needs min_words words: the rest are never judged
                texts = frame.select(side)[idx]
                enough = texts.select(pl.col(side).str.strip_chars_end().str.count_matches(" ", literal=True) + 1
                                      >= self.config.min_words).to_series().fill_null(False)
                idx, texts = idx.filter(enough), texts.filter(enough)
            if idx.len():
                rules = texts.select(*[e.alias(n) for e, n in zip(self._rules(side), ("cut", "mid"))])
                cut, mid = cut.scatter(idx, rules["cut"]), mid.scatter(idx, rules["mid"])
            hit = cut | (sc["```"] % 2 == 1)
            # mid-sentence: unless the answer's last word is a whole word of the
            # prompt -- an extracted span ends where its source sentence does
            # ("... travel costs and third party subcontracting"); a cut word
            # ("... reported in the annual fil") is not in the prompt
            idx = mid.arg_true()
            if idx.len():
                # (a whole word of the prompt: one of its maximal \w runs, compared in
                # lower case -- one regex per row, built from the word, cost more
                # than the rest of this filter)
                sub = frame.select(side, "_p")[idx].select(
                    pl.col(side).str.strip_chars_end().str.extract(r"(\p{L}+)$", 1).str.to_lowercase().alias("w"),
                    pl.col("_p").str.to_lowercase().str.extract_all(r"\w+").alias("p"))
                in_prompt = sub.select(pl.col("p").list.contains(pl.col("w")).fill_null(False))["p"]
                hit = hit | pl.Series([False] * frame.height, dtype=pl.Boolean).scatter(idx, ~in_prompt) \
                    if side == "_r" else hit | mid
            hits.append(hit)
        hit = hits[0] if len(hits) == 1 else hits[0] | hits[1]
        return frame.drop([self.col(f"end{s}") for s in self.sides]).with_columns(
            hit.alias(self.col("hit")), hit.cast(pl.Float64).alias(self.col("score")),
            pl.when(hit).then(pl.lit("ends: …") + pl.coalesce(
                [pl.col(s).str.strip_chars_end().str.slice(-40) for s in self.sides]))
            .alias(self.col("detail")))


