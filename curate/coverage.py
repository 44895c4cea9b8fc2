"""Objective coverage: does this dataset cover what the model is being trained for?

An objectives file states the training objective along three axes -- ``domain``,
``doctype`` and ``task`` -- each value with a description, optional keywords,
regex patterns, label aliases and examples, and a minimum row count; optionally
per-cell minimums for domain x task. ``coverage_report(df, objectives, ws)``
assigns every row a value on each axis and measures the result:

- domain x task counts, and the cells (and axis values) under their minimum: the
  **gaps** to fill before training;
- **off-objective** rows: labelled with a value the objectives do not name, or
  matching nothing (``unassigned``), with examples -- data that costs training
  time without serving the objective;
- **diversity** per cell: mean pairwise cosine distance of the rows' embeddings
  (100 near-copies of one question count as one question);
- **length** distributions of prompts and responses per cell.

Assignment, per axis, first rule that applies:

1. ``keyword``: whole-word, case-insensitive keyword and regex-pattern matches,
   counted per value with polars (one vectorized pass per value); the value with
   the most hits wins (ties: file order); confidence = its share of all hits. The
   ``task`` axis is judged on the *question* (the last paragraph of the last user
   turn) and the answer, not on a table or document the question comes with: a
   table's words say nothing about what is asked. A keyword value overrides the
   row's own label when both name (different) values of the objectives -- a file
   labelled ``task=qa`` throughout still has its arithmetic questions counted
   as arithmetic (``relabelled`` in the report);
2. ``label``: the row's own meta column (``domain``/``doctype``/``task``); a value
   of the objectives or one of its ``aliases`` -> that value (confidence 1); any
   other label -> kept as is and reported as off-objective;
3. ``embedding``: cosine between the row's embedding and each value's prototype
   (the normalised mean of its description's and its examples' embeddings);
   confidence = that cosine; under the floor -> ``unassigned``. With the
   ``hashing`` embedder this is word overlap, not meaning: the report says so.

Embeddings come from :func:`bakeoff.curate.embeddings.embed_texts` (cached in the
workspace, shared with semantic dedup and the test-set builder).

The report is made in two steps, so that it can be made of chunks of rows on
many machines: :func:`coverage_partial` measures a chunk (counts, per-cell sums
of the embedding vectors, four small numbers per row, a few example rows),
:func:`merge_partials` adds up the partials of chunks, and
:func:`report_from_partial` makes the report. ``coverage_report`` is the report
of one partial of every row; on Ray (``bakeoff.curate.on_ray.coverage``) each
block's partial is made on a worker.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import polars as pl

from bakeoff.schema import prompt_text, response_text, text_for_scope


def question_text() -> pl.Expr:
    """The question of a row: the last paragraph of its last user turn."""
    users = pl.col("messages").list.eval(
        pl.element().filter(pl.element().struct.field("role") == "user").struct.field("content"))
    return users.list.last().fill_null("").str.strip_chars().str.extract(r"(?s)(?:^|\n[ \t]*\n)([^\n]*(?:\n[^\n]+)*)$", 1)
from bakeoff.workspace import BakeoffError

if TYPE_CHECKING:
    from bakeoff.workspace import Workspace

AXES = ("domain", "doctype", "task")
#: axes whose keywords look at the question and answer only (not the table or
#: document that comes with the question)
KEYWORDS_ON_QUESTION = ("task",)
UNASSIGNED = "unassigned"
OTHER = "(other)"
METHODS = ("label", "keyword", "embedding", "none")
DEFAULT_FLOOR = 0.3
#: The columns the report reads (on Ray the workers read just these).
COVERAGE_COLUMNS = ["id", "kind", "messages", "chosen", "rejected", "domain", "doctype", "task"]


# --- objectives ------------------------------------------------------------------

@dataclass
class ObjectiveValue:
    """One value of one axis: what it means, how to recognise it, how many rows it needs."""
    name: str
    description: str = ""
    keywords: list[str] = field(default_factory=list)
    patterns: list[str] = field(default_factory=list)
    aliases: list[str] = field(default_factory=list)
    examples: list[str] = field(default_factory=list)
    min: int = 0

    def prototype_texts(self) -> list[str]:
        return [t for t in [self.description, *self.examples] if t.strip()] or [self.name]


@dataclass
class Objectives:
    """The training objective: values per axis, cell minimums, assignment settings."""
    name: str = "objectives"
    description: str = ""
    axes: dict[str, list[ObjectiveValue]] = field(default_factory=dict)
    cells: dict[tuple[str, str], int] = field(default_factory=dict)
    cell_min: int = 0
    floor: float = DEFAULT_FLOOR
    scope: str = "all"
    model: str | None = None

    def values(self, axis: str) -> list[ObjectiveValue]:
        return self.axes.get(axis, [])

    def names(self, axis: str) -> list[str]:
        return [v.name for v in self.values(axis)]

    def cell_minimum(self, domain: str, task: str) -> int:
        return self.cells.get((domain, task), self.cell_min)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name, "description": self.description, "floor": self.floor,
            "scope": self.scope, "model": self.model, "cell_min": self.cell_min,
            "axes": {a: [{"name": v.name, "min": v.min, "keywords": v.keywords, "patterns": v.patterns,
                          "aliases": v.aliases, "examples": len(v.examples)} for v in vs]
                     for a, vs in self.axes.items()},
            "cells": [{"domain": d, "task": t, "min": m} for (d, t), m in self.cells.items()],
        }


def _as_list(value: Any, what: str) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, (list, tuple)) and all(isinstance(x, (str, int, float)) for x in value):
        return [str(x) for x in value]
    raise BakeoffError(f"objectives: {what} must be a string or a list of strings")


def _parse_value(axis: str, name: str, spec: Any) -> ObjectiveValue:
    where = f"{axis}.{name}"
    if spec is None:
        spec = {}
    if isinstance(spec, str):
        spec = {"description": spec}
    if not isinstance(spec, dict):
        raise BakeoffError(f"objectives: {where} must be a mapping (description, keywords, examples, min)")
    known = {"name", "description", "keywords", "patterns", "aliases", "examples", "min", "minimum"}
    unknown = sorted(set(spec) - known)
    if unknown:
        raise BakeoffError(f"objectives: {where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(known))}")
    minimum = spec.get("min", spec.get("minimum", 0))
    if not isinstance(minimum, int) or minimum < 0:
        raise BakeoffError(f"objectives: {where}.min must be a non-negative integer, got {minimum!r}")
    patterns = _as_list(spec.get("patterns"), f"{where}.patterns")
    for p in patterns:
        try:
            re.compile(p)
        except re.error as exc:
            raise BakeoffError(f"objectives: {where}: bad pattern {p!r}: {exc}") from None
    return ObjectiveValue(name=str(name), description=str(spec.get("description") or ""),
                          keywords=_as_list(spec.get("keywords"), f"{where}.keywords"), patterns=patterns,
                          aliases=_as_list(spec.get("aliases"), f"{where}.aliases"),
                          examples=_as_list(spec.get("examples"), f"{where}.examples"), min=minimum)


def parse_objectives(data: dict[str, Any]) -> Objectives:
    """Objectives from a parsed YAML/JSON mapping. Axis values may be a mapping
    ``{value: spec}`` or a list of specs with ``name``; the axes may sit at the top
    level or under ``axes:``."""
    if not isinstance(data, dict):
        raise BakeoffError("objectives: the file must hold a mapping")
    axes_src = data.get("axes", data)
    if not isinstance(axes_src, dict):
        raise BakeoffError("objectives: 'axes' must be a mapping of domain/doctype/task")
    top = {"name", "description", "axes", "cells", "cell_min", "embedding_floor", "floor", "scope", "model"}
    unknown = sorted(set(data) - top - (set(AXES) if axes_src is data else set()))
    if "axes" in data:
        unknown += sorted(f"axes.{k}" for k in set(axes_src) - set(AXES))
    if unknown:  # a misspelt axis ("tasks:") would otherwise be ignored without a word
        raise BakeoffError(f"objectives: unknown key(s) {', '.join(map(str, unknown))}; axes are "
                           f"{', '.join(AXES)}, other keys {', '.join(sorted(top - {'axes'}))}")
    axes: dict[str, list[ObjectiveValue]] = {}
    for axis in AXES:
        spec = axes_src.get(axis)
        if spec is None:
            continue
        if isinstance(spec, dict):
            values = [_parse_value(axis, k, v) for k, v in spec.items()]
        elif isinstance(spec, list):
            values = []
            for item in spec:
                if isinstance(item, str):
                    item = {"name": item}
                if not isinstance(item, dict) or "name" not in item:
                    raise BakeoffError(f"objectives: every {axis} entry needs a name")
                values.append(_parse_value(axis, item["name"], item))
        else:
            raise BakeoffError(f"objectives: {axis} must be a mapping or a list of values")
        names = [v.name for v in values]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise BakeoffError(f"objectives: {axis} lists {', '.join(dupes)} twice")
        axes[axis] = values
    if not axes:
        raise BakeoffError("objectives: name at least one axis (domain, doctype, task) with its values")
    cells: dict[tuple[str, str], int] = {}
    for c in data.get("cells") or []:
        if not isinstance(c, dict) or "domain" not in c or "task" not in c:
            raise BakeoffError("objectives: each entry of 'cells' needs domain, task and min")
        m = c.get("min", 0)
        if not isinstance(m, int) or m < 0:
            raise BakeoffError(f"objectives: cell {c['domain']} x {c['task']}: min must be a non-negative integer")
        cells[(str(c["domain"]), str(c["task"]))] = m
    floor = float(data.get("embedding_floor", data.get("floor", DEFAULT_FLOOR)))
    scope = str(data.get("scope", "all"))
    if scope not in ("prompt", "response", "all"):
        raise BakeoffError(f"objectives: scope must be prompt, response or all, got {scope!r}")
    cell_min = data.get("cell_min", 0)
    if not isinstance(cell_min, int) or cell_min < 0:
        raise BakeoffError("objectives: cell_min must be a non-negative integer")
    return Objectives(name=str(data.get("name") or "objectives"), description=str(data.get("description") or ""),
                      axes=axes, cells=cells, cell_min=cell_min, floor=floor, scope=scope,
                      model=data.get("model"))


def load_objectives(source: str | Path | dict[str, Any] | Objectives) -> Objectives:
    """Objectives from a YAML file path, a mapping, or an ``Objectives``."""
    if isinstance(source, Objectives):
        return source
    if isinstance(source, dict):
        return parse_objectives(source)
    import yaml

    from bakeoff.curate import find_config_file

    path = find_config_file(source, what="objectives file")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BakeoffError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    return parse_objectives(data)


# --- assignment -------------------------------------------------------------------

def _keyword_regex(value: ObjectiveValue) -> str | None:
    parts = [r"\b" + re.escape(k.strip()) + r"\b" for k in value.keywords if k.strip()]
    parts += [f"(?:{p})" for p in value.patterns]
    return "(?i)(?:" + "|".join(parts) + ")" if parts else None


def assign_rows(df: pl.DataFrame, objectives: Objectives | dict | str | Path, ws: Workspace | None = None,
                vectors: np.ndarray | None = None, model: str | None = None,
                prototypes: dict[str, np.ndarray] | None = None) -> pl.DataFrame:
    """Per row and axis: the assigned value, how (label/keyword/embedding/none), a
    confidence, and whether it is on the objective. Columns: ``id`` and, per axis
    A, ``A``, ``A_method``, ``A_label`` (the row's own label, as an objective
    value, or null), ``A_confidence``, ``A_on``.

    ``vectors`` (unit rows aligned with ``df``) are used if given; otherwise only
    rows that reach the embedding rule are embedded. ``prototypes``: a dict
    the axes' prototype vectors are kept in (by axis) and taken from, so that
    calls for many chunks of rows, with one objectives and model, embed them once.
    """
    obj = load_objectives(objectives)
    texts = df.select(text_for_scope(obj.scope))["text"].fill_null("")
    question = df.select(pl.concat_str([question_text(), response_text()], separator="\n", ignore_nulls=True)
                         .alias("q"))["q"].fill_null("")
    result = pl.DataFrame({"id": df["id"] if "id" in df.columns else pl.Series(range(df.height)).cast(pl.String)})
    need_embedding: dict[str, np.ndarray] = {}
    staged: dict[str, dict[str, Any]] = {}
    for axis in AXES:
        values = obj.values(axis)
        names = [v.name for v in values]
        alias = {a: v.name for v in values for a in [v.name, *v.aliases]}
        labels = df[axis] if axis in df.columns else pl.Series([None] * df.height, dtype=pl.String)
        labels = labels.cast(pl.String)
        mapped = labels.replace_strict(alias, default=None, return_dtype=pl.String)
        has_label = labels.is_not_null() & (labels.str.strip_chars() != "")
        assigned = pl.when(mapped.is_not_null()).then(mapped).otherwise(labels)
        value = pl.select(assigned.alias("v")).to_series().to_numpy().astype(object)
        method = np.where(has_label.to_numpy(), "label", "none").astype(object)
        conf = np.where(has_label.to_numpy(), 1.0, np.nan)

        # keywords judge every row: they override a label naming another value of
        # the objectives (labels are often one value for a whole file)
        label_on = mapped.is_not_null().to_numpy()
        todo = (~has_label.to_numpy()) | label_on
        if values and todo.any():
            # Keyword/pattern hits per value, one vectorized count per value.
            exprs = [pl.col("t").str.count_matches(rx).alias(f"k{i}")
                     for i, v in enumerate(values) if (rx := _keyword_regex(v)) is not None]
            if exprs:
                source = question if axis in KEYWORDS_ON_QUESTION else texts
                sub = pl.DataFrame({"t": source.filter(pl.Series(todo))})
                hits = np.zeros((sub.height, len(values)), dtype=np.int64)
                counted = sub.select(exprs)
                for col in counted.columns:
                    hits[:, int(col[1:])] = counted[col].to_numpy()
                total = hits.sum(axis=1)
                best = hits.argmax(axis=1)  # first max: ties go to file order
                rows = np.flatnonzero(todo)
                got = total > 0
                kw = np.array(names, dtype=object)[best]
                got &= ~(label_on[rows] & (kw == value[rows]))  # the keywords agree with the label: a label
                value[rows[got]] = kw[got]
                method[rows[got]] = "keyword"
                conf[rows[got]] = hits[got, best[got]] / total[got]
                todo[rows[got]] = False
        todo &= ~has_label.to_numpy()  # labelled rows without a keyword hit keep their label
        if values and todo.any():
            need_embedding[axis] = todo.copy()
        staged[axis] = {"value": value, "method": method, "conf": conf,
                        "label": pl.select(mapped.alias("m")).to_series()}

    if need_embedding:
        from bakeoff.curate.embeddings import embed_texts

        model = model or obj.model
        rows_needed = np.flatnonzero(np.logical_or.reduce(list(need_embedding.values())))
        if vectors is None:
            sub_vecs = embed_texts(texts.gather(rows_needed).to_list(), ws=ws, model=model)
            row_vecs = np.zeros((df.height, sub_vecs.shape[1]), dtype=np.float32)
            row_vecs[rows_needed] = sub_vecs
        else:
            row_vecs = vectors
        for axis, todo in need_embedding.items():
            values = obj.values(axis)
            protos = prototypes.get(axis) if prototypes is not None else None
            if protos is None:
                protos = _prototypes(values, ws, model)
                if prototypes is not None:
                    prototypes[axis] = protos
            idx = np.flatnonzero(todo)
            sims = row_vecs[idx] @ protos.T
            best = sims.argmax(axis=1)
            best_sim = sims[np.arange(len(idx)), best].astype(np.float64)
            ok = best_sim >= obj.floor
            st = staged[axis]
            names = np.array([v.name for v in values], dtype=object)
            st["value"][idx] = np.where(ok, names[best], UNASSIGNED)
            st["method"][idx] = np.where(ok, "embedding", "none")
            st["conf"][idx] = best_sim

    cols = []
    for axis in AXES:
        st = staged[axis]
        on_values = set(obj.names(axis))
        v = pl.Series(axis, st["value"].tolist(), dtype=pl.String).fill_null(UNASSIGNED)
        cols += [v, pl.Series(f"{axis}_method", st["method"].tolist(), dtype=pl.String),
                 st["label"].alias(f"{axis}_label"),
                 pl.Series(f"{axis}_confidence", st["conf"], dtype=pl.Float64),
                 # an axis the objectives do not constrain is on-objective for every row
                 (v.is_in(list(on_values)) if on_values
                  else pl.Series([True] * df.height, dtype=pl.Boolean)).alias(f"{axis}_on")]
    return result.with_columns(cols)


def _prototypes(values: list[ObjectiveValue], ws: Workspace | None, model: str | None) -> np.ndarray:
    """One unit vector per value: mean of its description's vector and the mean of
    its examples' vectors (each source weighted equally), normalised."""
    from bakeoff.curate.embeddings import embed_texts

    texts: list[str] = []
    owner: list[int] = []
    weight: list[float] = []
    for i, v in enumerate(values):
        desc = [v.description] if v.description.strip() else []
        ex = [e for e in v.examples if e.strip()]
        if not desc and not ex:
            desc = [v.name]
        for t in desc:
            texts.append(t), owner.append(i), weight.append(1.0 if not ex else 0.5)
        for t in ex:
            texts.append(t), owner.append(i), weight.append((1.0 if not desc else 0.5) / len(ex))
    vecs = embed_texts(texts, ws=ws, model=model, show_progress=False)
    protos = np.zeros((len(values), vecs.shape[1]), dtype=np.float64)
    np.add.at(protos, np.array(owner), vecs * np.array(weight)[:, None])
    protos /= np.maximum(np.linalg.norm(protos, axis=1, keepdims=True), 1e-12)
    return protos.astype(np.float32)


