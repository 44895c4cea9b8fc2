"""Recipes: several curation steps in order, one new version.

A recipe is a YAML file::

    name: default                 # optional, shown in reports
    output: fin-clean             # optional: dataset name of the result (default: the input's)
    steps:
      - filter:                   # noise filters (bakeoff.curate.filters); options as in filters.yaml
          pii: {action: redact}
          language: {enabled: false}
      - dedup:                    # exact + MinHash near-duplicates (bakeoff.curate.dedup.DedupConfig)
          threshold: 0.8
      - semantic:                 # embedding near-duplicates (bakeoff.curate.semantic.SemanticDedupConfig)
          threshold: 0.95
      - coverage:                 # report only (bakeoff.curate.coverage)
          objectives: objectives.yaml   # relative to the recipe file

A step is ``{name: options}`` or just ``name`` (defaults). Every step is a pure
function rows -> ``StepOutput`` (``coverage`` returns a report and keeps the
rows), so running a recipe is a loop; the whole recipe is checked (step names,
options, files) before the first step runs. The result is one version whose
ledger is the union of the steps' ledgers (so rows in = rows kept + ledger, as
for any step), or, with ``intermediate``, one version per row-changing step.
"""

from __future__ import annotations

import dataclasses
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import polars as pl
import yaml

from bakeoff.console import log
from bakeoff.steps import StepOutput
from bakeoff.curate import find_config_file
from bakeoff.executor import Executor
from bakeoff.workspace import LEDGER_SCHEMA, BakeoffError, Version, Workspace


@dataclass(frozen=True)
class StepKind:
    """How to configure and run one kind of step."""

    name: str
    module: str                 # bakeoff.curate.<module>
    changes_rows: bool          # False: a report-only step (rows pass through)
    doc: str
    configure: Callable[[Any, dict[str, Any], Path], Any]
    run: Callable[[Any, pl.DataFrame, Any, Workspace, Executor | None], Any]  # executor: where batches run
    # with --executor ray: (config, RowSource of the step's input, ws, executor, scratch folder)
    # -> RayStepOutput for a row-changing step, the report for a report-only one; the rows stay
    # on the workers
    run_on_ray: Callable[[Any, Any, Workspace, Executor, Path], Any] | None = None


def _check_options(step: str, cls: type, opts: dict[str, Any]) -> None:
    known = {f.name for f in dataclasses.fields(cls)}
    bad = sorted(set(opts) - known)
    if bad:
        raise BakeoffError(f"recipe step {step!r}: unknown option(s) {', '.join(bad)}; "
                           f"known: {', '.join(sorted(known))}")


