"""Running the filter suite: configs from YAML, detection, actions, ledger, report.

Knows no filter by name: each filter (``base.Filter``) says what its hits mean
(flag, drop, or its rewrite action), and the filters run in registration order.
"""

from __future__ import annotations

import dataclasses
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from bakeoff.schema import prompt_text, response_text, with_ids
from bakeoff.steps import StepOutput
from bakeoff.workspace import BakeoffError, new_ledger

from .base import FILTERS, Filter, FilterConfig
from .scan import byte_scan

#: a step that drops more than this share of its input says so loudly
LOUD_SHARE = 0.25
#: report key for the rows a rewrite action changed
PAST = {"repair": "repaired", "redact": "redacted"}


# --- configuration ---------------------------------------------------------------------------

def parse_filter_config(spec: dict[str, Any] | None) -> dict[str, FilterConfig]:
    """``{filter name: {option: value}}`` (e.g. from filters.yaml) -> configs for every
    filter (unnamed filters keep their defaults; ``enabled: false`` turns one off;
    ``only: [names]`` at the top level enables just those)."""
    spec = dict(spec or {})
    only = spec.pop("only", None)
    unknown = set(spec) - set(FILTERS)
    if unknown:
        raise BakeoffError(f"unknown filter(s) {sorted(unknown)}; known: {', '.join(FILTERS)}")
    configs: dict[str, FilterConfig] = {}
    for name, cls in FILTERS.items():
        opts = spec.get(name) or {}
        if opts is True or opts is False:
            opts = {"enabled": opts}
        if not isinstance(opts, dict):
            raise BakeoffError(f"filter {name}: expected a mapping of options, got {opts!r}")
        fields = {f.name for f in dataclasses.fields(cls.config_cls)}
        bad = set(opts) - fields
        if bad:
            raise BakeoffError(f"filter {name}: unknown option(s) {sorted(bad)}; valid: {', '.join(sorted(fields))}")
        cfg = cls.config_cls(**opts)
        if only is not None:
            cfg.enabled = name in only
        configs[name] = cfg
    return configs


def load_filter_config(path: str | Path | None) -> dict[str, FilterConfig]:
    if path is None:
        return parse_filter_config(None)
    import yaml

    p = Path(path)
    if not p.is_file():
        raise BakeoffError(f"filter config not found: {p}")
    try:
        spec = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise BakeoffError(f"cannot parse {p}: {exc}") from exc
    if not isinstance(spec, dict):
        raise BakeoffError(f"{p}: expected a mapping of filter name -> options")
    return parse_filter_config(spec.get("filters", spec))


# --- running -----------------------------------------------------------------------------------

@dataclass
class FilterSuiteConfig:
    """All filter configs (the ``filter`` step of a recipe)."""

    filters: dict[str, FilterConfig] = field(default_factory=lambda: parse_filter_config(None))
    examples: int = 3

    @classmethod
    def from_dict(cls, spec: dict[str, Any] | None) -> "FilterSuiteConfig":
        spec = dict(spec or {})
        examples = spec.pop("examples", 3)
        return cls(filters=parse_filter_config(spec.get("filters", spec)), examples=examples)

    def to_dict(self) -> dict[str, Any]:
        return {name: dataclasses.asdict(c) for name, c in self.filters.items()}


