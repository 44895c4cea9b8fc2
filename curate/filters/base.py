"""What every filter is: a config dataclass and a ``Filter`` subclass, registered
by name.

A filter looks at the *prompt* side, the *response* side or *both* of a row
(``bakeoff.schema.prompt_text`` / ``response_text``; the columns ``_p`` and
``_r`` of the frame it gets) and says, per row, whether it hit, a score and a
short detail: vectorized polars expressions in ``exprs()``, refined on the
candidate rows in ``post()`` where a library (ftfy, langid) has to look.

What happens to a hit row is the config's ``action``, one of the filter's
``actions``:

- ``flag``  keep the row, tag it ``flag:<filter>``;
- ``drop``  remove it (ledger: stage ``filter``, rule = filter name);
- a *rewrite* action (the filter's ``rewrite_action``: ``repair`` for mojibake
  and control characters, ``redact`` for PII): ``rewrite(text)`` is applied to
  every turn of the hit rows; with ``recheck``, a row that still hits is dropped.

The suite runner (``suite.py``) knows no filter by name: adding a filter is one
new module with ``@register`` on its class (and one noise kind in
``bakeoff.demo_data.NOISE``, which the recall tests pick up).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, ClassVar

import polars as pl

from bakeoff.workspace import BakeoffError

ROLE_CHOICES = ("prompt", "response", "both")
SIDES = {"prompt": ("_p",), "response": ("_r",), "both": ("_p", "_r")}

# ASCII word boundary. A Unicode \b (the default) makes Rust's regex engine give
# up its DFA on non-ASCII text and run ~20x slower; the patterns that use it are
# English/ASCII anyway. Python's re reads (?-u:\b) differently, so the Python
# copies of patterns (for redaction) use plain \b.
WB = r"(?-u:\b)"


@dataclass
class FilterConfig:
    enabled: bool = True
    roles: str = "response"     # prompt | response | both
    action: str = "drop"        # flag | drop | the filter's rewrite action (repair, redact)


#: Every registered filter by name, in the order they run (and the order the
#: ledger's rule is picked in): the order their modules register them.
FILTERS: dict[str, type["Filter"]] = {}


def register(cls: type["Filter"]) -> type["Filter"]:
    """Class decorator: add a filter to ``FILTERS``."""
    if cls.name in FILTERS:
        raise ValueError(f"filter {cls.name!r} registered twice")
    FILTERS[cls.name] = cls
    return cls


class Filter:
    """A named check. ``exprs`` are vectorized polars expressions producing the
    columns ``<name>.hit`` (bool), ``<name>.score`` (float) and optionally
    ``<name>.detail`` (str); ``post`` may refine them with a library on candidate
    rows only."""

    name: ClassVar[str]
    config_cls: ClassVar[type[FilterConfig]]
    #: one line for ``--help`` and reports; filters that are off by default say
    #: their measured precision here
    help: ClassVar[str] = ""
    #: the action that rewrites hit rows (None: the filter only flags or drops)
    rewrite_action: ClassVar[str | None] = None
    #: after rewriting, re-run the check and drop rows that still hit
    recheck: ClassVar[bool] = False
    #: looks at the turns (messages/chosen/rejected), not just (kind, _p, _r)
    row_level: ClassVar[bool] = False
    #: post() reads byte_scan counts (detect computes them once for all)
    uses_scan: ClassVar[bool] = False

    def __init__(self, config: FilterConfig | None = None):
        self.config = config or self.config_cls()
        if self.config.roles not in ROLE_CHOICES:
            raise BakeoffError(f"filter {self.name}: roles must be one of {', '.join(ROLE_CHOICES)}")
        if self.config.action not in self.actions():
            raise BakeoffError(f"filter {self.name}: action must be one of {', '.join(self.actions())}")

    @classmethod
    def actions(cls) -> tuple[str, ...]:
        return ("flag", "drop") + ((cls.rewrite_action,) if cls.rewrite_action else ())

    @property
    def sides(self) -> tuple[str, ...]:
        return SIDES[self.config.roles]

    def col(self, what: str) -> str:
        return f"{self.name}.{what}"

    def exprs(self) -> list[pl.Expr]:
        return []

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        return frame

    def rewriter(self) -> Callable[[str], str]:
        """``text -> text`` for the rewrite action (called once per distinct turn)."""
        raise NotImplementedError(f"filter {self.name} has no rewrite action")

    def may_rewrite(self, text: pl.Expr) -> pl.Expr:
        """Whether ``rewriter()`` could change a turn: a vectorized necessary
        condition, so the Python rewrite runs only on the turns that pass it
        (most turns of a hit row, a long table beside a garbled answer, need
        nothing). Default: every turn."""
        return pl.lit(True)

    def example_text(self, text: str) -> str:
        """What a report may show of a hit text (PII shows it redacted)."""
        return text

    def _on_sides(self, hit_of: Callable[[pl.Expr], pl.Expr],
                  score_of: Callable[[pl.Expr], pl.Expr] | None = None) -> list[pl.Expr]:
        """hit/score over the configured sides (any hit, max score)."""
        hits = [hit_of(pl.col(s)) for s in self.sides]
        hit = pl.any_horizontal(hits) if len(hits) > 1 else hits[0]
        if score_of is None:
            score = hit.cast(pl.Float64)
        else:
            scores = [score_of(pl.col(s)) for s in self.sides]
            score = pl.max_horizontal(scores) if len(scores) > 1 else scores[0]
        return [hit.fill_null(False).alias(self.col("hit")), score.cast(pl.Float64).alias(self.col("score"))]


def contents(col: str, roles: tuple[str, ...] | None) -> pl.Expr:
    """The contents of the turns of ``col`` whose role is in ``roles`` (list[str])."""
    msgs = pl.col(col)
    if roles is not None:
        msgs = msgs.list.eval(pl.element().filter(pl.element().struct.field("role").is_in(list(roles))))
    return msgs.list.eval(pl.element().struct.field("content"))


def side_contents(side: str) -> pl.Expr:
    """Turn contents of one side of a row, as a list of strings."""
    is_sft = pl.col("kind") == "sft"
    if side == "_p":
        return pl.when(is_sft).then(contents("messages", ("system", "user", "tool"))).otherwise(
            contents("messages", None))
    return (pl.when(is_sft).then(contents("messages", ("assistant",)))
            .when(pl.col("kind") == "preference").then(
                pl.concat_list([contents("chosen", None), contents("rejected", None)]))
            .otherwise(pl.lit([], dtype=pl.List(pl.String))))


def without_code_and_tables(text: pl.Expr) -> pl.Expr:
    """The text with fenced code blocks and markdown table rows removed (each
    code block becomes a line break): what is left is the prose."""
    return text.str.replace_all(r"(?s)```.*?(?:```|$)", "\n").str.replace_all(r"(?m)^[ \t]*\|.*$", "")