# --- measures ---------------------------------------------------------------------

#: Rows summed at a time in float64 (bounded memory on big cells).
_SUM_CHUNK = 65536


def _vector_sums(vectors: np.ndarray) -> tuple[np.ndarray, float]:
    """``sum v`` (float64) and ``sum |v|^2`` of the rows of ``vectors``: what
    :func:`mean_pairwise_distance` needs, and what adds up across chunks of rows."""
    s = np.zeros(vectors.shape[1], dtype=np.float64)
    sq = 0.0
    for start in range(0, len(vectors), _SUM_CHUNK):
        v = vectors[start:start + _SUM_CHUNK].astype(np.float64)
        s += v.sum(axis=0)
        sq += float(np.einsum("ij,ij->", v, v))
    return s, sq


def _distance_from_sums(s: np.ndarray, sq: float, n: int) -> float | None:
    """Mean pairwise cosine distance of ``n`` unit rows from their sums."""
    if n < 2:
        return None
    pair_sum = float(s @ s - sq)
    return float(1.0 - pair_sum / (n * (n - 1)))


def mean_pairwise_distance(vectors: np.ndarray) -> float | None:
    """Mean cosine distance over all pairs of distinct unit rows, in O(n d):
    sum_{i != j} v_i . v_j = |sum v|^2 - sum |v_i|^2 (no pair loop, no n x n matrix)."""
    if len(vectors) < 2:
        return None
    s, sq = _vector_sums(vectors)
    return _distance_from_sums(s, sq, len(vectors))


