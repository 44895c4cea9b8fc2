"""empty: an empty or whitespace-only turn."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from .base import Filter, FilterConfig, register, side_contents


@dataclass
class EmptyConfig(FilterConfig):
    roles: str = "both"


@register
class EmptyFilter(Filter):
    name = "empty"
    help = "an empty or whitespace-only turn"
    config_cls = EmptyConfig
    row_level = True

    def exprs(self) -> list[pl.Expr]:
        def empty_turn(side: str) -> pl.Expr:
            blank = side_contents(side).list.eval(
                pl.element().fill_null("").str.strip_chars().str.len_chars() == 0).list.any()
            if side == "_r":  # an sft row with no assistant turn is also empty on that side
                blank = blank | ((pl.col("kind") != "prompt") & (pl.col("_r").str.strip_chars() == ""))
            return blank.fill_null(True)
        hits = [empty_turn(s) for s in self.sides]
        hit = pl.any_horizontal(hits) if len(hits) > 1 else hits[0]
        return [hit.alias(self.col("hit")), hit.cast(pl.Float64).alias(self.col("score"))]