def detect(df: pl.DataFrame, config: FilterSuiteConfig | None = None,
           show_progress: bool | None = None) -> tuple[pl.DataFrame, list[Filter]]:
    """Per-row hit/score/detail columns of every enabled filter (no rows changed).
    A progress bar (stderr) shows for large inputs (``show_progress=None``: from
    50k rows)."""
    from bakeoff.console import progress

    config = config or FilterSuiteConfig()
    active = [FILTERS[n](c) for n, c in config.filters.items() if c.enabled]
    show = df.height >= 50_000 if show_progress is None else show_progress
    with progress() if show else _nullcontext() as bar:
        task = bar.add_task("filters: detect", total=len(active) + 1) if show else None
        frame = df.select("kind", "messages", "chosen", "rejected").with_columns(
            prompt_text().alias("_p"), response_text().alias("_r"))
        # Structure and empty look at the turns themselves; every other filter is a
        # function of (kind, prompt text, response text) only, so it runs once per
        # distinct triple and its columns are gathered back to the rows. Corpora
        # repeat a lot (the same question in many conversations, copied rows);
        # the exact string join costs ~0.1 CPU-s per 200k rows, less than any
        # one filter. With (almost) no repeats the join is skipped.
        row_level = [f for f in active if f.row_level]
        text_level = [f for f in active if not f.row_level]
        exprs = [e for f in row_level for e in f.exprs()]
        if exprs:
            frame = frame.with_columns(exprs)
        keys = frame.select("kind", "_p", "_r")
        uniq, inverse = _distinct(keys) if text_level else (keys, None)
        exprs = [e for f in text_level for e in f.exprs()]
        if exprs:  # one batch: polars runs the expressions in parallel
            uniq = uniq.with_columns(exprs)
        scan_sides = sorted({s for f in text_level if f.uses_scan for s in f.sides})
        if scan_sides:  # one byte_scan per side, shared by the filters that use it
            uniq = uniq.with_columns(byte_scan(uniq[side]).to_struct(f"_scan{side}") for side in scan_sides)
        if show:
            bar.advance(task)
        for f in active:
            if show:
                bar.update(task, description=f"filters: {f.name}")
            if f.row_level:
                frame = f.post(frame)
            else:
                uniq = f.post(uniq)
                if f.col("detail") not in uniq.columns:
                    uniq = uniq.with_columns(pl.lit(None, dtype=pl.String).alias(f.col("detail")))
            if f.col("detail") not in frame.columns and f.row_level:
                frame = frame.with_columns(pl.lit(None, dtype=pl.String).alias(f.col("detail")))
            if show:
                bar.advance(task)
        out_cols = [c for c in uniq.columns if c not in keys.columns and not c.startswith("_scan")]
        results = uniq.select(out_cols)
        if inverse is not None:
            results = results[inverse]
        frame = frame.hstack(results)
        order = ["kind", "messages", "chosen", "rejected", "_p", "_r"] + [
            f.col(x) for f in active for x in ("hit", "score", "detail")]
        frame = frame.select(order + [c for c in frame.columns if c not in order])
    return frame, active


def _distinct(keys: pl.DataFrame) -> tuple[pl.DataFrame, pl.Series | None]:
    """Distinct rows of ``keys`` (string columns; first-seen order) and, per input
    row, the index of its distinct row -- or (keys, None) when repeats are too few
    to pay off.

    Grouped by a 64-bit hash of the row (~4x cheaper than grouping the strings),
    then verified exactly: every row's strings are compared with those of the
    distinct row it maps to; on any hash collision, the exact string grouping."""
    if keys.height < 2:
        return keys, None
    # hash each column, then the struct of those u64s (hashing a struct of strings
    # directly goes through row encoding and costs ~8x more)
    h = keys.select(pl.struct([pl.col(c).hash(seed=3) for c in keys.columns]).hash(seed=5).alias("h"))["h"]
    first = h.is_first_distinct()
    if int(first.sum()) > 0.9 * keys.height:
        return keys, None
    firsts = pl.DataFrame({"h": h.filter(first)}).with_row_index("_u")
    inverse = pl.DataFrame({"h": h}).join(firsts, on="h", how="left", maintain_order="left")["_u"]
    uniq = keys.filter(first)
    same = keys.select([(pl.col(c).eq_missing(uniq[c].gather(inverse))).all() for c in keys.columns]).row(0)
    if all(same):
        return uniq, inverse
    first = keys.select(pl.struct(keys.columns).is_first_distinct()).to_series()
    uniq = keys.filter(first).with_row_index("_u")
    inverse = keys.join(uniq, on=keys.columns, how="left", nulls_equal=True, maintain_order="left")["_u"]
    return uniq.drop("_u"), inverse


class _nullcontext:
    def __enter__(self) -> None:
        return None

    def __exit__(self, *exc: Any) -> None:
        return None


def _map_contents(df: pl.DataFrame, mask: pl.Series, fn, may_change=None) -> pl.DataFrame:
    """Apply ``fn(str) -> str`` to every non-empty turn of the masked rows.

    ``fn`` (ftfy, a Python regex) runs once per *distinct* content of those rows --
    hit rows are often copies of each other -- that ``may_change`` (a vectorized
    test, ``Filter.may_rewrite``) lets through, and the results go back in with a
    vectorized replace; the other rows are not touched and the row order is kept."""
    if not bool(mask.any()):
        return df
    idx = mask.arg_true()
    sub = df[idx]
    cols = {}
    for col in ("messages", "chosen", "rejected"):
        contents = sub.select(pl.col(col).list.eval(pl.element().struct.field("content"))
                              .explode().drop_nulls().unique().alias("c"))["c"]
        contents = contents.filter(contents != "")
        if may_change is not None and contents.len():
            contents = contents.filter(contents.to_frame().select(may_change(pl.col("c")).fill_null(True))
                                       .to_series())
        if not contents.len():
            continue
        mapped = pl.Series([fn(t) for t in contents.to_list()], dtype=pl.String)
        changed = contents != mapped
        if not bool(changed.any()):
            continue
        old, new = contents.filter(changed), mapped.filter(changed)
        # when/then over the whole column: gathering list[struct] rows back into
        # place (take) costs ~3x more than this hash lookup of every turn
        cols[col] = pl.when(mask).then(pl.col(col).list.eval(pl.element().struct.with_fields(
            pl.field("content").replace(old, new)))).otherwise(pl.col(col))
    return df.with_columns(**cols) if cols else df


