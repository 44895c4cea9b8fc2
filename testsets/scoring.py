"""The scoring spec: each test item carries its reference answer and how to score it.

A test set row stores ``reference`` (the answer) and ``scoring`` (a JSON object
``{"method": ..., options}``) that ``bakeoff.evaluate.scorers`` reads. The method
defaults by task and by what the reference looks like, and can be overridden per
task (``--scoring extraction=fields,qa=token_f1`` or a config mapping):

- ``arithmetic``/``qa`` (or any task) whose reference is a single number, and
  ``arithmetic`` whose reference shows its working ("12 + 30 = 42": the last
  number is the result) -> ``numeric`` (matched at the reference's own
  precision) with the ``scale`` the prompt states its figures in ("in
  thousands" -> 1000), so "1.2 million" or "1,200" both count;
- ``classification`` -> ``choice`` with the label set of that task (every distinct
  reference of that task seen in the training data and the pool);
- ``extraction`` -> ``fields`` with the keys of the reference (a JSON object or
  ``field: value`` lines);
- anything else -> ``token_f1``.

Number and field parsing are those of the evaluate scorers, so a reference this
module calls numeric is one the numeric scorer can read.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Mapping

import polars as pl

from bakeoff.workspace import BakeoffError

def _methods() -> tuple[str, ...]:
    from bakeoff.evaluate.scorers import SCORERS

    return tuple(SCORERS)


#: The scoring methods, read from the evaluate scorers' registry (one list, not two).
METHODS = _methods()

#: Tasks whose references are labels (choice scoring with the task's label set).
CHOICE_TASKS = {"classification", "classify", "label", "labelling", "labeling", "sentiment", "choice",
                "multiple-choice", "mcq"}
#: Tasks whose references are structured fields.
FIELD_TASKS = {"extraction", "extract", "field-extraction", "information-extraction", "ie"}
#: Tasks whose answers are calculations: numeric even when the reference shows its working.
WORKED_TASKS = {"arithmetic", "math", "calculation"}
#: Tasks whose references, when numeric, are scored as numbers.
NUMERIC_TASKS = {"arithmetic", "math", "qa", "calculation", "numeric", "table-qa"}

# "(in thousands)", "in USD millions", "figures in billions"
_SCALE_RE = re.compile(r"\bin\s+(?:[A-Z]{3}\s+|\$\s*)?(thousands|millions|billions)\b", re.IGNORECASE)
_SCALE_VALUE = {"thousands": 1e3, "millions": 1e6, "billions": 1e9}


@dataclass
class ScoringConfig:
    """How scoring specs are chosen.

    ``overrides`` maps a task to a method name or to a full spec dict (``"*"``
    applies to every task); ``tolerance``/``abs_tolerance``, when set, are the
    relative/absolute tolerance of numeric answers. By default (None) a numeric
    answer matches when, rounded to the reference's own decimals, it equals the
    reference (as TAT-QA's evaluation does): a fixed band would pass 0.001 for
    0.004, or 1,230 for 1234.5;
    ``max_choices`` caps a label set (more distinct references than that is not a
    label task, and falls back to token F1).
    """

    overrides: dict[str, Any] = field(default_factory=dict)
    tolerance: float | None = None
    abs_tolerance: float | None = None
    max_choices: int = 30
    max_numeric_words: int = 12


def parse_overrides(text: str | None) -> dict[str, Any]:
    """``"extraction=fields,qa=token_f1"`` or a JSON object -> {task: method|spec}."""
    if not text:
        return {}
    text = text.strip()
    if text.startswith("{"):
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise BakeoffError(f"--scoring is not valid JSON: {exc}") from exc
        if not isinstance(obj, dict):
            raise BakeoffError("--scoring JSON must be an object mapping task -> method or spec")
        out = obj
    else:
        out = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in part:
                raise BakeoffError(f"--scoring expects TASK=METHOD pairs, got {part!r}")
            task, method = (s.strip() for s in part.split("=", 1))
            out[task] = method
    return validate_overrides(out)


def validate_overrides(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """Check a task -> method/spec mapping (from the CLI or a config file)."""
    for task, spec in mapping.items():
        method = spec if isinstance(spec, str) else (spec or {}).get("method") if isinstance(spec, dict) else None
        if method not in METHODS:
            raise BakeoffError(f"unknown scoring method {method!r} for task {task!r}; known: {', '.join(METHODS)}")
    return dict(mapping)


def _numbers(text: str) -> list[Any]:
    from bakeoff.evaluate.scorers import parse_numbers

    return parse_numbers(text)


def _fields(text: str) -> dict[str, str]:
    from bakeoff.evaluate.scorers import parse_fields

    return parse_fields(text)


def is_numeric_reference(reference: str, max_words: int = 12) -> bool:
    """A short answer that states exactly one number ("$1,204.50", "12.5%",
    "The total is 1.2 million")."""
    ref = (reference or "").strip()
    if not ref or len(ref.split()) > max_words:
        return False
    return len(_numbers(ref)) == 1


def prompt_scale(prompt: str) -> float:
    """The unit a prompt states its figures in ("(in thousands)" -> 1000), else 1."""
    m = _SCALE_RE.search(prompt or "")
    return _SCALE_VALUE[m.group(1).lower()] if m else 1.0


def label_sets(frames: list[pl.DataFrame], max_choices: int = 30) -> dict[str, list[str]]:
    """Per choice-like task, the distinct references seen (training + pool), when
    there are at most ``max_choices`` of them. Frames need ``task`` and ``reference``."""
    parts = [f.select(pl.col("task"), pl.col("reference").str.strip_chars())
             for f in frames if f.height and {"task", "reference"} <= set(f.columns)]
    if not parts:
        return {}
    df = pl.concat(parts).drop_nulls()
    df = df.filter(pl.col("task").str.to_lowercase().is_in(list(CHOICE_TASKS)) & (pl.col("reference") != ""))
    sets = df.group_by("task").agg(pl.col("reference").unique().sort())
    return {t: refs for t, refs in sets.iter_rows() if 1 < len(refs) <= max_choices}


def default_spec(task: str | None, reference: str, prompt: str, labels: Mapping[str, list[str]],
                 config: ScoringConfig | None = None) -> dict[str, Any]:
    """The scoring spec of one item (see the module docstring for the rules)."""
    config = config or ScoringConfig()
    task_key = (task or "").strip()
    override = config.overrides.get(task_key, config.overrides.get("*"))
    if isinstance(override, dict):
        spec = dict(override)
        method = spec.get("method")
    else:
        spec, method = {}, override
    t = task_key.lower()
    if method is None:
        if t in CHOICE_TASKS and task_key in labels:
            method = "choice"
        elif t in FIELD_TASKS and _fields(reference):
            method = "fields"
        elif (t in NUMERIC_TASKS or not t) and is_numeric_reference(reference, config.max_numeric_words):
            method = "numeric"
        elif t in WORKED_TASKS and _numbers(reference):
            # a worked calculation ends with its result; the numeric scorer reads the
            # last number of an answer (as GSM8K scoring does)
            method = "numeric"
        else:
            method = "token_f1"
    spec["method"] = method
    if method == "numeric":
        if config.tolerance is not None:
            spec.setdefault("tolerance", config.tolerance)
        if config.abs_tolerance is not None:
            spec.setdefault("abs_tolerance", config.abs_tolerance)
        spec.setdefault("scale", prompt_scale(prompt))
    elif method == "choice" and "choices" not in spec:
        choices = list(labels.get(task_key, []))
        if reference.strip() and reference.strip() not in choices:
            choices = sorted({*choices, reference.strip()})
        spec["choices"] = choices
    elif method == "fields" and "fields" not in spec:
        spec["fields"] = sorted(_fields(reference))
    return spec


def assign_scoring(rows: pl.DataFrame, labels: Mapping[str, list[str]],
                   config: ScoringConfig | None = None) -> pl.DataFrame:
    """Add the ``scoring`` JSON column to rows that have ``task``, ``reference`` and
    ``prompt_text``. Specs are computed once per distinct (task, reference, scale
    hint) — test sets repeat few of those — rather than once per row."""
    config = config or ScoringConfig()
    # The scale hint ("in thousands") is extracted vectorized; prompt_scale re-parses it.
    keyed = rows.with_columns(
        pl.col("prompt_text").str.to_lowercase().str.extract(r"\bin\s+(?:[a-z]{3}\s+|\$\s*)?(thousands|millions|billions)\b", 0)
        .fill_null("").alias("_scale_hint"))
    uniq = keyed.select("task", "reference", "_scale_hint").unique()
    specs = [json.dumps(default_spec(t, r or "", h, labels, config), sort_keys=True)
             for t, r, h in uniq.iter_rows()]
    uniq = uniq.with_columns(pl.Series("scoring", specs, dtype=pl.String))
    out = keyed.join(uniq, on=["task", "reference", "_scale_hint"], how="left", nulls_equal=True)
    return out.drop("_scale_hint")


def method_counts(rows: pl.DataFrame) -> dict[str, int]:
    """How many items each scoring method scores."""
    if rows.is_empty():
        return {}
    m = rows.select(pl.col("scoring").str.json_path_match("$.method").alias("m")).group_by("m").len()
    return {k: v for k, v in sorted(m.iter_rows())}