def _quantiles(s: pl.Series) -> dict[str, float]:
    if s.len() == 0:
        return {}
    return {"min": int(s.min()), "p10": int(s.quantile(0.1, "nearest")), "p50": int(s.quantile(0.5, "nearest")),
            "p90": int(s.quantile(0.9, "nearest")), "max": int(s.max()), "mean": round(float(s.mean()), 1)}


# --- the report: partials of chunks of rows, merged ---------------------------------

@dataclass
class CoveragePartial:
    """What a chunk of rows contributes to the coverage report.

    Partials of disjoint chunks merge (:func:`merge_partials`) into the partial
    of all their rows, and :func:`report_from_partial` makes the report of one:
    the local report is the report of one partial (of every row); on Ray each
    block's partial is made on a worker and only the partials reach the driver
    (``bakeoff.curate.on_ray.coverage``). What grows with the rows is four
    small numbers per row (cell, prompt and response length: the exact
    medians and quantiles need them); the rest is counts, per-cell vector sums
    and a few example rows.
    """

    rows: int
    first_row: int                       # the ``_row`` of the chunk's first row
    diversity: bool                      # whether rows were embedded for diversity
    examples: int                        # example rows kept per off-objective domain
    #: per axis: rows by (value, method, relabelled) -- column ``len``
    axis_counts: dict[str, pl.DataFrame]
    #: the (domain, task) cells the rows fall in (off-objective values as OTHER),
    #: and the ``_row`` of each one's first row
    cells: list[tuple[str, str]]
    cell_first: list[int]
    #: per row: ``cell`` (index into ``cells``), ``prompt_chars``, ``response_chars``
    lengths: pl.DataFrame
    #: per cell: (sum of its rows' vectors in float64, sum of their squared norms)
    cell_sums: dict[tuple[str, str], tuple[np.ndarray, float]]
    overall_sums: tuple[np.ndarray, float] | None
    off_rows: int
    off_reasons: dict[str, int]          # every reason, zeros included
    #: the first ``examples`` off-objective rows per domain: ``_row``, ``id``,
    #: the axes' values, methods and on-flags, ``text`` (a snippet)
    off_examples: pl.DataFrame