def reid_rows(df: pl.DataFrame, changed: pl.Series) -> pl.DataFrame:
    """New content ids (``with_ids``) for the rewritten rows only: hashing every
    row again would cost more than the filters themselves. A new id that equals an
    existing one (a repaired row now identical to another row) gets the
    ``~N`` suffix, as ``with_ids`` gives duplicates."""
    idx = changed.arg_true()
    fresh = with_ids(df[idx])["id"].str.replace(r"~\d+$", "")
    ids = df["id"].scatter(idx, fresh)
    # only fresh ids that clash (with a kept id or with each other) need the loop
    kept_ids = df["id"].filter(~changed)
    clash = fresh.is_in(kept_ids.implode()) | fresh.is_duplicated()
    if not bool(clash.any()):
        return df.with_columns(ids.alias("id"))
    # a candidate id is a fresh base or base~k: only kept ids of that form can clash
    bases = fresh.implode()
    taken = set(kept_ids.filter(kept_ids.is_in(bases) | kept_ids.str.replace(r"~\d+$", "").is_in(bases)).to_list())
    out = ids.to_list()
    next_k: dict[str, int] = {}  # per base: every suffix below it is taken already
    for i in idx.to_list():
        base = out[i]
        k = next_k.get(base, 1)
        cand = base if k == 1 else f"{base}~{k}"
        while cand in taken:
            k += 1
            cand = f"{base}~{k}"
        next_k[base] = k
        out[i] = cand
        taken.add(cand)
    return df.with_columns(pl.Series("id", out, dtype=pl.String))


def _snippet(text: str | None, n: int = 160) -> str:
    """One line for a report: newlines shown as ⏎, control characters escaped."""
    text = (text or "").replace("\n", " ⏎ ")
    text = re.sub(r"[\x00-\x08\x0B\x0C\x0E-\x1F\x7F-\x9F\u200B-\u200F\u202A-\u202E\u2060-\u2064\uFEFF\uFFFD]",
                  lambda m: m.group(0).encode("unicode_escape").decode("ascii"), text)
    return text if len(text) <= n else text[: n - 1] + "…"


def _examples(f: Filter, frame: pl.DataFrame, ids: pl.Series, k: int) -> list[dict[str, Any]]:
    """Up to ``k`` hit rows, showing the side (prompt/response) that hit, as the
    filter lets a report show it (PII redacted)."""
    sel = frame.with_columns(ids.alias("_id")).filter(pl.col(f.col("hit"))).head(k)
    if not sel.height:
        return []
    side_of = ["_r" if "_r" in f.sides else "_p"] * sel.height
    if len(f.sides) == 2:
        only_r = type(f)(dataclasses.replace(f.config, roles="response"))
        probe = sel.with_columns(only_r.exprs()) if only_r.exprs() else sel
        probe = only_r.post(probe)
        side_of = ["_r" if h else "_p" for h in probe[f.col("hit")].to_list()]
    out = []
    for row, side in zip(sel.iter_rows(named=True), side_of):
        out.append({"id": row["_id"], "side": "response" if side == "_r" else "prompt",
                    "detail": row[f.col("detail")], "text": _snippet(f.example_text(row[side] or ""))})
    return out


