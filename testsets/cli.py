"""`bakeoff testsets` commands: a thin click layer over ``bakeoff.testsets``."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

import click

from bakeoff.context import get_workspace, json_option


@click.group()
def testsets() -> None:
    """Held-out test sets: in-domain, adjacent and far slices, decontaminated
    against the training data.

    \b
    Example:
      bakeoff testsets build --train fin-train@v2 --pool pool@v1 --name fin-test
      bakeoff testsets check fin-test@v1 fin-train@v2 --json
    """


def _decontam_options(f: Callable[..., Any]) -> Callable[..., Any]:
    opts = [
        click.option("--ngram-flag", type=int, default=13, show_default=True,
                     help="Flag items sharing a word n-gram this long with a training row."),
        click.option("--ngram-report", type=int, default=8, show_default=True,
                     help="Report (not flag) shared n-grams from this length."),
        click.option("--minhash-threshold", type=float, default=0.8, show_default=True,
                     help="Flag at this MinHash Jaccard (word 3-gram shingles)."),
        click.option("--cosine-flag", type=float, default=0.95, show_default=True,
                     help="Flag at this nearest-neighbour embedding cosine."),
        click.option("--embedding-model", default=None,
                     help="Embedding model (default: env BAKEOFF_EMBEDDING_MODEL or all-MiniLM-L6-v2; "
                          "'hashing' is fast and lexical)."),
        click.option("--include-system", is_flag=True,
                     help="Also compare system prompts (left out by default: shared instructions "
                          "are not contamination)."),
    ]
    for o in reversed(opts):
        f = o(f)
    return f


def _decontam_config(kw: dict[str, Any]):
    from bakeoff.testsets.decontaminate import DecontamConfig

    return DecontamConfig(ngram_flag=kw["ngram_flag"], ngram_report=kw["ngram_report"],
                          minhash_threshold=kw["minhash_threshold"], cosine_flag=kw["cosine_flag"],
                          embedding_model=kw["embedding_model"], include_system=kw["include_system"])


def _load_mapping(path: str) -> dict[str, Any]:
    import json

    import yaml

    from bakeoff.workspace import BakeoffError

    text = Path(path).read_text(encoding="utf-8")
    try:
        obj = json.loads(text) if path.endswith(".json") else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise BakeoffError(f"{path}: not valid YAML/JSON ({exc})") from exc

    if not isinstance(obj, dict):
        raise BakeoffError(f"{path}: expected a mapping of task -> scoring method or spec")
    return obj.get("scoring", obj)


@testsets.command("build")
@click.option("--train", "train_ref", required=True, help="Training version the test set must be held out from.")
@click.option("--pool", "pools", multiple=True, required=True, help="Version(s) to draw items from (repeatable).")
@click.option("--name", required=True, help="Name of the test set dataset (a new version is written).")
@click.option("--size", type=int, default=300, show_default=True,
              help="Total items, shared 40/40/20 among in-domain/adjacent/far (the slices that exist).")
@click.option("--per-slice", help="Exact sizes, e.g. in-domain=200,adjacent=150,far=50 (overrides --size).")
@click.option("--seed", type=int, default=0, show_default=True, help="Sampling seed (same seed, same test set).")
@click.option("--keep-flagged", is_flag=True,
              help="Keep contaminated items, marked in a 'contamination' column, instead of removing them.")
@click.option("--domains-from", type=click.Choice(["auto", "labels", "clusters"]), default="auto",
              show_default=True, help="Domains from meta labels, or from k-means clusters of embeddings.")
@click.option("--clusters", type=int, help="k for --domains-from clusters (default: chosen from the data size).")
@click.option("--adjacent", multiple=True, help="Force a pool domain into the adjacent slice (repeatable).")
@click.option("--far", multiple=True, help="Force a pool domain into the far slice (repeatable).")
@click.option("--band-mode", type=click.Choice(["relative", "absolute"]), default="relative", show_default=True,
              help="Similarity bands relative to the in-domain baseline, or on raw cosine.")
@click.option("--adjacent-min", type=float, default=0.5, show_default=True,
              help="A held-out domain is adjacent at or above this similarity.")
@click.option("--far-max", type=float, default=0.5, show_default=True,
              help="... and far below this one (domains in between are left out).")
@click.option("--in-domain-min", type=float, default=0.75, show_default=True,
              help="With --domains-from clusters: a pool-only cluster this similar counts as in-domain.")
@click.option("--scoring", "scoring_map", help="Scoring method per task, e.g. 'qa=token_f1,extraction=fields' "
                                                "or a JSON object of task -> method/spec ('*' = every task).")
@click.option("--scoring-config", type=click.Path(exists=True, dir_okay=False),
              help="YAML/JSON file: task -> scoring method or spec.")
@click.option("--tolerance", type=float, default=None,
              help="Relative tolerance of numeric answers (default: match at the reference's own precision).")
@click.option("--max-half-width", type=float, default=0.1, show_default=True,
              help="Warn when a slice's 95%% interval half-width (accuracy near 0.5) is wider than this.")
@_decontam_options
@click.option("--html", "html_out", type=click.Path(dir_okay=False),
              help="Where to write the HTML report (default: the workspace's reports/ folder).")
@json_option
def build_cmd(train_ref: str, pools: tuple[str, ...], name: str, size: int, per_slice: str | None, seed: int,
              keep_flagged: bool, domains_from: str, clusters: int | None, adjacent: tuple[str, ...],
              far: tuple[str, ...], band_mode: str, adjacent_min: float, far_max: float, in_domain_min: float,
              scoring_map: str | None, scoring_config: str | None, tolerance: float | None, max_half_width: float,
              html_out: str | None, as_json: bool, **decontam: Any) -> None:
    """Build a held-out test set with in-domain, adjacent and far slices.

    Pool domains present in the training data form the in-domain slice (never a
    training row); held-out domains go to the adjacent or far slice by their
    measured similarity to the training data. Items are sampled stratified by
    domain and task, checked against the training version (shared 13-gram,
    MinHash Jaccard >= 0.8, embedding cosine >= 0.95) and given a reference answer
    and a scoring spec.

    \b
    Example:
      bakeoff testsets build --train fin-train@v2 --pool pool@v1 --name fin-test \\
          --per-slice in-domain=150,adjacent=150,far=50 --seed 7
      bakeoff testsets build --train fin-train --pool pool --name t --adjacent invoices --json
    """
    from bakeoff.console import emit
    from bakeoff.testsets.builder import BuildConfig, build_testset, parse_per_slice
    from bakeoff.testsets.scoring import ScoringConfig, parse_overrides, validate_overrides

    overrides: dict[str, Any] = {}
    if scoring_config:
        overrides.update(validate_overrides(_load_mapping(scoring_config)))
    overrides.update(parse_overrides(scoring_map))
    config = BuildConfig(
        size=size, per_slice=parse_per_slice(per_slice), seed=seed, keep_flagged=keep_flagged,
        domains_from=domains_from, clusters=clusters, band_mode=band_mode, adjacent_min=adjacent_min,
        far_max=far_max, in_domain_min=in_domain_min, adjacent=tuple(adjacent), far=tuple(far),
        max_half_width=max_half_width,
        decontam=_decontam_config(decontam), scoring=ScoringConfig(overrides=overrides, tolerance=tolerance),
    )
    ws = get_workspace()
    result = build_testset(ws, train_ref, list(pools), name, config, html=html_out or "auto")
    emit(result.summary(), as_json, _render_build)


def _render_build(s: dict[str, Any]) -> None:
    from bakeoff.console import out, table

    out.print(f"[bold]{s['version']}[/] held out from {s['train']} (pools: {', '.join(s['pools'])})")
    out.print(table("Slices", ["slice", "items", "domains", "mean NN cosine", "95% half-width"],
                    [[k, v["size"], ", ".join(map(str, v["domains"])), v.get("nn_cosine_mean"),
                      s["power"].get(k, {}).get("half_width")] for k, v in s["slices"].items()]))
    out.print(table("Domain similarity to training", ["domain", "slice", "pool items", "centroid cos",
                                                      "mean NN cos", "relative", "why"],
                    [[d["domain"], d["slice"], d["pool_rows"], d["centroid_cos"], d["nn_mean"], d["relative"],
                      d["why"]] for d in s["domains"]]))
    out.print(f"removed as contaminated: {s['removed_as_contaminated']}"
              + (f"; kept and marked: {s['flagged_kept']}" if s["flagged_kept"] else ""))
    out.print("scoring: " + ", ".join(f"{k} {v}" for k, v in s["scoring"].items()))
    if s.get("html"):
        out.print(f"report: {s['html']}")


@testsets.command("check")
@click.argument("testset")
@click.argument("train")
@_decontam_options
@click.option("--html", "html_out", type=click.Path(dir_okay=False),
              help="Also write an HTML report here ('auto': the workspace's reports/ folder).")
@json_option
def check_cmd(testset: str, train: str, html_out: str | None, as_json: bool, **decontam: Any) -> None:
    """Check any test set version against a training version for contamination.

    Works on test sets built here and on hand-written ones brought in with
    `bakeoff data ingest`. --json lists each flagged item id with the signal(s)
    that flagged it (exact, ngram, minhash, embedding) and its training match.

    \b
    Example:
      bakeoff testsets check my-eval@v1 fin-train@v2 --json
    """
    from bakeoff.console import emit
    from bakeoff.testsets.decontaminate import check_testset

    ws = get_workspace()
    report = check_testset(ws, testset, train, _decontam_config(decontam), html=html_out)
    emit(report, as_json, _render_check)


def _render_check(r: dict[str, Any]) -> None:
    from bakeoff.console import out, table

    s = r["summary"]
    out.print(f"{s['items']} items of {r['testset']} vs {s['training_rows']} rows of {r['train']}: "
              f"[bold]{s['flagged']} flagged[/] "
              f"({', '.join(f'{k} {v}' for k, v in s['flagged_by_signal'].items())}); "
              f"{s['reported_ngram']} more share an n-gram of {r['config']['ngram_report']}+ words")
    if r["items"]:
        out.print(table(None, ["item", "signals", "n-gram", "jaccard", "cosine", "training match", "text"],
                        [[x["id"][:12], ", ".join(x["signals"]) or "(reported)", x["ngram_len"],
                          x["minhash_jaccard"], x["cosine"], (x["train_match_id"] or "")[:12], x["text"][:60]]
                         for x in r["items"]]))
    if r.get("html"):
        out.print(f"report: {r['html']}")


@testsets.command("import")
@click.argument("file", type=click.Path(exists=True, dir_okay=False))
@click.option("--name", required=True, help="Name of the test set dataset (a new version is written).")
@json_option
def import_cmd(file: str, name: str, as_json: bool) -> None:
    """Import a test set made elsewhere (JSONL or Parquet) as a test-set version.

    Each row: `messages` (or `prompt`), `reference`, and optionally `slice`,
    `scoring` (method or spec), `task`, `domain`, `id`. It is checked like a
    built test set (scoring specs valid, slices named); rows without `scoring`
    get the builder's default. Decontaminate it with `bakeoff testsets check`.

    \b
    Example:
      bakeoff testsets import my-eval.jsonl --name my-eval
      bakeoff testsets check my-eval@v1 fin-train@v2
    """
    from bakeoff.console import emit
    from bakeoff.testsets.importer import import_testset

    ws = get_workspace()
    version = import_testset(ws, file, name)
    summary = {"version": version.ref, "rows": version.rows, **(version.counts or {})}

    def render(s: dict[str, Any]) -> None:
        from bakeoff.console import out

        out.print(f"[bold]{s['version']}[/]: {s['rows']} items; slices "
                  + ", ".join(f"{k} {v}" for k, v in s.get("slices", {}).items())
                  + "; scoring " + ", ".join(f"{k} {v}" for k, v in s.get("scoring", {}).items())
                  + f". Check it for contamination: bakeoff testsets check {s['version']} TRAIN@vN", highlight=False)

    emit(summary, as_json, render)