def coverage_partial(df: pl.DataFrame, objectives: Objectives | dict | str | Path, ws: Workspace | None = None,
                     *, model: str | None = None, diversity: bool = True, examples: int = 5,
                     prototypes: dict[str, np.ndarray] | None = None, show_progress: bool = True
                     ) -> CoveragePartial:
    """The partial report of the rows of ``df``. Rows are numbered by its
    ``_row`` column if it has one (a Ray block), else from 0. ``prototypes``:
    see :func:`assign_rows`."""
    obj = load_objectives(objectives)
    model_name = model or obj.model
    from bakeoff.curate.embeddings import embed_texts

    vectors = None
    if diversity and df.height:
        texts = df.select(text_for_scope(obj.scope))["text"].fill_null("").to_list()
        vectors = embed_texts(texts, ws=ws, model=model_name, show_progress=show_progress)
    assigned = assign_rows(df, obj, ws=ws, vectors=vectors, model=model_name, prototypes=prototypes)
    row_no = df["_row"].cast(pl.Int64) if "_row" in df.columns else pl.int_range(df.height, dtype=pl.Int64,
                                                                                   eager=True)
    frame = assigned.with_columns(
        pl.Series("_row", row_no),
        *df.select(prompt_text().str.len_chars().alias("prompt_chars"),
                   response_text().str.len_chars().alias("response_chars")).get_columns())

    axis_counts = {
        axis: frame.group_by(pl.col(axis).alias("value"), pl.col(f"{axis}_method").alias("method"),
                             (pl.col(f"{axis}_label").is_not_null() & (pl.col(f"{axis}_label") != pl.col(axis)))
                             .alias("relabelled")).len()
        for axis in AXES}

    # The domain x task cell of every row: objective values, else OTHER.
    cell_key = frame.select(
        pl.when(pl.col("domain_on")).then(pl.col("domain")).otherwise(pl.lit(OTHER)).alias("_d"),
        pl.when(pl.col("task_on")).then(pl.col("task")).otherwise(pl.lit(OTHER)).alias("_t"), "_row")
    cells_frame = cell_key.unique(["_d", "_t"], keep="first", maintain_order=True)
    cells = list(cells_frame.select("_d", "_t").iter_rows())
    code = cell_key.join(cells_frame.select("_d", "_t").with_row_index("cell"), on=["_d", "_t"], how="left",
                         maintain_order="left")["cell"]
    lengths = frame.select(code.cast(pl.UInt32).alias("cell"), "prompt_chars", "response_chars")

    cell_sums: dict[tuple[str, str], tuple[np.ndarray, float]] = {}
    overall_sums = None
    if vectors is not None:
        overall_sums = _vector_sums(vectors)
        codes = code.to_numpy()
        order = np.argsort(codes, kind="stable")  # each cell's rows, in row order
        bounds = np.searchsorted(codes[order], np.arange(len(cells) + 1))
        for i, cell in enumerate(cells):
            cell_sums[cell] = _vector_sums(vectors[order[bounds[i]:bounds[i + 1]]])

    # Off-objective rows: any constrained axis off the objective or unassigned.
    constrained = [a for a in AXES if obj.values(a)]
    off_expr = pl.any_horizontal([~pl.col(f"{a}_on") for a in constrained]) if constrained else pl.lit(False)
    off_rows = frame.with_row_index("_i").filter(off_expr)
    reasons: dict[str, int] = {}
    for a in constrained:
        reasons[f"{a}: not in objectives"] = int((~off_rows[f"{a}_on"] & (off_rows[a] != UNASSIGNED)).sum())
        reasons[f"{a}: unassigned"] = int((off_rows[a] == UNASSIGNED).sum())
    # a chunk's first rows per domain hold the first rows per domain of all chunks
    picked = off_rows.filter(pl.int_range(pl.len()).over("domain") < examples)
    texts = df[picked["_i"]].select(text_for_scope("all"))["text"].fill_null("")
    off_examples = picked.select(
        "_row", "id", *AXES, *[f"{a}_method" for a in AXES], *[f"{a}_on" for a in AXES],
        pl.Series("text", [_snippet(t) for t in texts.to_list()], dtype=pl.String))
    return CoveragePartial(
        rows=df.height, first_row=int(row_no.min()) if df.height else 0,
        diversity=diversity, examples=examples, axis_counts=axis_counts, cells=cells,
        cell_first=cells_frame["_row"].to_list(), lengths=lengths,
        cell_sums=cell_sums, overall_sums=overall_sums, off_rows=off_rows.height, off_reasons=reasons,
        off_examples=off_examples)


