"""structure: chat structure -- roles in a valid order, an answer at the end."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from .base import Filter, FilterConfig, register


@dataclass
class StructureConfig(FilterConfig):
    roles: str = "both"


@register
class StructureFilter(Filter):
    name = "structure"
    help = "roles out of order or no answer at the end"
    config_cls = StructureConfig
    row_level = True

    def exprs(self) -> list[pl.Expr]:
        # the roles string first; the checks on it in post() (in the same batch,
        # polars would build it once per use: six times)
        return [pl.col("messages").list.eval(pl.element().struct.field("role")).list.join(",")
                .alias(self.col("roles"))]

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        roles = pl.col(self.col("roles"))
        ok_sft = roles.str.contains(r"^(system,)?user(,(assistant|user|tool))*,assistant$") & \
            ~roles.str.contains(r"(^|,)(user,user|assistant,assistant)(,|$)")
        ok_prompt = roles.str.contains(r"^(system,)?user(,(assistant|user|tool))*$") & \
            roles.str.ends_with("user") & ~roles.str.contains(r"(^|,)(user,user|assistant,assistant)(,|$)")
        only_assistant = lambda c: pl.col(c).list.eval(  # noqa: E731
            pl.element().struct.field("role") == "assistant").list.all() & (pl.col(c).list.len() > 0)
        ok = (pl.when(pl.col("kind") == "sft").then(ok_sft)
              .when(pl.col("kind") == "prompt").then(ok_prompt)
              .when(pl.col("kind") == "preference").then(ok_prompt & only_assistant("chosen")
                                                          & only_assistant("rejected"))
              .otherwise(False))
        hit = (~ok.fill_null(False))
        return frame.with_columns(
            hit.alias(self.col("hit")), hit.cast(pl.Float64).alias(self.col("score")),
            pl.when(hit).then(pl.col("kind") + ": " + roles.fill_null("no messages")).alias(self.col("detail"))
        ).drop(self.col("roles"))
