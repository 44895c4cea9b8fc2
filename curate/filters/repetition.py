"""repetition: the same lines or word n-grams over and over (a model stuck in a loop).

Gopher's thresholds were set for web pages; chat answers are full of markdown
tables (rows of ``|---|``), code, numbered lists and hashtags that repeat by
design. So the statistics are taken on the *prose*: table rows, fenced code and
list markers are removed first, and ``#`` (hashtags, headings) is not counted as
a symbol.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import polars as pl

from .base import Filter, FilterConfig, register, without_code_and_tables
from .scan import dup_ngram_fraction, piece_stats


@dataclass
class RepetitionConfig(FilterConfig):
    max_dup_line_fraction: float = 0.5
    ngram: int = 5
    max_dup_ngram_fraction: float = 0.5
    max_symbol_word_ratio: float = 0.1
    symbols: list[str] = field(default_factory=lambda: ["...", "…"])
    min_words: int = 50           # shorter texts are not judged on n-grams (two copies of a title would be)


def prose(text: pl.Expr) -> pl.Expr:
    """The text without fenced code, markdown table rows, list markers and
    short lines (headings, labels, signatures: they repeat by design)."""
    return (without_code_and_tables(text)
            .str.replace_all(r"(?m)^[ \t]*(?:[-*+>]|\d+[.)]|[A-Za-z][.)])[ \t]+", "")
            .str.replace_all(r"(?m)^[^ \n]*(?: [^ \n]*){0,2}$", ""))


@register
class RepetitionFilter(Filter):
    """Gopher-style repetition (Rae et al. 2021): duplicate-line fraction,
    duplicate word n-gram fraction, symbol-to-word ratio -- on the prose of a
    chat answer (see ``prose``)."""

    name = "repetition"
    config_cls = RepetitionConfig
    help = "the same line or word 5-gram repeated (Gopher), on prose: tables, code, list markers left out"

    def exprs(self) -> list[pl.Expr]:
        c: RepetitionConfig = self.config  # type: ignore[assignment]
        # symbol counts here (literal searches, cheap, batched with the other
        # filters); line/word statistics in post() by the piece_stats kernel
        return [sum(pl.col(side).str.count_matches(sym, literal=True) for sym in c.symbols)
                .cast(pl.Int64).alias(self.col(f"sym{side}")) for side in self.sides] + [
            prose(pl.col(side)).alias(self.col(f"prose{side}")) for side in self.sides]

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        c: RepetitionConfig = self.config  # type: ignore[assignment]
        hits, scores, cands = [], [], []
        st = {side: piece_stats(frame[self.col(f"prose{side}")]) for side in self.sides}
        cols = {}
        for side in self.sides:
            for k, v in st[side].to_dict().items():
                cols[f"{k}{side}"] = v
        calc = pl.DataFrame(cols).with_columns(frame.select([self.col(f"sym{side}") for side in self.sides]))
        for side in self.sides:
            n_lines, uniq = pl.col(f"n_lines{side}"), pl.col(f"u_lines{side}")
            nw, nu = pl.col(f"n_words{side}"), pl.col(f"u_words{side}")
            # duplicate-line fraction over the non-empty lines (of 4 or more: a title
            # repeated once is not a loop)
            dup_lines = pl.when(n_lines >= 4).then(1 - uniq / n_lines).otherwise(0.0)
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
                frac = dup_ngram_fraction(frame[self.col(f"prose{side}")].gather(idx), c.ngram)
                full = pl.Series([0.0] * frame.height, dtype=pl.Float64).scatter(idx, frac)
                hit = hit | (full > c.max_dup_ngram_fraction)
                score = pl.DataFrame({"a": score, "b": full / c.max_dup_ngram_fraction}).select(
                    pl.max_horizontal("a", "b").alias(score.name)).to_series()
        return frame.drop([self.col(f"{k}{s}") for s in self.sides for k in ("sym", "prose")]).with_columns(
            hit.alias(self.col("hit")), score.alias(self.col("score")))
