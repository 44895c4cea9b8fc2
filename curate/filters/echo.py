"""echo: the answer repeats the question (or most of the prompt) instead of answering.

An answer copied from the *context* is often the right answer (extractive QA:
"the Board of Directors" is in the table's notes), so a copy of some part of
the prompt is not an echo. Only an answer that is (nearly) the question or
instruction itself -- the prompt's last paragraph -- or most of the whole
prompt is. Compared after lowercasing and collapsing punctuation and spaces.

Off by default: the first version (any 4+-word answer found in the prompt) was
right on about 0 of 914 hits judged on real data; this version hits 0 TAT-QA and
0 DPO rows and 5 Alpaca rows, all 5 wrong (editing tasks -- "add a comma",
"divide into paragraphs" -- whose correct answer is nearly the input): precision
0 of 5, so it stays off.
"""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from .base import Filter, FilterConfig, register


@dataclass
class EchoConfig(FilterConfig):
    enabled: bool = False
    min_words: int = 4
    min_share: float = 0.8      # the answer is >= this share of the question (or prompt), or the reverse


def _norm(text: pl.Expr) -> pl.Expr:
    return text.str.to_lowercase().str.replace_all(r"[^\p{L}\p{N}]+", " ").str.strip_chars()


@register
class EchoFilter(Filter):
    name = "echo"
    config_cls = EchoConfig
    help = ("the answer repeats the question or most of the prompt (off by default: on the real "
            "Alpaca file 0 of its 5 hits were wrong answers -- they were editing tasks whose answer is the input)")

    def exprs(self) -> list[pl.Expr]:
        c: EchoConfig = self.config  # type: ignore[assignment]
        r = _norm(pl.col("_r"))
        prompt = _norm(pl.col("_p"))
        question = _norm(pl.col("_p").str.strip_chars().str.extract(r"(?s)(?:^|\n[ \t]*\n)([^\n]*(?:\n[^\n]+)*)$", 1)
                         .str.replace(r"^(?i)(?:question|q|instruction|task)\s*:\s*", ""))
        rl, ql, pl_ = r.str.len_chars(), question.str.len_chars(), prompt.str.len_chars()

        def copy_of(whole: pl.Expr, whole_len: pl.Expr) -> pl.Expr:
            return ((whole.str.contains(r, literal=True) & (rl >= c.min_share * whole_len))
                    | (r.str.contains(whole, literal=True) & (whole_len >= c.min_share * rl) & (whole_len > 0)))

        long_enough = r.str.count_matches(" ", literal=True) >= c.min_words - 1
        hit = (long_enough & (pl.col("kind") != "prompt")
               & (copy_of(question, ql) | copy_of(prompt, pl_))).fill_null(False)
        score = (rl / pl.max_horizontal(ql, pl.lit(1))).cast(pl.Float64)
        return [hit.alias(self.col("hit")), pl.when(hit).then(score).otherwise(0.0).alias(self.col("score")),
                pl.when(hit).then(pl.lit("the answer repeats the question")).alias(self.col("detail"))]