def filter_rows(df: pl.DataFrame, config: FilterSuiteConfig | dict | None = None,
                detect_rows=None, rows_in: int | None = None) -> StepOutput:
    """Run the filter suite on a version's rows: drop, flag, repair or redact as
    configured. Rows in = rows kept + ledger rows. ``detect_rows``: what runs
    :func:`detect` on all rows (default: here). ``rows_in``: the input's row
    count when ``df`` holds only the rows some filter hit (the Ray executor's
    streamed step, :mod:`bakeoff.curate.on_ray.filters`): rows no filter hits
    change nothing but the report's shares."""
    t0 = time.perf_counter()
    if not isinstance(config, FilterSuiteConfig):
        config = FilterSuiteConfig.from_dict(config)
    frame, active = (detect_rows or detect)(df, config)
    names = [f.name for f in active]
    hit_cols = [f"{n}.hit" for n in names]
    n = df.height
    n_in = n if rows_in is None else rows_in

    # actions
    drop = pl.Series("drop", [False] * n, dtype=pl.Boolean)
    rule = pl.Series("rule", [None] * n, dtype=pl.String)
    rule_score = pl.Series("score", [None] * n, dtype=pl.Float64)
    rows = df
    changed = pl.Series("changed", [False] * n, dtype=pl.Boolean)
    extra_report: dict[str, dict[str, Any]] = {}
    flags: list[str] = []
    for pos, f in enumerate(active):
        hit = frame[f.col("hit")]
        act = f.config.action
        if act == "drop":
            newly = hit & ~drop
            rule = pl.select(pl.when(newly).then(pl.lit(f.name)).otherwise(rule)).to_series()
            rule_score = pl.select(pl.when(newly).then(frame[f.col("score")]).otherwise(rule_score)).to_series()
            drop = drop | hit
        elif act == "flag":
            flags.append(f.name)
        else:  # the filter's rewrite action (repair, redact): rewrite each turn of the hit rows
            todo = hit & ~drop
            rows = _map_contents(rows, todo, f.rewriter(), f.may_rewrite)
            idx = todo.arg_true()
            still = pl.Series([False] * n, dtype=pl.Boolean)
            if f.recheck and idx.len():  # a row the rewrite could not fix is dropped
                recheck, _ = detect(rows[idx], FilterSuiteConfig(
                    filters={f.name: dataclasses.replace(f.config, action="flag")}), show_progress=False)
                bad = idx.filter(recheck[f.col("hit")])
                if bad.len():
                    still = still.scatter(bad, True)
            newly = still & ~drop
            rule = pl.select(pl.when(newly).then(pl.lit(f.name)).otherwise(rule)).to_series()
            rule_score = pl.select(pl.when(newly).then(frame[f.col("score")]).otherwise(rule_score)).to_series()
            drop = drop | still
            fixed = todo & ~still
            changed = changed | fixed
            extra_report[f.name] = {"detected": int(hit.sum()), PAST.get(act, act): int(fixed.sum()),
                                    **({"unrepairable": int(still.sum())} if f.recheck else {})}
            # the filters after this one judge the rewritten text (a row whose
            # mojibake was repaired no longer has its C1 control characters)
            later = active[pos + 1:]
            fixed_idx = fixed.arg_true()
            if later and fixed_idx.len():
                again, _ = detect(rows[fixed_idx], FilterSuiteConfig(
                    filters={g.name: g.config for g in later}), show_progress=False)
                cols = [g.col(x) for g in later for x in ("hit", "score", "detail")]
                frame = frame.with_columns([frame[c].scatter(fixed_idx, again[c].cast(frame[c].dtype))
                                            for c in cols])

    if flags:
        flag_tags = pl.concat_list([pl.when(frame[f"{n}.hit"]).then(pl.lit(f"flag:{n}")).otherwise(None)
                                    for n in flags]).list.drop_nulls()
        tags = pl.select(pl.concat_list([pl.lit(rows["tags"]).fill_null(pl.lit([], dtype=pl.List(pl.String))),
                                         flag_tags]).list.unique(maintain_order=True)).to_series()
        rows = rows.with_columns(tags.alias("tags"))

    # ledger: one row per dropped row, with every filter that hit it (built on the
    # dropped rows only)
    sub = frame.filter(drop)
    hits_list = sub.select(pl.concat_list([
        pl.when(pl.col(c)).then(pl.lit(c.removesuffix(".hit"))).otherwise(None) for c in hit_cols]
    ).list.drop_nulls().alias("h"))["h"] if hit_cols and sub.height else pl.Series("h", [], dtype=pl.List(pl.String))
    details = sub.select(pl.concat_list([
        pl.when(pl.col(f"{x}.detail").is_not_null()).then(pl.lit(x + ": ") + pl.col(f"{x}.detail")).otherwise(None)
        for x in names]).list.drop_nulls().list.join("; ").alias("d"))["d"] if names and sub.height \
        else pl.Series("d", [], dtype=pl.String)
    # the ledger says why in words: what the filter looks for, and what it saw in this row
    helps = {f.name: f.help or f.name for f in active}
    dropped = pl.DataFrame({"row_id": df["id"].filter(drop), "rule": rule.filter(drop),
                            "score": rule_score.filter(drop), "h": hits_list, "d": details})
    ledger = new_ledger(
        row_id=dropped["row_id"], stage=["filter"] * dropped.height, rule=dropped["rule"],
        score=dropped["score"],
        detail=dropped.select(pl.struct(
            reason=pl.col("rule").replace_strict(helps, default="") .pipe(
                lambda why: pl.col("rule") + pl.lit(": ") + why
                + pl.when(pl.col("d") != "").then(pl.lit(" -- ") + pl.col("d")).otherwise(pl.lit(""))),
            filters=pl.col("h"), detail=pl.col("d")).struct.json_encode())
        .to_series() if dropped.height else pl.Series([], dtype=pl.String))

    rewritten = changed & ~drop
    if bool(rewritten.any()):
        rows = reid_rows(rows, rewritten)
    kept = rows.filter(~drop)

    # report
    per_filter: dict[str, Any] = {}
    for f in active:
        h = frame[f.col("hit")]
        ex = _examples(f, frame, df["id"], config.examples)
        per_filter[f.name] = {"hits": int(h.sum()), "share": round(float(h.sum()) / n_in, 4) if n_in else 0.0,
                              "action": f.config.action, "roles": f.config.roles,
                              "dropped": int((rule == f.name).sum()), "examples": ex,
                              **extra_report.get(f.name, {})}
    hm = frame.select(hit_cols).cast(pl.Int32).to_numpy() if hit_cols else None
    overlap = (hm.T @ hm).tolist() if hm is not None and n else [[0] * len(names) for _ in names]
    report = {"filter": {"rows_in": n_in, "rows_out": n_in - ledger.height, "dropped": ledger.height,
                         "rewritten": int((changed & ~drop).sum()),
                         "flagged": {x: int(frame[f"{x}.hit"].sum()) for x in flags},
                         "filters": per_filter, "overlap": {"filters": names, "matrix": overlap},
                         "config": config.to_dict(), "seconds": round(time.perf_counter() - t0, 3)}}
    _warn_if_loud(report["filter"])
    return StepOutput(rows=kept, ledger=ledger, report=report)