def _first_per_domain(rows: pl.DataFrame, k: int) -> pl.DataFrame:
    """The first ``k`` rows (by ``_row``) of each domain, in ``_row`` order."""
    return rows.sort("_row").filter(pl.int_range(pl.len()).over("domain") < k)


def merge_partials(parts: list[CoveragePartial]) -> CoveragePartial:
    """The partial of the rows of all ``parts`` (disjoint chunks of one input).
    Counts add up, lengths are concatenated, vector sums add (in the order of
    the chunks' first rows, so that a merge is deterministic), example rows
    are picked again."""
    if not parts:
        raise ValueError("merge_partials: no partials")
    parts = sorted(parts, key=lambda p: p.first_row)
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    cells: list[tuple[str, str]] = []
    cell_first: list[int] = []
    index: dict[tuple[str, str], int] = {}
    lengths = []
    cell_sums: dict[tuple[str, str], tuple[np.ndarray, float]] = {}
    overall: tuple[np.ndarray, float] | None = None
    reasons: dict[str, int] = {}
    for p in parts:
        for c, row in zip(p.cells, p.cell_first):
            if c not in index:
                index[c] = len(cells)
                cells.append(c)
                cell_first.append(row)
            cell_first[index[c]] = min(cell_first[index[c]], row)
        lut = np.asarray([index[c] for c in p.cells], dtype=np.uint32)
        cell = pl.Series("cell", lut[p.lengths["cell"].to_numpy()], dtype=pl.UInt32)
        lengths.append(p.lengths.with_columns(cell))
        for c, (s, sq) in p.cell_sums.items():
            s0, sq0 = cell_sums.get(c, (0.0, 0.0))
            cell_sums[c] = (s0 + s, sq0 + sq)
        if p.overall_sums is not None:
            overall = p.overall_sums if overall is None else (overall[0] + p.overall_sums[0],
                                                              overall[1] + p.overall_sums[1])
        for r, k in p.off_reasons.items():
            reasons[r] = reasons.get(r, 0) + k
    axis_counts = {axis: pl.concat([p.axis_counts[axis] for p in parts], how="vertical_relaxed")
                   .group_by("value", "method", "relabelled").agg(pl.col("len").sum())
                   for axis in AXES}
    return CoveragePartial(
        rows=sum(p.rows for p in parts), first_row=first.first_row, diversity=first.diversity,
        examples=first.examples, axis_counts=axis_counts, cells=cells, cell_first=cell_first,
        lengths=pl.concat(lengths, how="vertical_relaxed"), cell_sums=cell_sums, overall_sums=overall,
        off_rows=sum(p.off_rows for p in parts), off_reasons=reasons,
        off_examples=_first_per_domain(pl.concat([p.off_examples for p in parts], how="vertical_relaxed"),
                                       first.examples))


def coverage_report(df: pl.DataFrame, objectives: Objectives | dict | str | Path, ws: Workspace | None = None,
                    *, model: str | None = None, diversity: bool = True, examples: int = 5,
                    dataset: str | None = None) -> dict[str, Any]:
    """The coverage of ``df`` against ``objectives``: a JSON-ready dict (see the
    module doc). ``diversity=False`` skips embedding rows that the labels and
    keywords already assigned (no diversity figures then)."""
    obj = load_objectives(objectives)
    part = coverage_partial(df, obj, ws, model=model, diversity=diversity, examples=examples)
    return report_from_partial(part, obj, model=model, dataset=dataset)


def cell_diversity(part: CoveragePartial) -> dict[tuple[str, str], float | None]:
    """Per cell, the mean pairwise cosine distance of its rows (unrounded;
    None for a cell of fewer than two rows or without vectors)."""
    counts = np.bincount(part.lengths["cell"].to_numpy(), minlength=len(part.cells))
    return {c: _distance_from_sums(*part.cell_sums[c], int(counts[i])) if c in part.cell_sums else None
            for i, c in enumerate(part.cells)}


