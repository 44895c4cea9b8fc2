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


def _question(prompt: pl.Expr) -> pl.Expr:
    """The last paragraph of the prompt, without a "Question:" label."""
    return (prompt.str.strip_chars().str.extract(r"(?s)(?:^|\n[ \t]*\n)([^\n]*(?:\n[^\n]+)*)$", 1)
            .str.replace(r"^(?i)(?:question|q|instruction|task)\s*:\s*", ""))


def _norm(text: pl.Expr) -> pl.Expr:
    # ASCII punctuation classes: a Unicode class ([^\p{L}\p{N}]) costs several times more
    return text.str.to_lowercase().str.replace_all(r"[\s[:punct:]]+", " ").str.strip_chars()


@register
class EchoFilter(Filter):
    name = "echo"
    config_cls = EchoConfig
    help = ("the answer repeats the question or most of the prompt (off by default: on the real "
            "Alpaca file 0 of its 5 hits were wrong answers -- they were editing tasks whose answer is the input)")

    def exprs(self) -> list[pl.Expr]:
        # on every row only what costs nothing: an answer of min_words words or more
        c: EchoConfig = self.config  # type: ignore[assignment]
        r = pl.col("_r").str.strip_chars()
        cand = ((r.str.count_matches(" ", literal=True) >= c.min_words - 1) & (pl.col("kind") != "prompt")).fill_null(False)
        return [cand.alias(self.col("hit"))]

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        c: EchoConfig = self.config  # type: ignore[assignment]
        hit = pl.Series([False] * frame.height, dtype=pl.Boolean)
        score = pl.Series([0.0] * frame.height, dtype=pl.Float64)
        idx = frame[self.col("hit")].arg_true()
        if idx.len():
            # a cheap test on raw lengths (normalising changes a length by its
            # punctuation and spaces only), each length computed once (in one
            # expression polars would evaluate a repeated sub-expression again)
            lo = c.min_share * 0.7

            def close(a: str, b: str) -> pl.Expr:
                return (pl.col(b) > 0) & (pl.col(a) >= lo * pl.col(b)) & (pl.col(b) >= lo * pl.col(a))

            lens = frame[idx].select(pl.col("_r").str.strip_chars().str.len_chars().alias("rl"),
                                     _question(pl.col("_p")).str.len_chars().alias("ql"),
                                     pl.col("_p").str.len_chars().alias("pl"))
            idx = idx.filter(lens.select((close("rl", "ql") | close("rl", "pl")).fill_null(False)).to_series())
        if idx.len():
            # normalising and the copy tests on those candidates only
            sub = frame[idx].select(r=_norm(pl.col("_r")), q=_norm(_question(pl.col("_p"))), p=_norm(pl.col("_p")))
            sub = sub.with_columns(rl=pl.col("r").str.len_chars(), ql=pl.col("q").str.len_chars(),
                                   pl=pl.col("p").str.len_chars())
            rl = pl.col("rl")

            def copy_of(whole: str, wl: pl.Expr) -> pl.Expr:
                return ((pl.col(whole).str.contains(pl.col("r"), literal=True) & (rl >= c.min_share * wl))
                        | (pl.col("r").str.contains(pl.col(whole), literal=True) & (wl >= c.min_share * rl) & (wl > 0)))

            got = sub.select((copy_of("q", pl.col("ql")) | copy_of("p", pl.col("pl"))).fill_null(False).alias("h"),
                             (rl / pl.max_horizontal(pl.col("ql"), pl.lit(1))).cast(pl.Float64).alias("s"))
            hit = hit.scatter(idx, got["h"])
            score = score.scatter(idx, pl.select(pl.when(got["h"]).then(got["s"]).otherwise(0.0)).to_series())
        return frame.with_columns(
            hit.alias(self.col("hit")), score.alias(self.col("score")),
            pl.when(hit).then(pl.lit("the answer repeats the question")).alias(self.col("detail")))