def _warn_if_loud(report: dict[str, Any]) -> None:
    """A warning in the report when the filters dropped more than ``LOUD_SHARE`` of the rows."""
    n_in, dropped = report["rows_in"], report["dropped"]
    if n_in and dropped > LOUD_SHARE * n_in:
        report["warning"] = {
            "message": f"filters dropped {dropped:,} of {n_in:,} rows ({dropped / n_in:.0%}), more than "
                       f"{LOUD_SHARE:.0%}: check the examples before trusting this version",
            "by_filter": {name: f["dropped"] for name, f in report["filters"].items() if f["dropped"]}}


def merge_filter_reports(parts: list[dict[str, Any]], examples: int, seconds: float) -> dict[str, Any]:
    """The report :func:`filter_rows` gives for all rows, from its reports on
    consecutive parts of them (in order): every count is a sum, a filter's
    examples are its first hits (each part shows its own first ``examples``),
    the overlap matrix is a sum of the parts'. (The Ray executor runs the
    actions per block of rows, :mod:`bakeoff.curate.on_ray.filters`.)"""
    reports = [p["filter"] for p in parts]
    first = reports[0]
    merged: dict[str, Any] = {k: sum(r[k] for r in reports) for k in ("rows_in", "rows_out", "dropped", "rewritten")}
    n_in = merged["rows_in"]
    merged["flagged"] = {x: sum(r["flagged"][x] for r in reports) for x in first["flagged"]}
    filters: dict[str, Any] = {}
    for name, f in first["filters"].items():
        each = [r["filters"][name] for r in reports]
        counts = {k: sum(e[k] for e in each) for k, v in f.items() if k not in ("share", "action", "roles", "examples")
                  and isinstance(v, int)}
        filters[name] = {**f, **counts, "share": round(counts["hits"] / n_in, 4) if n_in else 0.0,
                         "examples": [x for e in each for x in e["examples"]][:examples]}
    merged["filters"] = filters
    names = first["overlap"]["filters"]
    matrix = [[sum(r["overlap"]["matrix"][i][j] for r in reports) for j in range(len(names))]
              for i in range(len(names))]
    merged["overlap"] = {"filters": names, "matrix": matrix}
    merged["config"] = first["config"]
    merged["seconds"] = round(seconds, 3)
    _warn_if_loud(merged)
    return {"filter": merged}


