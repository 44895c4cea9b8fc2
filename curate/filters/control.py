"""control: control / non-printable characters (C0, C1, DEL, zero-width, bidi, U+FFFD)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import polars as pl

from .base import Filter, FilterConfig, register
from .scan import scanned

# C0 (but tab, newline, CR), DEL, C1, zero-width and bidi controls, BOM, U+FFFD
CONTROL_RE = r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF\uFFFD]"


@dataclass
class ControlConfig(FilterConfig):
    roles: str = "both"


@register
class ControlFilter(Filter):
    name = "control"
    config_cls = ControlConfig
    help = "control and invisible characters; repair strips them"
    uses_scan = True
    rewrite_action = "repair"

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        n = pl.DataFrame({side: scanned(frame, side)["control"] for side in self.sides}).max_horizontal()
        n = n.cast(pl.Float64)
        return frame.with_columns((n > 0).alias(self.col("hit")), n.alias(self.col("score")),
                                  pl.when(n > 0).then(pl.format("{} control character(s)", n.cast(pl.Int64)))
                                  .alias(self.col("detail")))

    def rewriter(self) -> Callable[[str], str]:
        pattern = re.compile(CONTROL_RE)
        return lambda t: pattern.sub("", t)

    def may_rewrite(self, text: pl.Expr) -> pl.Expr:
        return text.str.contains(CONTROL_RE)
