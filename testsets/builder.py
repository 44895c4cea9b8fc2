"""Build a held-out test set with in-domain, adjacent and far slices.

A test set drawn from the same process as the training data flatters the model,
so the builder draws from separate *pool* versions and sorts their domains into
slices by measured similarity to the training version:

- **in-domain**: pool rows from domains the training data covers (never a row of
  the training version: ids and normalised content are both checked);
- **adjacent**: domains absent from training but close to it — natural
  extensions (train on financial tables, test on invoices too);
- **far** (optional): unrelated domains, a control.

Domains come from the rows' ``domain`` labels, or — when labels are missing — from
k-means clusters of the row embeddings (faiss). Similarity of a pool domain to the
training data is measured on embeddings two ways: the cosine between the domain's
centroid and the training centroid, and the mean nearest-neighbour cosine of its
rows to training rows. The second decides the band: by default relative to the
in-domain baseline (the same figure for pool rows of training domains, or for
training rows against the rest of training when the pool has none or domains are
clusters), so the same thresholds work for embedders whose cosines live on
different scales. With clusters, a pool-only cluster as close to training as
training is to itself (``in_domain_min``) is in-domain too: the same domain
written by another template clusters apart from the training rows.

Sampling is stratified by (slice, domain, task): each slice's target is shared
equally among its strata, water-filling the share a small stratum cannot use into
the others. Order within a stratum is a seeded permutation of rows sorted by id,
so the same seed and the same inputs give the same test set whatever the input
order. Candidates are decontaminated before they are sampled (exact copies across
the whole pool, the costlier signals on an oversampled draw, topped up until the
targets are met), so removed items are replaced rather than leaving the slice short.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import polars as pl

from bakeoff.console import log, warn
from bakeoff.schema import conform, with_ids
from bakeoff.workspace import BakeoffError, Version, Workspace, new_ledger

from bakeoff.testsets.decontaminate import (DecontamConfig, check_contamination, contamination_json,
                                            flagged_records, item_text, nearest_neighbours)
from bakeoff.testsets.power import DEFAULT_MAX_HALF_WIDTH, slice_power
from bakeoff.testsets.scoring import ScoringConfig, assign_scoring, label_sets, method_counts

SLICES = ("in-domain", "adjacent", "far")
UNASSIGNED = "unassigned"


@dataclass
class BuildConfig:
    """Parameters of ``build_testset`` (stored with the test set version).

    ``adjacent_min``/``far_max`` are the similarity bands: a pool domain not in
    training is adjacent when its score >= ``adjacent_min``, far when < ``far_max``,
    and left out in between. The score is the mean nearest-neighbour cosine divided
    by the in-domain baseline (``band_mode='relative'``) or the raw cosine
    (``band_mode='absolute'``). ``adjacent``/``far`` name domains to force into a slice.
    """

    size: int = 300
    per_slice: dict[str, int] | None = None
    seed: int = 0
    keep_flagged: bool = False
    domains_from: str = "auto"          # auto | labels | clusters
    clusters: int | None = None         # k for k-means (auto when None)
    min_label_coverage: float = 0.5     # auto: labels when at least this share of rows has one
    band_mode: str = "relative"         # relative | absolute
    adjacent_min: float = 0.5
    far_max: float = 0.5
    in_domain_min: float = 0.75         # clusters only: a pool-only cluster this close is in-domain
    adjacent: tuple[str, ...] = ()
    far: tuple[str, ...] = ()
    similarity_sample: int = 300        # pool rows per domain embedded for similarity
    oversample: float = 1.5             # decontaminate this many candidates per wanted item
    max_half_width: float = DEFAULT_MAX_HALF_WIDTH
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    scoring: ScoringConfig = field(default_factory=ScoringConfig)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["adjacent"], d["far"] = list(self.adjacent), list(self.far)
        return d


@dataclass
class BuildResult:
    version: Version
    rows: pl.DataFrame
    report: dict[str, Any]
    html: str | None = None

    def summary(self) -> dict[str, Any]:
        """The ``--json`` document of ``testsets build``."""
        rep = self.report
        return {
            "version": self.version.ref,
            "slices": {s: {"size": v["size"], "domains": v["domains"], "nn_cosine_mean": v["nn_cosine_mean"]}
                       for s, v in rep["slices"].items()},
            "removed_as_contaminated": rep["contamination"]["removed"],
            "flagged_kept": rep["contamination"]["kept_flagged"],
            "train": rep["train"], "pools": rep["pools"],
            "domains": rep["domains"], "power": rep["power"]["slices"],
            "scoring": rep["scoring"], "warnings": rep["warnings"], "html": self.html,
        }


# --- candidates --------------------------------------------------------------------------

def to_candidates(pool: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """Pool rows as test items: prompt turns + the reference as the last assistant
    turn. Preference rows use their chosen answer; prompt rows and conversations
    that do not end with an assistant turn have no reference and are left out."""
    last_role = pl.col("messages").list.last().struct.field("role")
    is_sft = (pl.col("kind") == "sft") & (last_role == "assistant")
    is_pref = (pl.col("kind") == "preference") & (pl.col("chosen").list.len() > 0)
    df = pool.with_columns(
        pl.when(is_pref).then(pl.concat_list(["messages", "chosen"])).otherwise("messages").alias("messages"),
    ).with_columns(
        pl.lit("sft").alias("kind"),
        pl.lit(None, dtype=pool.schema["chosen"]).alias("chosen"),
        pl.lit(None, dtype=pool.schema["rejected"]).alias("rejected"),
        pl.when(is_sft | is_pref).then(True).otherwise(False).alias("_usable"),
    )
    counts = {"pool_rows": pool.height,
              "no_reference": int(df.filter(~pl.col("_usable")).height)}
    df = df.filter("_usable").drop("_usable")
    df = df.with_columns(
        pl.col("messages").list.last().struct.field("content").fill_null("").alias("reference"),
        pl.col("messages").list.slice(0, pl.col("messages").list.len() - 1)
        .list.eval(pl.element().struct.field("content")).list.join("\n").alias("prompt_text"),
        pl.col("id").alias("pool_id"),
    )
    df = with_ids(df)  # preference rows changed content; sft ids are unchanged
    before = df.height
    df = df.filter(~pl.col("id").str.contains("~"))  # identical items in the pool(s): keep one
    counts["duplicate_in_pool"] = before - df.height
    return df, counts


def _label_coverage(frame: pl.DataFrame) -> float:
    if frame.height == 0:
        return 1.0
    return frame.filter(pl.col("domain").is_not_null() & (pl.col("domain") != "")).height / frame.height


def propagate_labels(labels: list[str | None], emb: np.ndarray) -> tuple[list[str], int]:
    """Give rows without a domain label the label of the nearest labelled-domain
    centroid (cosine). Returns the labels and how many were filled."""
    arr = np.array(labels, dtype=object)
    missing = np.array([not x for x in labels], bool)
    if not missing.any():
        return list(arr), 0
    names = sorted({x for x in labels if x})
    cents = np.stack([emb[arr == n].mean(axis=0) for n in names])
    cents /= np.maximum(np.linalg.norm(cents, axis=1, keepdims=True), 1e-12)
    arr[missing] = np.array(names, dtype=object)[np.argmax(emb[missing] @ cents.T, axis=1)]
    return list(arr), int(missing.sum())


# --- domains and similarity ------------------------------------------------------------------

def _auto_k(n: int) -> int:
    return int(min(16, max(3, round(math.sqrt(n / 30)))))


def cluster_domains(train_emb: np.ndarray, cand_emb: np.ndarray, k: int | None, seed: int,
                    train_labels: list[str | None], cand_labels: list[str | None],
                    ) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """k-means (faiss) over training and pool embeddings together; returns cluster
    ids of training rows and of candidates, and per cluster its training share and
    majority label (for the report)."""
    import faiss

    x = np.ascontiguousarray(np.vstack([train_emb, cand_emb]), dtype=np.float32)
    k = k or _auto_k(x.shape[0])
    k = max(2, min(k, x.shape[0]))
    km = faiss.Kmeans(x.shape[1], k, niter=30, seed=seed, spherical=True, verbose=False,
                      max_points_per_centroid=100000)
    km.train(x)
    _, assign = km.index.search(x, 1)
    assign = assign[:, 0]
    t_assign, c_assign = assign[: train_emb.shape[0]], assign[train_emb.shape[0]:]
    labels = np.array([*(train_labels or []), *(cand_labels or [])], dtype=object)
    info: dict[str, Any] = {"k": k}
    clusters = {}
    n_t, n_all = max(1, t_assign.size), max(1, assign.size)
    for c in range(k):
        members = labels[assign == c]
        named = [m for m in members if m]
        majority = max(set(named), key=named.count) if named else None
        t_count = int((t_assign == c).sum())
        clusters[f"cluster-{c}"] = {
            "train_rows": t_count, "pool_rows": int((c_assign == c).sum()),
            # how over-represented training rows are in the cluster (1 = as in the whole data)
            "train_enrichment": round((t_count / n_t) / max(1e-9, (assign == c).sum() / n_all), 3),
            "majority_label": majority,
        }
    info["clusters"] = clusters
    return t_assign, c_assign, info


def domain_similarity(dom_emb: np.ndarray, train_centroid: np.ndarray, nn_cos: np.ndarray) -> dict[str, float]:
    """Centroid cosine and mean nearest-neighbour cosine (``nn_cos``: each row's
    cosine to its nearest training row) of one domain's rows."""
    if dom_emb.shape[0] == 0:
        return {"centroid_cos": float("nan"), "nn_mean": float("nan")}
    c = dom_emb.mean(axis=0)
    c = c / (np.linalg.norm(c) or 1.0)
    return {"centroid_cos": float(c @ train_centroid), "nn_mean": float(np.mean(nn_cos))}