def _relative(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else (base / p)


def _configure_filter(mod: Any, opts: dict[str, Any], base: Path) -> Any:
    opts = dict(opts)
    config_file = opts.pop("config_file", None)
    if config_file is not None:
        if opts:
            raise BakeoffError("recipe step 'filter': give either config_file or inline options, not both")
        return mod.FilterSuiteConfig(filters=mod.load_filter_config(_relative(config_file, base)))
    return mod.FilterSuiteConfig.from_dict(opts)


def _configure_dedup(mod: Any, opts: dict[str, Any], base: Path) -> Any:
    _check_options("dedup", mod.DedupConfig, opts)
    cfg = mod.DedupConfig(**opts)
    return cfg.validate() or cfg


def _configure_semantic(mod: Any, opts: dict[str, Any], base: Path) -> Any:
    return mod.SemanticDedupConfig.from_dict(opts)


_COVERAGE_OPTIONS = {"objectives", "html", "model", "diversity", "examples"}


def _configure_coverage(mod: Any, opts: dict[str, Any], base: Path) -> Any:
    bad = sorted(set(opts) - _COVERAGE_OPTIONS)
    if bad:
        raise BakeoffError(f"recipe step 'coverage': unknown option(s) {', '.join(bad)}; "
                           f"known: {', '.join(sorted(_COVERAGE_OPTIONS))}")
    if "objectives" not in opts:
        raise BakeoffError("recipe step 'coverage' needs `objectives:` (an objectives YAML file)")
    cfg = dict(opts)
    obj = cfg["objectives"]
    if isinstance(obj, str):
        path = find_config_file(obj, base, what="recipe step 'coverage': objectives file")
        cfg["objectives"] = mod.load_objectives(path)
    else:
        cfg["objectives"] = mod.load_objectives(obj)
    if cfg.get("html"):
        cfg["html"] = _relative(cfg["html"], base)
    return cfg


def _run_filter(mod: Any, df: pl.DataFrame, cfg: Any, ws: Workspace, executor: Executor | None) -> Any:
    return mod.filter_rows(df, cfg)


def _filter_on_ray(cfg: Any, source: Any, ws: Workspace, executor: Executor, scratch: Path) -> Any:
    from bakeoff.curate.on_ray.filters import filter_on_ray

    return filter_on_ray(source, cfg, executor)


def _dedup_on_ray(cfg: Any, source: Any, ws: Workspace, executor: Executor, scratch: Path) -> Any:
    from bakeoff.curate.on_ray.minhash import dedup_on_ray

    return dedup_on_ray(source, cfg, executor, spill=scratch)


def _semantic_on_ray(cfg: Any, source: Any, ws: Workspace, executor: Executor, scratch: Path) -> Any:
    import ray

    from bakeoff.curate.on_ray.semantic import semantic_dedup_on_ray

    return semantic_dedup_on_ray(source.dataset(ray), source.n, cfg, executor, ws=ws)


def _coverage_on_ray(cfg: dict[str, Any], source: Any, ws: Workspace, executor: Executor,
                     scratch: Path) -> dict[str, Any]:
    from bakeoff.curate import coverage
    from bakeoff.curate.on_ray.coverage import coverage_on_ray

    # the rows stay on the workers: a partial report per block, merged here
    report = coverage_on_ray(source, cfg["objectives"], executor, **_coverage_options(cfg))
    return _with_html(coverage, report, cfg)


def _run_coverage(mod: Any, df: pl.DataFrame, cfg: dict[str, Any], ws: Workspace,
                  executor: Executor | None = None) -> dict[str, Any]:
    return _with_html(mod, mod.coverage_report(df, cfg["objectives"], ws=ws, **_coverage_options(cfg)), cfg)


def _coverage_options(cfg: dict[str, Any]) -> dict[str, Any]:
    return {k: cfg[k] for k in ("model", "diversity", "examples") if k in cfg}


def _with_html(mod: Any, report: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    if cfg.get("html"):
        report["html"] = str(mod.write_html(report, cfg["html"]))
    return report


#: The steps a recipe may use, by name.
STEPS: dict[str, StepKind] = {s.name: s for s in (
    StepKind("filter", "filters", True, "noise filters (flag, drop, repair, redact)",
             _configure_filter, _run_filter, _filter_on_ray),
    StepKind("dedup", "dedup", True, "exact + MinHash near-duplicate removal",
             _configure_dedup, lambda m, df, c, ws, ex: m.dedup_rows(df, c, executor=ex), _dedup_on_ray),
    StepKind("semantic", "semantic", True, "embedding (semantic) near-duplicate removal",
             _configure_semantic, lambda m, df, c, ws, ex: m.semantic_dedup_rows(df, c, ws, executor=ex),
             _semantic_on_ray),
    StepKind("coverage", "coverage", False, "objective-coverage report (rows unchanged)",
             _configure_coverage, _run_coverage, _coverage_on_ray),
)}


def _import_step(kind: StepKind) -> Any:
    try:
        return importlib.import_module(f"bakeoff.curate.{kind.module}")
    except ModuleNotFoundError as exc:
        if exc.name and exc.name.startswith("bakeoff.curate"):
            raise BakeoffError(f"recipe step {kind.name!r} needs module bakeoff.curate.{kind.module}, "
                               "which is not available in this installation") from None
        raise BakeoffError(f"recipe step {kind.name!r}: missing dependency {exc.name!r} "
                           f"({exc}); install it and retry") from None


@dataclass
class RecipeStep:
    kind: StepKind
    options: dict[str, Any]
    config: Any
    module: Any


@dataclass
class Recipe:
    steps: list[RecipeStep]
    name: str = "recipe"
    output: str | None = None
    source: str | None = None
    spec: dict[str, Any] = field(default_factory=dict)


def parse_recipe(spec: dict[str, Any], base_dir: str | Path = ".", source: str | None = None) -> Recipe:
    """Check a recipe mapping and build each step's config (errors before any work)."""
    if not isinstance(spec, dict):
        raise BakeoffError("a recipe is a mapping with a `steps:` list")
    unknown = sorted(set(spec) - {"name", "output", "steps", "description"})
    if unknown:
        raise BakeoffError(f"recipe: unknown key(s) {', '.join(unknown)}; expected name, output, steps")
    raw_steps = spec.get("steps")
    if not isinstance(raw_steps, list) or not raw_steps:
        raise BakeoffError("recipe: `steps:` must be a non-empty list, e.g. [filter, dedup]")
    base = Path(base_dir)
    steps: list[RecipeStep] = []
    for i, item in enumerate(raw_steps, 1):
        if isinstance(item, str):
            name, opts = item, {}
        elif isinstance(item, dict) and len(item) == 1:
            name, opts = next(iter(item.items()))
            opts = opts or {}
        else:
            raise BakeoffError(f"recipe step {i}: expected `name` or `name: {{options}}`, got {item!r}")
        if name not in STEPS:
            raise BakeoffError(f"recipe step {i}: unknown step {name!r}; known: {', '.join(STEPS)}")
        if not isinstance(opts, dict):
            raise BakeoffError(f"recipe step {i} ({name}): options must be a mapping, got {opts!r}")
        kind = STEPS[name]
        module = _import_step(kind)
        try:
            config = kind.configure(module, opts, base)
        except TypeError as exc:
            raise BakeoffError(f"recipe step {i} ({name}): {exc}") from None
        steps.append(RecipeStep(kind, opts, config, module))
    return Recipe(steps=steps, name=str(spec.get("name") or "recipe"), output=spec.get("output"),
                  source=source, spec=spec)


def load_recipe(path: str | Path) -> Recipe:
    p = find_config_file(path, what="recipe file")
    try:
        spec = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise BakeoffError(f"cannot parse recipe {p}: {exc}") from None
    return parse_recipe(spec, base_dir=p.parent, source=str(p))


def default_recipe_path() -> Path:
    """The example recipe shipped with the package."""
    return Path(__file__).with_name("default_recipe.yaml")


@dataclass
class RecipeResult:
    version: Version
    intermediate: list[Version]
    steps: list[dict[str, Any]]     # summary per step
    reports: dict[str, Any]         # full report per step ("1:filter", ...)

    def to_dict(self) -> dict[str, Any]:
        return {"version": self.version.ref, "rows": self.version.rows,
                "intermediate": [v.ref for v in self.intermediate], "steps": self.steps,
                "reports": self.reports}


def _empty_ledger() -> pl.DataFrame:
    return pl.DataFrame(schema=LEDGER_SCHEMA)


@dataclass
class _RecipeRun:
    """What running a recipe accumulates, step by step (both executors)."""

    parent: Version
    out_name: str
    last_changing: int                    # index of the last row-changing step (-1: none)
    # each step's ledger: in memory (local) or a LazyFrame over its spilled Parquet (Ray)
    ledgers: list[pl.DataFrame | pl.LazyFrame] = field(default_factory=list)
    summary: list[dict[str, Any]] = field(default_factory=list)
    reports: dict[str, Any] = field(default_factory=dict)
    written: list[Version] = field(default_factory=list)    # intermediate versions
    pending_ledger: list[pl.DataFrame | pl.LazyFrame] = field(default_factory=list)  # since the last version
    pending_reports: dict[str, Any] = field(default_factory=dict)
    current_parent: Version | None = None

    @classmethod
    def start(cls, ws: Workspace, ref: str | Version, recipe: Recipe, name: str | None) -> "_RecipeRun":
        parent = ws.resolve(ref) if isinstance(ref, str) else ref
        last = max((i for i, s in enumerate(recipe.steps) if s.kind.changes_rows), default=-1)
        return cls(parent, name or recipe.output or parent.name, last, current_parent=parent)

    def step_commit(self, recipe: Recipe, i: int, step: RecipeStep) -> dict[str, Any]:
        """The commit arguments of the intermediate version after step ``i``."""
        return dict(operation=f"recipe:{step.kind.name}",
                    params={"recipe": recipe.name, "step": i + 1, "options": step.options, "source": recipe.source},
                    parents=[self.current_parent.ref],
                    report={"recipe": recipe.name, "steps": self.summary[-1:], **self.pending_reports})

    def wrote(self, version: Version) -> None:
        """An intermediate version was written: the next steps' parent."""
        for e in self.summary:
            e.setdefault("version", version.ref)
        self.written.append(version)
        self.current_parent = version
        self.pending_ledger, self.pending_reports = [], {}

    def final_ledger(self, intermediate: bool) -> pl.DataFrame | pl.LazyFrame:
        """The result's ledger: every step's, or with ``intermediate`` those since the last version."""
        if not (self.ledgers or self.pending_ledger):
            return _empty_ledger()
        return pl.concat(self.pending_ledger if intermediate else self.ledgers)


def run_recipe(ws: Workspace, ref: str | Version, recipe: Recipe, intermediate: bool = False,
               name: str | None = None, executor: Executor | None = None) -> RecipeResult:
    """Run ``recipe`` on ``ref`` and write the result as a new version.

    Without ``intermediate``: one version, parent ``ref``, ledger = union of the
    steps' ledgers. With it: one version per row-changing step, each with its own
    ledger and parent the previous one (report-only steps attach to the next
    version written, the last one at the latest).

    ``executor``: where the steps' batches run (default: this process); with
    Ray, one session serves every step, and only this process writes versions.
    """
    if executor is not None and executor.is_ray:
        from bakeoff.executor import ray_session

        with ray_session(executor):
            return _run_recipe_on_ray(ws, ref, recipe, intermediate, name, executor)
    return _run_recipe(ws, ref, recipe, intermediate, name, None)


def _run_recipe(ws: Workspace, ref: str | Version, recipe: Recipe, intermediate: bool,
                name: str | None, executor: Executor | None) -> RecipeResult:
    run = _RecipeRun.start(ws, ref, recipe, name)
    rows = ws.load(run.parent)

    for i, step in enumerate(recipe.steps):
        key = f"{i + 1}:{step.kind.name}"
        log(f"[{i + 1}/{len(recipe.steps)}] {step.kind.name} ({rows.height:,} rows)")
        t0 = time.perf_counter()
        result = step.kind.run(step.module, rows, step.config, ws, executor)
        seconds = time.perf_counter() - t0
        rows_in = rows.height
        if isinstance(result, StepOutput):
            result.check_balance(rows_in)
            rows = result.rows
            ledger = _ledger_of(result.ledger)
            run.ledgers.append(ledger)
            run.pending_ledger.append(ledger)
            run.reports[key] = result.report
            run.pending_reports[key] = result.report
            entry = _step_entry(step.kind.name, rows_in, rows.height, ledger, result.report)
        else:
            run.reports[key] = result
            run.pending_reports[key] = result
            entry = _report_entry(step.kind.name, rows_in)
        entry["seconds"] = round(seconds, 3)
        run.summary.append(entry)

        if intermediate and step.kind.changes_rows and i < run.last_changing:
            run.wrote(ws.commit_version(run.out_name, rows, ledger=pl.concat(run.pending_ledger),
                                        **run.step_commit(recipe, i, step)))

    ledger = run.final_ledger(intermediate)
    rows_parent = run.current_parent.rows
    if rows_parent != rows.height + ledger.height:
        raise AssertionError(f"recipe row balance broken: {rows_parent} in != {rows.height} kept "
                             f"+ {ledger.height} in the ledger")
    final = ws.commit_version(
        run.out_name, rows, operation="recipe",
        params={"recipe": recipe.name, "source": recipe.source, "spec": recipe.spec,
                "intermediate": intermediate},
        parents=[run.current_parent.ref], ledger=ledger,
        report={"recipe": recipe.name, "steps": run.summary,
                **(run.pending_reports if intermediate else run.reports)})
    for entry in run.summary:
        entry.setdefault("version", final.ref)
    return RecipeResult(version=final, intermediate=run.written, steps=run.summary, reports=run.reports)


def _ledger_of(ledger: pl.DataFrame | pl.LazyFrame) -> pl.DataFrame | pl.LazyFrame:
    """A step's ledger in the one ledger layout, so that the steps' ledgers concatenate."""
    if isinstance(ledger, pl.DataFrame) and not ledger.height:
        return _empty_ledger()
    return ledger.select([pl.col(c).cast(t) for c, t in LEDGER_SCHEMA.items()])


def _step_entry(step: str, rows_in: int, rows_out: int, ledger: pl.DataFrame | pl.LazyFrame,
                report: dict[str, Any]) -> dict[str, Any]:
    """A row-changing step's line of the recipe summary (``ledger``: in memory, or spilled)."""
    by_stage = ledger.lazy().group_by("stage").len().sort("stage").collect()
    entry: dict[str, Any] = {"step": step, "rows_in": rows_in, "rows_out": rows_out,
                             "removed": int(by_stage["len"].sum()), "by_stage": dict(by_stage.iter_rows())}
    warning = (report.get("filter") or report).get("warning")
    if warning:  # more than a quarter removed: said in the summary (and --json) too
        entry["warning"] = warning["message"]
        log(f"WARNING: {warning['message']}")
    return entry


def _report_entry(step: str, rows_in: int) -> dict[str, Any]:
    """A report-only step's line of the recipe summary."""
    return {"step": step, "rows_in": rows_in, "rows_out": rows_in, "removed": 0, "by_stage": {}}


def _run_recipe_on_ray(ws: Workspace, ref: str | Version, recipe: Recipe, intermediate: bool,
                       name: str | None, executor: Executor) -> RecipeResult:
    """``run_recipe`` with every step on Ray, the rows never on the driver:
    each step reads its input's Parquet row groups on the workers and hands
    back what it removes and rewrites (``RayStepOutput``); the driver streams
    the input minus those into the next step's input -- a scratch file in the
    output dataset's temp area, an intermediate version, or the result."""
    from bakeoff.curate.on_ray.rows import RowSource, commit_frames, kept_frames, write_scratch

    run = _RecipeRun.start(ws, ref, recipe, name)
    source = RowSource([ws.version_dir(run.parent) / "rows.parquet"])
    last_output: Any = None  # the last row-changing step's output, when it goes straight into the result

    with ws.scratch_folder(run.out_name) as scratch:
        for i, step in enumerate(recipe.steps):
            key = f"{i + 1}:{step.kind.name}"
            log(f"[{i + 1}/{len(recipe.steps)}] {step.kind.name} ({source.n:,} rows, on ray)")
            t0 = time.perf_counter()
            result = step.kind.run_on_ray(step.config, source, ws, executor, scratch)
            rows_in = source.n
            as_version = intermediate and step.kind.changes_rows and i < run.last_changing
            if step.kind.changes_rows:
                n_ledger = result.ledger_rows
                if n_ledger != result.removed.size:
                    raise AssertionError(f"step {key}: {result.removed.size} rows removed, "
                                         f"{n_ledger} in its ledger")
                run.reports[key] = run.pending_reports[key] = result.report
                # The ledger goes to disk now, unless the step spilled it already (half the
                # rows of a 10M-row corpus can be duplicates: ~1 GB of ledger), read back
                # streaming at the commit.
                if isinstance(result.ledger, pl.LazyFrame):
                    ledger = _ledger_of(result.ledger)
                else:
                    ledger_path = scratch / f"ledger{i + 1}.parquet"
                    _ledger_of(result.ledger).write_parquet(ledger_path)
                    ledger = pl.scan_parquet(ledger_path)
                entry = _step_entry(step.kind.name, rows_in, rows_in - n_ledger, ledger, result.report)
                run.ledgers.append(ledger)
                run.pending_ledger.append(ledger)
                result.ledger = _empty_ledger()
                if i == run.last_changing and i == len(recipe.steps) - 1:
                    last_output = result  # written straight into the result below
                elif not as_version:
                    path = scratch / f"step{i + 1}.parquet"
                    write_scratch(kept_frames(source, result), path, source.schema)
                    source = RowSource([path])
            else:
                run.reports[key] = run.pending_reports[key] = result
                entry = _report_entry(step.kind.name, rows_in)
            entry["seconds"] = round(time.perf_counter() - t0, 3)
            run.summary.append(entry)
            if as_version:
                v = commit_frames(ws, run.out_name, kept_frames(source, result), pl.concat(run.pending_ledger),
                                  **run.step_commit(recipe, i, step))
                run.wrote(v)
                source = RowSource([ws.version_dir(v) / "rows.parquet"])
            del result  # written (or kept as last_output): free the rewritten rows before the next step

        ledger = run.final_ledger(intermediate)
        frames = kept_frames(source, last_output) if last_output is not None else \
            (f.drop("_row") for f in source.iter_frames())
        rows_out = source.n - (last_output.removed.size if last_output is not None else 0)
        n_ledger = ledger.lazy().select(pl.len()).collect().item()
        if run.current_parent.rows != rows_out + n_ledger:
            raise AssertionError(f"recipe row balance broken: {run.current_parent.rows} in != {rows_out} kept "
                                 f"+ {n_ledger} in the ledger")
        final = commit_frames(
            ws, run.out_name, frames, ledger, operation="recipe",
            params={"recipe": recipe.name, "source": recipe.source, "spec": recipe.spec,
                    "intermediate": intermediate},
            parents=[run.current_parent.ref],
            report={"recipe": recipe.name, "steps": run.summary,
                **(run.pending_reports if intermediate else run.reports)})
    for entry in run.summary:
        entry.setdefault("version", final.ref)
    return RecipeResult(version=final, intermediate=run.written, steps=run.summary, reports=run.reports)


__all__ = ["STEPS", "Recipe", "RecipeResult", "parse_recipe", "load_recipe", "run_recipe",
           "default_recipe_path"]