def report_from_partial(part: CoveragePartial, objectives: Objectives | dict | str | Path, *,
                        model: str | None = None, dataset: str | None = None) -> dict[str, Any]:
    """The coverage report (see :func:`coverage_report`) of the rows of ``part``."""
    obj = load_objectives(objectives)
    model_name = model or obj.model
    from bakeoff.curate.embeddings import resolve_model_name

    n = part.rows
    measured = part.diversity and n > 0

    # Per axis: counts by value and method, gaps against value minimums.
    axes: dict[str, Any] = {}
    gaps: list[dict[str, Any]] = []
    for axis in AXES:
        values = obj.values(axis)
        names = obj.names(axis)
        ac = part.axis_counts[axis]
        counts = ac.group_by("value", "method").agg(pl.col("len").sum()).sort("value", "method")
        by_value: dict[str, dict[str, Any]] = {}
        for v in values:
            sel = counts.filter(pl.col("value") == v.name)
            c = int(sel["len"].sum())
            by_value[v.name] = {"count": c, "min": v.min, "gap": c < v.min, "short": max(0, v.min - c),
                                "by_method": {m: int(k) for m, k in sel.select("method", "len").iter_rows()}}
            if c < v.min:
                gaps.append({"kind": "axis", "axis": axis, "value": v.name, "count": c, "min": v.min,
                             "short": v.min - c})
        on = pl.col("value").is_in(names) if names else pl.lit(True)
        off = (counts.filter(~on & (pl.col("value") != UNASSIGNED)).group_by("value").agg(pl.col("len").sum())
               .sort(["len", "value"], descending=[True, False]))
        axes[axis] = {
            "constrained": bool(values),
            "values": by_value,
            "off_objective": {k: int(c) for k, c in off.iter_rows()},
            "unassigned": int(counts.filter(pl.col("value") == UNASSIGNED)["len"].sum()) if values else 0,
            "by_method": {m: int(c) for m, c in counts.group_by("method").agg(pl.col("len").sum())
                          .sort("method").iter_rows()},
            # rows whose own label named another objective value than their keywords
            "relabelled": int(ac.filter(pl.col("relabelled"))["len"].sum()),
        }

    # Domain x task cells: objective values, plus what is off-objective or unassigned.
    dom_names = obj.names("domain")
    task_names = obj.names("task")
    cell_stats = part.lengths.group_by("cell").agg(
        pl.len().alias("count"),
        pl.col("prompt_chars").median().alias("prompt_p50"), pl.col("response_chars").median().alias("response_p50"),
    )
    stats_by = {part.cells[i]: (c, pp, rp) for i, c, pp, rp in cell_stats.iter_rows()}
    diversity_by = cell_diversity(part) if measured else {}
    dom_axis = dom_names or sorted({d for d, _ in stats_by if d != OTHER})
    task_axis = task_names or sorted({t for _, t in stats_by if t != OTHER})
    cells: list[dict[str, Any]] = []
    for d in [*dom_axis, OTHER]:
        for t in [*task_axis, OTHER]:
            c, pp, rp = stats_by.get((d, t), (0, None, None))
            if (d == OTHER or t == OTHER) and c == 0:
                continue
            on = d != OTHER and t != OTHER
            minimum = obj.cell_minimum(d, t) if on else 0
            div = diversity_by.get((d, t)) if c >= 2 else None
            cell = {"domain": d, "task": t, "count": int(c), "on_objective": on, "min": minimum,
                    "gap": on and c < minimum, "short": max(0, minimum - c) if on else 0,
                    "diversity": None if div is None else round(div, 4),
                    "prompt_chars_p50": None if pp is None else int(pp),
                    "response_chars_p50": None if rp is None else int(rp)}
            cells.append(cell)
            if cell["gap"]:
                gaps.append({"kind": "cell", "domain": d, "task": t, "count": int(c), "min": minimum,
                             "short": minimum - int(c)})

    # Off-objective rows, with examples round-robin over their domains, so each shows up.
    constrained = [a for a in AXES if obj.values(a)]
    reasons = {r: k for r, k in part.off_reasons.items() if k}
    ex_rows = (part.off_examples.sort("_row").with_columns(pl.int_range(pl.len()).over("domain").alias("_k"))
               .sort(["_k", "domain", "_row"]).head(part.examples))
    off_examples = [{
        "id": r["id"], **{a: r[a] for a in AXES},
        **{f"{a}_method": r[f"{a}_method"] for a in AXES},
        "why": [f"{a}={r[a]}" + (" (not in objectives)" if r[a] != UNASSIGNED else "")
                for a in constrained if not r[f"{a}_on"]],
        "text": r["text"],
    } for r in ex_rows.iter_rows(named=True)]

    # Lengths by domain (objective domains and the rest), for tables and histograms.
    # the domains in the order their first rows come (the histograms' legend order)
    first_of: dict[str, int] = {}
    for (d, _), row in zip(part.cells, part.cell_first):
        first_of[d] = min(first_of.get(d, row), row)
    domains = sorted(first_of, key=first_of.__getitem__)
    dom_of_cell = np.asarray([domains.index(d) for d, _ in part.cells], dtype=np.uint32)
    by_domain = part.lengths.select(
        pl.Series("_d", dom_of_cell[part.lengths["cell"].to_numpy()], dtype=pl.UInt32),
        "prompt_chars", "response_chars")
    length_by_domain = {}
    for d in [*dom_axis, OTHER]:
        sub = by_domain.filter(pl.col("_d") == domains.index(d)) if d in domains else by_domain.head(0)
        if sub.height:
            length_by_domain[d] = {"rows": sub.height, "prompt_chars": _quantiles(sub["prompt_chars"]),
                                   "response_chars": _quantiles(sub["response_chars"])}

    on_rows = n - part.off_rows
    warnings = []
    if resolve_model_name(model_name) == "hashing" and any(
            axes[a]["by_method"].get("embedding") for a in AXES):
        warnings.append("rows assigned by the 'hashing' embedder were matched by word overlap with the "
                        "objectives' descriptions, not by meaning: use a real embedding model "
                        "(all-MiniLM-L6-v2) before trusting those assignments")
    overall = _distance_from_sums(*part.overall_sums, n) if measured and part.overall_sums else None
    return {
        "dataset": dataset, "rows": n, "objectives": obj.to_dict(), "warnings": warnings,
        "model": resolve_model_name(model_name), "floor": obj.floor, "scope": obj.scope,
        "on_objective": {"rows": on_rows, "share": round(on_rows / n, 4) if n else None},
        "axes": axes,
        "domains": list(dom_axis), "tasks": list(task_axis),
        "cells": cells,
        "gaps": gaps,
        "off_objective": {"rows": part.off_rows, "share": round(part.off_rows / n, 4) if n else None,
                          "by_reason": reasons, "examples": off_examples},
        "lengths": {"by_domain": length_by_domain,
                    "overall": {"prompt_chars": _quantiles(part.lengths["prompt_chars"]),
                                "response_chars": _quantiles(part.lengths["response_chars"])}},
        "diversity": {"measured": measured, "overall": None if overall is None else round(overall, 4)},
        "length_histograms": _histograms(by_domain, domains),
    }