def _train_self_baseline(train_emb: np.ndarray, sample: int, rng: np.random.Generator) -> float:
    """Mean leave-one-out nearest-neighbour cosine within the training data."""
    if train_emb.shape[0] < 2:
        return 1.0
    idx = rng.choice(train_emb.shape[0], size=min(sample, train_emb.shape[0]), replace=False)
    sims, _ = nearest_neighbours(train_emb[idx], train_emb, k=2)
    return float(np.mean(sims[:, 1]))


# --- sampling --------------------------------------------------------------------------------

def waterfill(target: int, available: list[int]) -> list[int]:
    """Share ``target`` as equally as possible among strata with ``available`` rows
    each; what a small stratum cannot take goes to the others."""
    alloc = [0] * len(available)
    left = min(target, sum(available))
    open_ = [i for i, a in enumerate(available) if a > 0]
    while left > 0 and open_:
        share = max(1, left // len(open_))
        for i in list(open_):
            if left == 0:
                break
            take = min(share, available[i] - alloc[i], left)
            alloc[i] += take
            left -= take
            if alloc[i] >= available[i]:
                open_.remove(i)
    return alloc


def slice_targets(config: BuildConfig, slices_present: set[str]) -> dict[str, int]:
    if config.per_slice:
        unknown = set(config.per_slice) - set(SLICES)
        if unknown:
            raise BakeoffError(f"unknown slice(s) {sorted(unknown)} in --per-slice; use {', '.join(SLICES)}")
        return {s: int(config.per_slice.get(s, 0)) for s in SLICES}
    weights = {"in-domain": 0.4, "adjacent": 0.4, "far": 0.2}
    present = {s: w for s, w in weights.items() if s in slices_present}
    total = sum(present.values()) or 1.0
    targets = {s: int(round(config.size * w / total)) if s in present else 0 for s, w in weights.items()}
    return targets


def parse_per_slice(text: str | None) -> dict[str, int] | None:
    """``in-domain=200,adjacent=150,far=50`` -> dict."""
    if not text:
        return None
    out = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        if "=" not in part:
            raise BakeoffError(f"--per-slice expects SLICE=N pairs, got {part!r}")
        k, v = (s.strip() for s in part.split("=", 1))
        if k not in SLICES:
            raise BakeoffError(f"unknown slice {k!r} in --per-slice; use {', '.join(SLICES)}")
        try:
            out[k] = int(v)
        except ValueError:
            raise BakeoffError(f"--per-slice: {k}={v!r} is not a number") from None
        if out[k] < 0:
            raise BakeoffError(f"--per-slice: {k} must be >= 0")
    return out


# --- the build -----------------------------------------------------------------------------

def build_testset(ws: Workspace, train_ref: str, pool_refs: list[str], name: str,
                  config: BuildConfig | None = None, html: str | None = "auto") -> BuildResult:
    """Build, decontaminate and commit a test set version ``name@vN``.

    ``html``: where to write the HTML report ("auto" = ``ws.reports_dir()``, None = no HTML).
    """
    from bakeoff.curate.embeddings import embed_texts, resolve_model_name

    config = config or BuildConfig()
    if not pool_refs:
        raise BakeoffError("at least one --pool version is needed")
    if config.domains_from not in ("auto", "labels", "clusters"):
        raise BakeoffError(f"--domains-from must be auto, labels or clusters, not {config.domains_from!r}")
    if config.band_mode not in ("relative", "absolute"):
        raise BakeoffError(f"--band-mode must be relative or absolute, not {config.band_mode!r}")
    train_v = ws.resolve(train_ref)
    pool_vs = [ws.resolve(p) for p in pool_refs]
    if train_v.ref in {p.ref for p in pool_vs}:
        raise BakeoffError(f"{train_v.ref} is both the training version and a pool")
    rng = np.random.default_rng(config.seed)
    dcfg = config.decontam

    train = ws.load(train_v)
    pools = [conform(ws.load(p)).with_columns(pl.lit(p.ref).alias("pool_ref")) for p in pool_vs]
    pool = pl.concat(pools, how="diagonal_relaxed")
    cand, counts = to_candidates(pool)
    if cand.is_empty():
        raise BakeoffError("the pool(s) hold no usable items (sft conversations ending with an "
                           "assistant answer, or preference rows)")
    text = item_text(dcfg.include_system)
    train_text = train.select(text)["text"].to_list()
    cand = cand.with_columns(text.alias("_text"))
    log(f"testsets: {len(train_text)} training rows, {cand.height} pool candidates from "
        f"{', '.join(p.ref for p in pool_vs)}")

    train_emb = embed_texts(train_text, ws=ws, model=dcfg.embedding_model)
    norm_c = train_emb.mean(axis=0) if train_emb.shape[0] else np.zeros(train_emb.shape[1], np.float32)
    train_centroid = norm_c / (np.linalg.norm(norm_c) or 1.0)

    # --- domains: labels where most rows have them (the rest get the nearest
    # labelled domain), else clusters of the embeddings
    cov_train, cov_pool = _label_coverage(train), _label_coverage(cand)
    use_labels = config.domains_from == "labels" or (
        config.domains_from == "auto" and min(cov_train, cov_pool) >= config.min_label_coverage)
    if use_labels and (cov_pool == 0 or cov_train == 0):
        raise BakeoffError("--domains-from labels: the training data or the pool has no domain labels")
    cluster_info: dict[str, Any] | None = None
    filled = {"train": 0, "pool": 0}
    pre_warnings: list[str] = []
    if use_labels:
        train_labels = train["domain"].to_list()
        cand_labels = cand["domain"].to_list()
        if cov_train < 1.0 or cov_pool < 1.0:
            cand_emb_all = embed_texts(cand["_text"].to_list(), ws=ws, model=dcfg.embedding_model)
            both, n_filled = propagate_labels(train_labels + cand_labels, np.vstack([train_emb, cand_emb_all]))
            train_filled, cand_labels = both[: len(train_labels)], both[len(train_labels):]
            filled = {"train": sum(1 for x in train_labels if not x), "pool": sum(1 for x in cand["domain"].to_list() if not x)}
            log(f"testsets: {n_filled} rows without a domain label took their nearest labelled domain")
            # Only labelled training rows decide which domains are "in training": one
            # stray unlabelled row must not turn a whole held-out domain into in-domain.
            labelled = {x for x in train_labels if x}
            strays: dict[str, int] = {}
            for orig, guess in zip(train_labels, train_filled):
                if not orig and guess not in labelled:
                    strays[guess] = strays.get(guess, 0) + 1
            if strays:
                pre_warnings.append(
                    "training rows without a domain label look closest to held-out domain(s) "
                    + ", ".join(f"{d} ({n} rows)" for d, n in sorted(strays.items()))
                    + "; label them if they belong there, or the domain is not really held out")
        cand = cand.with_columns(pl.Series("_domain", cand_labels, dtype=pl.String))
        train_domains = {x for x in train_labels if x}
        in_domain_set = {d for d in cand["_domain"].unique().to_list() if d in train_domains}
    else:
        log("testsets: domain labels missing; clustering embeddings into domains")
        cand_emb_all = embed_texts(cand["_text"].to_list(), ws=ws, model=dcfg.embedding_model)
        t_assign, c_assign, cluster_info = cluster_domains(
            train_emb, cand_emb_all, config.clusters, config.seed,
            train["domain"].to_list(), cand["domain"].to_list())
        cand = cand.with_columns(pl.Series("_domain", [f"cluster-{c}" for c in c_assign], dtype=pl.String))
        in_domain_set = {c for c, info in cluster_info["clusters"].items()
                         if info["train_enrichment"] >= 0.5 and info["pool_rows"] > 0}

    # --- similarity per pool domain (on a seeded sample of each)
    cand = cand.sort("id").with_columns(pl.Series("_rank", rng.permutation(cand.height)))
    sample = cand.filter(pl.int_range(pl.len()).over("_domain", order_by="_rank") < config.similarity_sample)
    sample_emb = embed_texts(sample["_text"].to_list(), ws=ws, model=dcfg.embedding_model)
    sample_dom = sample["_domain"].to_numpy()
    sample_nn = nearest_neighbours(sample_emb, train_emb, k=1)[0][:, 0]  # one index, one search
    dom_rows = dict(cand.group_by("_domain").len().iter_rows())
    domains: dict[str, dict[str, Any]] = {}
    for d in sorted(dom_rows):
        sim = domain_similarity(sample_emb[sample_dom == d], train_centroid, sample_nn[sample_dom == d])
        domains[d] = {"domain": d, "pool_rows": dom_rows[d], "in_training": d in in_domain_set, **sim}
    in_nn = [v["nn_mean"] for v in domains.values() if v["in_training"]]
    if in_nn and use_labels:
        baseline = float(np.average(in_nn, weights=[v["pool_rows"] for v in domains.values() if v["in_training"]]))
        baseline_from = "in-domain pool rows"
    else:
        baseline = _train_self_baseline(train_emb, config.similarity_sample, rng)
        baseline_from = "training rows vs the rest of training"
    known = set(domains)
    for forced in (*config.adjacent, *config.far):
        if forced not in known:
            raise BakeoffError(f"domain {forced!r} is not in the pool (pool domains: {', '.join(sorted(known))})")
    for d, v in domains.items():
        v["relative"] = v["nn_mean"] / baseline if baseline > 0 else float("nan")
        score = v["relative"] if config.band_mode == "relative" else v["nn_mean"]
        if v["in_training"]:
            v["slice"], v["why"] = "in-domain", ("domain is in the training data" if use_labels else
                                                 "cluster holds its share of training rows")
        elif not use_labels and score >= config.in_domain_min and d not in (*config.adjacent, *config.far):
            # a cluster of pool rows only, but as close to training as training is to
            # itself: the same domain written differently (another template, source)
            v["in_training"] = True
            v["slice"], v["why"] = "in-domain", f"cluster similarity {score:.3f} >= {config.in_domain_min}"
        elif d in config.adjacent:
            v["slice"], v["why"] = "adjacent", "forced (--adjacent)"
        elif d in config.far:
            v["slice"], v["why"] = "far", "forced (--far)"
        elif score >= config.adjacent_min:
            v["slice"], v["why"] = "adjacent", f"similarity {score:.3f} >= {config.adjacent_min}"
        elif score < config.far_max:
            v["slice"], v["why"] = "far", f"similarity {score:.3f} < {config.far_max}"
        else:
            v["slice"], v["why"] = UNASSIGNED, f"similarity {score:.3f} between the bands"
        for k in ("centroid_cos", "nn_mean", "relative"):
            v[k] = None if v[k] is None or math.isnan(v[k]) else round(float(v[k]), 4)
    dom_slice = {d: v["slice"] for d, v in domains.items()}
    cand = cand.with_columns(pl.col("_domain").replace_strict(dom_slice, return_dtype=pl.String).alias("slice"))

    present = {s for s in dom_slice.values() if s in SLICES}
    targets = slice_targets(config, present)
    warnings: list[str] = list(pre_warnings)
    for s, n in targets.items():
        if n > 0 and s not in present:
            msg = f"no pool domain falls in the {s!r} slice (asked for {n} items)"
            if s != "far" or config.per_slice:
                warnings.append(msg)
            targets[s] = 0

    if sum(targets.values()) == 0:
        raise BakeoffError("nothing to sample: every slice's target is 0 or has no pool domain ("
                           + ", ".join(f"{d}: {v['slice']}" for d, v in domains.items()) + ")")

    # --- exact training copies anywhere in the pool (cheap: a hash join)
    exact = check_contamination(cand.select("id", "kind", "messages", "chosen"), train,
                                DecontamConfig(**{**asdict(dcfg), "signals": ("exact",)}), ws)
    # 0 unchecked, 1 clean, 2 flagged, 3 a training row (removed even with keep_flagged:
    # the in-domain slice never holds a row of the training version)
    state = np.zeros(cand.height, np.int8)
    exact_flag = exact.items["flagged"].to_numpy()
    checks: list[pl.DataFrame] = [exact.items.filter(pl.col("flagged"))]
    checked: list[pl.DataFrame] = []
    state[exact_flag] = 3

    # --- stratified sampling with decontamination and top-up
    cand = cand.with_row_index("_i")
    strata = (cand.filter(pl.col("slice").is_in(list(SLICES)))
              .group_by("slice", "_domain", "task").agg(pl.col("_i").sort_by("_rank"))
              .sort("slice", "_domain", "task", nulls_last=True))
    order = {(s, d, t): np.asarray(ix, np.int64) for s, d, t, ix in strata.iter_rows()}
    keep_ok = (lambda st: (st == 1) | (st == 2)) if config.keep_flagged else (lambda st: st == 1)
    cand_rows = cand.select("id", "kind", "messages", "chosen")
    full_cfg = DecontamConfig(**{**asdict(dcfg), "signals": tuple(s for s in dcfg.signals if s != "exact")})
    for _ in range(8):
        to_check: list[np.ndarray] = []
        for s in SLICES:
            keys = [k for k in order if k[0] == s]
            if not keys or targets[s] == 0:
                continue
            # rows each stratum can still offer: clean ones + unchecked ones
            avail = [int(np.sum(keep_ok(state[order[k]]) | (state[order[k]] == 0))) for k in keys]
            alloc = waterfill(targets[s], avail)
            for k, a in zip(keys, alloc):
                st = state[order[k]]
                have = int(np.sum(keep_ok(st)))
                need = a - have
                if need > 0:
                    unchecked = order[k][st == 0]
                    to_check.append(unchecked[: max(need, math.ceil(need * config.oversample))])
        if not to_check:
            break
        batch = np.sort(np.concatenate(to_check))
        log(f"testsets: decontaminating {batch.size} candidates")
        res = check_contamination(cand_rows[batch], train, full_cfg, ws, train_emb=train_emb)
        flagged = res.items["flagged"].to_numpy()
        state[batch] = np.where(flagged, 2, 1)
        checked.append(res.items.select("id", "cosine", "ngram_len"))
        checks.append(res.items.filter(pl.col("flagged")))
        checks.append(res.items.filter(~pl.col("flagged") & (pl.col("ngram_len") >= dcfg.ngram_report)))
    # final selection
    chosen: list[np.ndarray] = []
    for s in SLICES:
        keys = [k for k in order if k[0] == s]
        if not keys or targets[s] == 0:
            continue
        avail = [int(np.sum(keep_ok(state[order[k]]))) for k in keys]
        for k, a in zip(keys, waterfill(targets[s], avail)):
            chosen.append(order[k][keep_ok(state[order[k]])][:a])
    sel = np.sort(np.concatenate(chosen)) if chosen else np.zeros(0, np.int64)

    flag_items = (pl.concat(checks, how="diagonal_relaxed") if checks else pl.DataFrame())
    flag_items = flag_items.unique("id", keep="first", maintain_order=True) if flag_items.height else flag_items
    flagged_only = flag_items.filter(pl.col("flagged")) if flag_items.height else flag_items

    # --- the test set rows
    rows = cand[sel]
    if flagged_only.height:
        fl = flagged_only.with_columns(
            pl.struct("signals", "ngram_len", "minhash_jaccard", "cosine", "train_match_id")
            .map_elements(contamination_json, return_dtype=pl.String).alias("contamination"))
        rows = rows.join(fl.select("id", "contamination"), on="id", how="left")
    else:
        rows = rows.with_columns(pl.lit(None, dtype=pl.String).alias("contamination"))
    # rows without a label get the domain they were sliced by (propagated label or cluster)
    rows = rows.with_columns(pl.coalesce(pl.when(pl.col("domain") != "").then("domain"), "_domain").alias("domain"))
    train_ref_frame = train.filter(pl.col("kind") == "sft").select(
        "task", pl.col("messages").list.last().struct.field("content").alias("reference"))
    labels = label_sets([train_ref_frame, cand.select("task", "reference")], config.scoring.max_choices)
    rows = assign_scoring(rows, labels, config.scoring)
    rows = rows.with_columns(pl.col("slice").cast(pl.String))
    out_cols = [*conform(rows.head(0)).columns[:12], "slice", "reference", "scoring", "contamination",
                "pool_ref", "pool_id"]
    rows = conform(rows).select(out_cols).sort(["slice", "domain", "task", "id"], nulls_last=True)

    # --- ledger: every pool candidate removed as contaminated, with its training match
    removed = flagged_only
    if config.keep_flagged and removed.height:
        removed = removed.filter(pl.col("signals").list.contains("exact"))
    if not removed.height:
        ledger = new_ledger()
    else:
        # ledger rows name the pool row (a preference row's id differs from its test item's)
        removed = removed.join(cand.select("id", "pool_id"), on="id", how="left")
        ledger = new_ledger(**removed.select(
            pl.col("pool_id").alias("row_id"),
            pl.lit("decontaminate").alias("stage"),
            pl.col("signals").list.join("+").alias("rule"),
            pl.col("ngram_len").cast(pl.Float64).alias("score"),
            pl.col("train_match_id").alias("kept_row_id"),
            pl.max_horizontal("minhash_jaccard", pl.col("cosine").fill_nan(None)).alias("similarity"),
            pl.struct("signals", "ngram_len", "minhash_jaccard", "cosine", "train_match_id")
            .map_elements(contamination_json, return_dtype=pl.String).alias("detail"),
        ).to_dict())

    # --- report
    sizes = dict(rows.group_by("slice").len().iter_rows())
    # per slice: how close its items are to their nearest training row
    sims = rows.select("id", "slice").join(
        pl.concat(checked).unique("id") if checked else pl.DataFrame(schema={"id": pl.String, "cosine": pl.Float64}),
        on="id", how="left")
    slice_cos = dict(sims.group_by("slice").agg(pl.col("cosine").fill_nan(None).mean()).iter_rows())
    slices_rep: dict[str, Any] = {}
    for s in SLICES:
        part = rows.filter(pl.col("slice") == s)
        if targets[s] == 0 and part.is_empty():
            continue
        slices_rep[s] = {
            "size": part.height, "target": targets[s],
            "nn_cosine_mean": None if slice_cos.get(s) is None else round(float(slice_cos[s]), 4),
            "domains": sorted(d for d, v in domains.items() if v["slice"] == s),
            "by_domain": dict(sorted(part.group_by("domain").len().iter_rows(), key=lambda x: str(x[0]))),
            "by_task": dict(sorted(part.group_by("task").len().iter_rows(), key=lambda x: str(x[0]))),
        }
        if part.height < targets[s]:
            warnings.append(f"slice {s!r}: only {part.height} clean items for a target of {targets[s]}")
    power = slice_power({s: v["size"] for s, v in slices_rep.items()}, config.max_half_width)
    warnings.extend(power["warnings"])
    test_frame = cand.select("id", "kind", "messages", "chosen")
    records = []
    if flag_items.height:
        from bakeoff.testsets.decontaminate import ContaminationResult

        records = flagged_records(ContaminationResult(flag_items, dcfg), test_frame, train)
    n_flagged = int(flagged_only.height) if flagged_only.height else 0
    report = {
        "kind": "testset",
        "train": train_v.ref, "pools": [p.ref for p in pool_vs],
        "params": config.to_dict(),
        "counts": {**counts, "candidates": cand.height, "checked": int((state > 0).sum()),
                   "selected": rows.height},
        "domains_from": "labels" if use_labels else "clusters",
        "label_coverage": {"train": round(cov_train, 4), "pool": round(cov_pool, 4)},
        "labels_filled_from_nearest_domain": filled,
        "clusters": cluster_info,
        "baseline": {"nn_mean": round(baseline, 4), "from": baseline_from},
        "embedding_model": resolve_model_name(dcfg.embedding_model),
        "domains": list(domains.values()),
        "slices": slices_rep,
        "targets": targets,
        "power": power,
        "scoring": method_counts(rows),
        "contamination": {
            "flagged": n_flagged,
            "removed": ledger.height,
            "kept_flagged": int(rows["contamination"].is_not_null().sum()),
            "by_signal": {sig: int(flagged_only.filter(pl.col("signals").list.contains(sig)).height)
                          if flagged_only.height else 0 for sig in dcfg.signals},
            "items": records,
            "config": dcfg.to_dict(),
        },
        "warnings": warnings,
    }
    for w in warnings:
        warn(w)
    version = ws.commit_version(
        name, rows, operation="testsets.build", params=config.to_dict(),
        parents=[train_v.ref, *[p.ref for p in pool_vs]], ledger=ledger, report=report,
        counts={"slices": sizes, "removed_as_contaminated": report["contamination"]["removed"]},
    )
    html_path = None
    if html:
        from bakeoff.testsets.report import write_build_html

        html_path = str(write_build_html(ws, version, report, None if html == "auto" else html))
    return BuildResult(version=version, rows=rows, report=report, html=html_path)


__all__ = ["BuildConfig", "BuildResult", "build_testset", "parse_per_slice", "waterfill",
           "to_candidates", "SLICES"]
