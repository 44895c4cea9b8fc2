"""mojibake: UTF-8 decoded as Windows-1252 and the like (ftfy), repaired by default.

Runs before ``control``: mojibake often contains C1 control characters
(``â€\x9d``), and a row ftfy can repair must not be dropped for them first.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import polars as pl

from .base import Filter, FilterConfig, register
from .scan import scanned


@dataclass
class MojibakeConfig(FilterConfig):
    roles: str = "both"
    action: str = "repair"


def rust_regex(py_pattern: str) -> str:
    """A Python ``re.VERBOSE`` pattern as a Rust-regex pattern with the same
    meaning: Rust's verbose mode also drops whitespace (and '#') inside character
    classes, Python's keeps them, so those are escaped."""
    out, in_class, i = [], False, 0
    while i < len(py_pattern):
        ch = py_pattern[i]
        if ch == "\\":
            out.append(py_pattern[i:i + 2])
            i += 2
            continue
        if in_class:
            if ch == "]" and out[-1] != "[":
                in_class = False
            elif ch.isspace() or ch == "#":
                out.append(f"\\x{{{ord(ch):x}}}")
                i += 1
                continue
        elif ch == "[":
            in_class = True
        out.append(ch)
        i += 1
    return "(?x)" + "".join(out)


_BADNESS_RE: str | None = None


def ftfy_badness_re() -> str:
    """ftfy's mojibake detector (``ftfy.badness.BADNESS_RE``) for polars: the same
    matches (tested against ``ftfy.badness.badness``), run by the Rust engine
    over the whole column -- ~200x faster than calling ftfy per row."""
    global _BADNESS_RE
    if _BADNESS_RE is None:
        from ftfy.badness import BADNESS_RE

        _BADNESS_RE = rust_regex(BADNESS_RE.pattern)
    return _BADNESS_RE


@register
class MojibakeFilter(Filter):
    """Mojibake as ftfy detects it (``ftfy.badness``: score = number of unlikely
    character sequences); repair with ``ftfy.fix_encoding``; a row it cannot fix
    is dropped."""

    name = "mojibake"
    config_cls = MojibakeConfig
    help = "UTF-8 read as cp1252 and the like (ftfy); repaired, rows ftfy cannot fix are dropped"
    uses_scan = True
    rewrite_action = "repair"
    recheck = True

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        # mojibake needs non-ASCII characters: a cheap test first (byte_scan),
        # ftfy's pattern (large) on those rows only
        pattern = ftfy_badness_re()
        nonascii = [scanned(frame, side)["nonascii"] > 0 for side in self.sides]
        idx = (nonascii[0] if len(nonascii) == 1 else nonascii[0] | nonascii[1]).arg_true()
        sub = frame[idx].select(pl.max_horizontal(
            [pl.col(s).str.count_matches(pattern) for s in self.sides]).cast(pl.Float64).alias("b"))["b"]
        score = pl.Series(self.col("score"), [0.0] * frame.height, dtype=pl.Float64)
        if idx.len():
            score = score.scatter(idx, sub)
        return frame.with_columns(score, (score > 0).alias(self.col("hit")))

    def rewriter(self) -> Callable[[str], str]:
        import ftfy

        # fix_encoding is the mojibake part of ftfy.fix_text (which would also
        # uncurl quotes, unescape HTML, ...: not this filter's business); it
        # returns good text unchanged
        return ftfy.fix_encoding

    def may_rewrite(self, text: pl.Expr) -> pl.Expr:
        # fix_encoding returns a text its own badness test does not flag unchanged
        return text.str.contains(ftfy_badness_re())