def _histograms(by_domain: pl.DataFrame, domains: list[str], bins: int = 24) -> dict[str, Any]:
    """Log-spaced histograms of prompt and response length per domain (shared edges,
    so the HTML can overlay them). ``by_domain``: per row, ``_d`` (an index
    into ``domains``, which are in the order of their first rows) and the lengths."""
    out: dict[str, Any] = {}
    for col in ("prompt_chars", "response_chars"):
        s = by_domain[col]
        if s.len() == 0:
            continue
        positive = s.filter(s > 0)
        lo = float(positive.min()) if positive.len() else 1.0
        hi = max(lo * 2, float(s.max()) + 1.0)
        # Log-spaced between the shortest and longest text, plus a bin for empty ones.
        edges = np.unique(np.round(np.geomspace(lo, hi, bins + 1)))
        edges = np.concatenate([[0.0], edges]) if lo > 0 else edges
        per = {}
        for i, d in enumerate(domains):
            vals = by_domain.filter(pl.col("_d") == i)[col].to_numpy()
            per[d] = np.histogram(vals, bins=edges)[0].tolist()
        out[col] = {"edges": edges.tolist(), "counts": per}
    return out


def _snippet(text: str, width: int = 200) -> str:
    text = " ".join((text or "").split())
    return text if len(text) <= width else text[: width - 1] + "…"


# --- rendering ---------------------------------------------------------------------

def render_terminal(report: dict[str, Any]) -> None:
    """Rich tables on stdout: the domain x task grid with gaps, axes, off-objective
    rows, diversity and lengths."""
    from rich.table import Table

    from bakeoff.console import escape, out, table

    title = escape(f"coverage of {report.get('dataset') or 'rows'} against '{report['objectives']['name']}'")
    on = report["on_objective"]
    out.print(f"[bold]{title}[/]  {report['rows']} rows, {on['rows']} on objective "
              f"({(on['share'] or 0):.0%}), model={report['model']}", highlight=False)
    for w in report.get("warnings") or []:
        out.print(f"[bold yellow]warning:[/] {w}", highlight=False)
    cells = {(c["domain"], c["task"]): c for c in report["cells"]}
    doms = [*report["domains"], *([OTHER] if any(d == OTHER for d, _ in cells) else [])]
    tasks = [*report["tasks"], *([OTHER] if any(t == OTHER for _, t in cells) else [])]
    grid = Table(title="rows by domain x task (red = under minimum; diversity in brackets)", title_justify="left")
    grid.add_column("domain \\ task")
    for t in tasks:
        grid.add_column(escape(t), justify="right")
    for d in doms:
        row = [escape(d)]
        for t in tasks:
            c = cells.get((d, t))
            if c is None:  # an empty cell: a gap if the objective sets a minimum for it
                minimum = report["objectives"]["cell_min"] if OTHER not in (d, t) else 0
                minimum = next((x["min"] for x in report["objectives"]["cells"]
                                if x["domain"] == d and x["task"] == t), minimum)
                row.append(f"[bold red]0 < {minimum}[/]" if minimum else "[dim]0[/]")
                continue
            txt = str(c["count"])
            if c["diversity"] is not None:
                txt += f" [dim]({c['diversity']:.2f})[/]"
            if c["gap"]:
                txt = f"[bold red]{c['count']} < {c['min']}[/]"
            elif not c["on_objective"]:
                txt = f"[yellow]{txt}[/]"
            row.append(txt)
        grid.add_row(*row)
    out.print(grid)

    rows = []
    for axis, a in report["axes"].items():
        if not a["constrained"]:
            continue
        for v, s in a["values"].items():
            methods = ", ".join(f"{m}:{k}" for m, k in sorted(s["by_method"].items()))
            status = f"[bold red]short {s['short']}[/]" if s["gap"] else "ok"
            rows.append([escape(axis), escape(v), s["count"], s["min"], status, escape(methods)])
        for v, k in a["off_objective"].items():
            rows.append([escape(axis), f"[yellow]{escape(v)}[/]", k, "", "[yellow]not in objectives[/]", ""])
        if a["unassigned"]:
            rows.append([escape(axis), f"[yellow]{escape(UNASSIGNED)}[/]", a["unassigned"], "", "[yellow]no match[/]", ""])
    out.print(table("axes", ["axis", "value", "rows", "min", "status", "assigned by"], rows, markup=True))

    if report["gaps"]:
        out.print(table("gaps (fill these before training)", ["where", "rows", "min", "short"],
                        [[f"{g['domain']} x {g['task']}" if g["kind"] == "cell" else f"{g['axis']}={g['value']}",
                          g["count"], g["min"], g["short"]] for g in report["gaps"]]))
    else:
        out.print("[green]no gaps: every cell and value meets its minimum[/]")
    off = report["off_objective"]
    if off["rows"]:
        out.print(table(f"off-objective rows: {off['rows']} ({(off['share'] or 0):.0%})", ["reason", "rows"],
                        list(off["by_reason"].items())))
        out.print(table("examples", ["id", "why", "text"],
                        [[e["id"][:12], "; ".join(e["why"]), e["text"][:90]] for e in off["examples"]]))
    lens = report["lengths"]["by_domain"]
    if lens:
        out.print(table("length in characters (p10 / p50 / p90)", ["domain", "rows", "prompt", "response"],
                        [[d, s["rows"], _q(s["prompt_chars"]), _q(s["response_chars"])] for d, s in lens.items()]))


def _q(q: dict[str, Any]) -> str:
    return f"{q['p10']} / {q['p50']} / {q['p90']}" if q else "-"


