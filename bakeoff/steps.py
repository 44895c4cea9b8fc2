"""What a data step returns, and how its result becomes a version.

Every curation step is a plain function ``rows -> StepOutput``: the rows it kept
(possibly rewritten, e.g. PII redacted), a ledger of the rows it dropped and why,
and a report. Keeping steps pure makes recipes a loop over functions, and
``commit_step`` the one place where a result becomes an immutable version.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import polars as pl

from bakeoff.workspace import LEDGER_SCHEMA, Version, Workspace


@dataclass
class StepOutput:
    rows: pl.DataFrame
    ledger: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema=LEDGER_SCHEMA))
    report: dict[str, Any] = field(default_factory=dict)

    def check_balance(self, rows_in: int) -> None:
        """Nothing is lost silently: rows in = rows kept + rows in the ledger."""
        if rows_in != self.rows.height + self.ledger.height:
            raise AssertionError(
                f"row balance broken: {rows_in} in != {self.rows.height} kept + {self.ledger.height} dropped")


def commit_step(ws: Workspace, parent: str | Version, operation: str, params: dict[str, Any],
                output: StepOutput, name: str | None = None) -> Version:
    """Write ``output`` as the next version of the parent's dataset (or of ``name``)."""
    parent_v = ws.resolve(parent) if isinstance(parent, str) else parent
    output.check_balance(parent_v.rows)
    return ws.commit_version(
        name or parent_v.name, output.rows, operation=operation, params=params,
        parents=[parent_v.ref], ledger=output.ledger, report=output.report,
    )

