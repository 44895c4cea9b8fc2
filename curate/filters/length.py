"""length: characters (and, with a local tokenizer, tokens) out of bounds."""

from __future__ import annotations

from dataclasses import dataclass

import polars as pl

from bakeoff.workspace import BakeoffError

from .base import Filter, FilterConfig, register


@dataclass
class LengthConfig(FilterConfig):
    roles: str = "both"
    min_chars: int = 1
    max_chars: int = 32_000
    min_tokens: int | None = None
    max_tokens: int | None = None
    tokenizer: str | None = None    # a local tokenizer directory (AutoTokenizer)


@register
class LengthFilter(Filter):
    name = "length"
    help = "text too short or too long (characters, or tokens with a local tokenizer)"
    config_cls = LengthConfig

    def exprs(self) -> list[pl.Expr]:
        c: LengthConfig = self.config  # type: ignore[assignment]
        def out_of_bounds(s: pl.Expr) -> pl.Expr:
            n = s.str.len_chars()
            # an empty prompt side of a prompt-less row is the empty filter's business
            return (n < c.min_chars) & (n > 0) | (n > c.max_chars)
        return self._on_sides(out_of_bounds, lambda s: s.str.len_chars())

    def post(self, frame: pl.DataFrame) -> pl.DataFrame:
        c: LengthConfig = self.config  # type: ignore[assignment]
        if c.min_tokens is None and c.max_tokens is None:
            return frame
        if not c.tokenizer:
            raise BakeoffError("filter length: min_tokens/max_tokens need `tokenizer:` (a local tokenizer directory)")
        from transformers import AutoTokenizer

        try:
            tok = AutoTokenizer.from_pretrained(c.tokenizer, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any loader failure is a config error
            raise BakeoffError(f"filter length: cannot load tokenizer {c.tokenizer!r}: {exc}") from exc
        hit = frame[self.col("hit")].to_list()
        score = frame[self.col("score")].to_list()
        detail = [None] * frame.height
        for side in self.sides:
            texts = frame[side].to_list()
            # fast tokenizers encode a batch in Rust, in parallel
            counts = [len(x) for x in tok(texts, add_special_tokens=False)["input_ids"]]
            for i, n in enumerate(counts):
                if (c.min_tokens is not None and 0 < n < c.min_tokens) or (
                        c.max_tokens is not None and n > c.max_tokens):
                    hit[i], score[i] = True, float(n)
                    detail[i] = f"{n} tokens on {'prompt' if side == '_p' else 'response'}"
        return frame.with_columns(pl.Series(self.col("hit"), hit, dtype=pl.Boolean), pl.Series(self.col("score"), score, dtype=pl.Float64),
                                  pl.Series(self.col("detail"), detail, dtype=pl.String))