def write_html(report: dict[str, Any], path: str | Path) -> Path:
    """A self-contained HTML page: heatmap of domain x task counts with gaps
    marked, length histograms, and the tables of the terminal view."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    from bakeoff import html as H

    sections: list[str] = []
    on = report["on_objective"]
    sections.append(
        f"<p>{report['rows']} rows of <b>{H.esc(report.get('dataset') or 'the dataset')}</b> against "
        f"<b>{H.esc(report['objectives']['name'])}</b>: {on['rows']} on objective "
        f"({(on['share'] or 0):.0%}); {len(report['gaps'])} gap(s). Embedding model "
        f"<code>{H.esc(report['model'])}</code>, floor {report['floor']}.</p>")
    if report["objectives"].get("description"):
        sections.append(f"<p class=muted>{H.esc(report['objectives']['description'])}</p>")

    # Heatmap.
    cells = {(c["domain"], c["task"]): c for c in report["cells"]}
    doms = [*report["domains"], *([OTHER] if any(d == OTHER for d, _ in cells) else [])]
    tasks = [*report["tasks"], *([OTHER] if any(t == OTHER for _, t in cells) else [])]
    if doms and tasks:
        grid = np.array([[cells.get((d, t), {}).get("count", 0) for t in tasks] for d in doms], dtype=float)
        fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(tasks), 1.0 + 0.6 * len(doms)))
        im = ax.imshow(np.log1p(grid), cmap="Blues", aspect="auto")
        ax.set_xticks(range(len(tasks)), tasks, rotation=30, ha="right")
        ax.set_yticks(range(len(doms)), doms)
        vmax = np.log1p(grid).max() or 1.0
        for i, d in enumerate(doms):
            for j, t in enumerate(tasks):
                c = cells.get((d, t))
                label = str(int(grid[i, j]))
                if c and c["gap"]:
                    label += f"\n< {c['min']}"
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#c62828", lw=3,
                                           hatch="//"))
                elif c is None and d != OTHER and t != OTHER and report["objectives"]["cell_min"]:
                    label += f"\n< {report['objectives']['cell_min']}"
                    ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="#c62828", lw=3))
                dark = np.log1p(grid[i, j]) > 0.6 * vmax
                ax.text(j, i, label, ha="center", va="center", fontsize=9, color="white" if dark else "#222")
        ax.set_title("rows by domain x task (log colour; red = under minimum)")
        fig.colorbar(im, ax=ax, label="log(1 + rows)")
        sections.append("<h2>Domain x task</h2>" + H.figure(fig, "domain x task heatmap"))
    sections.append(H.table(
        ["domain", "task", "rows", "min", "gap", "diversity", "prompt chars p50", "response chars p50"],
        [[c["domain"], c["task"], c["count"], c["min"] if c["on_objective"] else "-", "GAP" if c["gap"] else "",
          "" if c["diversity"] is None else f"{c['diversity']:.3f}", c["prompt_chars_p50"], c["response_chars_p50"]]
         for c in report["cells"]],
        highlight=[i for i, c in enumerate(report["cells"]) if c["gap"]]))
    sections.append("<p class=muted>Diversity = mean pairwise cosine distance of the rows' embeddings "
                    "(0 = all identical); a big cell with low diversity is many copies of few examples.</p>")

    gaps = report["gaps"]
    sections.append("<h2>Gaps</h2>" + (H.table(
        ["where", "rows", "min", "short"],
        [[f"{g['domain']} x {g['task']}" if g["kind"] == "cell" else f"{g['axis']} = {g['value']}",
          g["count"], g["min"], g["short"]] for g in gaps], highlight=range(len(gaps)))
        if gaps else "<p class=good>No gaps: every cell and value meets its minimum.</p>"))

    axis_rows = []
    for axis, a in report["axes"].items():
        if not a["constrained"]:
            continue
        for v, s in a["values"].items():
            axis_rows.append([axis, v, s["count"], s["min"], f"short {s['short']}" if s["gap"] else "ok",
                              ", ".join(f"{m}: {k}" for m, k in sorted(s["by_method"].items()))])
        for v, k in a["off_objective"].items():
            axis_rows.append([axis, v, k, "", "not in objectives", "label"])
        if a["unassigned"]:
            axis_rows.append([axis, UNASSIGNED, a["unassigned"], "", "no match", ""])
    sections.append("<h2>Axes</h2>" + H.table(["axis", "value", "rows", "min", "status", "assigned by"], axis_rows,
                                              highlight=[i for i, r in enumerate(axis_rows) if r[4] != "ok"]))

    off = report["off_objective"]
    sections.append(f"<h2>Off-objective rows: {off['rows']} ({(off['share'] or 0):.0%})</h2>")
    if off["rows"]:
        sections.append(H.table(["reason", "rows"], list(off["by_reason"].items())))
        sections.append(H.table(["id", "domain", "doctype", "task", "why", "text"],
                                [[e["id"], e["domain"], e["doctype"], e["task"], "; ".join(e["why"]), e["text"]]
                                 for e in off["examples"]]))

    hists = report.get("length_histograms") or {}
    if hists:
        fig, axs = plt.subplots(1, len(hists), figsize=(6 * len(hists), 3.4), squeeze=False)
        for ax, (col, h) in zip(axs[0], hists.items()):
            edges = np.array(h["edges"])
            for d, counts in h["counts"].items():
                ax.stairs(counts, edges, label=d, fill=False, lw=1.6)
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlabel(col.replace("_", " "))
            ax.set_ylabel("rows")
            ax.legend(fontsize=8)
        fig.suptitle("length distributions by domain")
        sections.append("<h2>Lengths</h2>" + H.figure(fig, "length histograms"))
    lens = report["lengths"]["by_domain"]
    sections.append(H.table(["domain", "rows", "prompt p10/p50/p90", "response p10/p50/p90"],
                            [[d, s["rows"], _q(s["prompt_chars"]), _q(s["response_chars"])] for d, s in lens.items()]))
    return H.write(path, f"Coverage: {report.get('dataset') or 'dataset'}", sections)


__all__ = ["Objectives", "ObjectiveValue", "load_objectives", "parse_objectives", "assign_rows",
           "coverage_report", "CoveragePartial", "coverage_partial", "merge_partials", "report_from_partial",
           "cell_diversity", "mean_pairwise_distance", "render_terminal", "write_html",
           "UNASSIGNED", "AXES"]
