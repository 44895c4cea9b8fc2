"""Filter-suite throughput: rows/s of ``bakeoff.curate.filters.filter_rows``.

Rows: the demo corpus (finance-table QA with its planted noise, held-out finance,
invoices, contracts) ingested into a workspace, then tiled to --rows rows --
once as is (every row repeats ~200 times: ``detect`` runs each distinct text
once) and once with the numbers perturbed per copy (~97% distinct rows: the
cost without repeats). For each, rows/s side by side: a naive per-row Python
version of four of the filters (control, refusal, email, repetition) on a
sample, our four, our whole suite (detect only, and detect + actions + ledger
+ report), against the 200k rows/s target; --per-filter adds each filter alone.

--against-old times the default suite side by side with the single-module
suite it replaced (``curate/filters.py`` at commit ``OLD_SUITE``, loaded from
git at run time: nothing old is kept in the tree), in one process, on distinct
rows (numbers perturbed per copy): the demo corpus and the real files in
../shared/data (TAT-QA, Alpaca, DPO), each tiled to every --sizes; per filter
(each alone, detect) and the whole suite (filter_rows), with the new/old ratio.

    .venv/bin/python benchmarks/bench_filters.py --rows 200000
    .venv/bin/python benchmarks/bench_filters.py --against-old --sizes 50000,200000
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import polars as pl

os.environ.setdefault("HF_HUB_OFFLINE", "1")


REPO = Path(__file__).resolve().parents[1]
REAL_DATA = REPO.parent / "shared" / "data"
REAL_FILES = ("tatqa_dev.jsonl", "alpaca_en_demo.json", "dpo_en_demo.json")
#: the last commit with the single-module filter suite (curate/filters.py)
OLD_SUITE = "65b7921"


def demo_base() -> pl.DataFrame:
    """The demo corpus: finance-table QA with its planted noise, plus the pool."""
    import shutil

    from bakeoff.demo_data import make_demo_workspace
    from bakeoff.workspace import Workspace

    tmp = tempfile.mkdtemp(prefix="bench-filters-")
    try:
        ws = Workspace(tmp)
        res = make_demo_workspace(ws, seed=0, scale=1.0)
        return pl.concat([ws.load(res["datasets"]["fin-train"]), ws.load(res["datasets"]["pool"])],
                         how="diagonal_relaxed")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def real_base() -> pl.DataFrame | None:
    """The real files in ../shared/data ingested as a user would (None where absent)."""
    import shutil

    from bakeoff.curate.ingest import ingest
    from bakeoff.workspace import Workspace

    paths = [REAL_DATA / f for f in REAL_FILES]
    if not all(p.exists() for p in paths):
        return None
    tmp = tempfile.mkdtemp(prefix="bench-filters-")
    try:
        ws = Workspace(tmp)
        return pl.concat([ws.load(ingest(ws, [p], p.name.split("_")[0]).version) for p in paths],
                         how="diagonal_relaxed")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def build_rows(n: int, perturb: bool = False, base: pl.DataFrame | None = None) -> pl.DataFrame:
    """``base`` (default: the demo corpus, ~1k rows) tiled to ``n`` rows. With
    ``perturb``, copy k appends k's digits to the first number of every turn
    ("2022" -> "20227"), so nearly every row differs from every other (the
    dedupe in ``detect`` gets nothing) while the noise and the text shapes stay
    the corpus's."""
    if base is None:
        base = demo_base()
    reps = -(-n // base.height)

    def bump(col: str, k: int) -> pl.Expr:
        return pl.col(col).list.eval(pl.struct(
            pl.element().struct.field("role"),
            pl.element().struct.field("content").str.replace(r"(\d+)", "${1}" + str(k)).alias("content")))

    parts = [base.with_columns(*(bump(c, k) for c in ("messages", "chosen", "rejected"))) if perturb and k
             else base for k in range(reps)]
    tiled = pl.concat(parts).head(n)
    return tiled.with_columns(pl.int_range(pl.len()).cast(pl.String).alias("id"))


# --- the baseline: a straightforward per-row Python implementation ----------------------

def naive_filters(df: pl.DataFrame) -> list[tuple[bool, bool, bool, bool]]:
    """What the filters look like written row by row in Python (the usual first
    version): texts joined per row, then control characters, refusal phrases,
    emails and Gopher repetition (duplicate lines, duplicate 5-grams) per text.
    The same rules as four of our eleven filters."""
    import re
    from collections import Counter

    from bakeoff.curate import filters as F

    control = re.compile(F.CONTROL_RE)
    refusal = re.compile("(?im)" + "|".join(f"(?:{p})" for p in F.REFUSAL_PATTERNS))
    email = re.compile(F.EMAIL_RE)

    def repetition(text: str) -> bool:
        lines = [x for x in text.split("\n") if x]
        if len(lines) > 1 and 1 - len(set(lines)) / len(lines) > 0.3:
            return True
        words = [w for w in text.split(" ") if w]
        grams = [tuple(words[i:i + 5]) for i in range(len(words) - 4)]
        if len(text.split(" ")) >= 12 and grams:
            counts = Counter(grams)
            if sum(1 for g in grams if counts[g] > 1) / len(grams) > 0.3:
                return True
        return False

    out = []
    for row in df.select("kind", "messages", "chosen").iter_rows(named=True):
        msgs = row["messages"] or []
        if row["kind"] == "sft":
            p = "\n".join(m["content"] or "" for m in msgs if m["role"] != "assistant")
            r = "\n".join(m["content"] or "" for m in msgs if m["role"] == "assistant")
        else:
            p = "\n".join(m["content"] or "" for m in msgs)
            r = "\n".join(m["content"] or "" for m in row["chosen"] or [])
        out.append((bool(control.search(p) or control.search(r)), bool(refusal.search(r)),
                    bool(email.search(p) or email.search(r)), repetition(r)))
    return out


# --- side by side with the suite this package replaced --------------------------------------

def load_old_suite():
    """``curate/filters.py`` at ``OLD_SUITE`` as a module, from ``git show`` into a
    temporary file. Its langid loader is swapped for today's: the same model, but
    the old one cached part of it as a pickle in the user's cache directory."""
    src = subprocess.run(["git", "show", f"{OLD_SUITE}:curate/filters.py"], cwd=REPO, check=True,
                         capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp(prefix="bench-filters-old-")) / "old_filters.py"
    path.write_text(src, encoding="utf-8")
    spec = importlib.util.spec_from_file_location("old_filters", path)
    old = importlib.util.module_from_spec(spec)
    sys.modules["old_filters"] = old  # dataclasses look their module up there
    spec.loader.exec_module(old)
    from bakeoff.curate import filters as F

    old.langid_identifier = F.langid_identifier
    return old


def against_old(sizes: list[int], repeat: int) -> None:
    """Old suite vs new, per filter and whole, on distinct demo and real rows."""
    from bakeoff.curate import filters as F

    old = load_old_suite()
    F.langid_identifier()
    bases = {"demo corpus": demo_base()}
    real = real_base()
    if real is None:
        print(f"(real files not found under {REAL_DATA}: demo rows only)")
    else:
        bases["real: TAT-QA + Alpaca + DPO"] = real

    def side_by_side(old_fn, new_fn) -> tuple[tuple[float, float], tuple[float, float]]:
        """(wall, CPU) seconds of the fastest of --repeat runs of each, the two
        run in turn (a change in the machine's load hits both alike)."""
        runs: list[list[tuple[float, float]]] = [[], []]
        for _ in range(repeat):
            for k, fn in enumerate((old_fn, new_fn)):
                c0, t0 = time.process_time(), time.perf_counter()
                fn()
                runs[k].append((time.perf_counter() - t0, time.process_time() - c0))
        return min(runs[0]), min(runs[1])

    for label, base in bases.items():
        for n in sizes:
            df = build_rows(n, perturb=True, base=base)
            old.filter_rows(df.head(2000))  # numba compiles, model loads: not timed
            F.filter_rows(df.head(2000))
            print(f"\n== {label}, {df.height:,} rows ({base.height:,} tiled, numbers perturbed: "
                  f"{df.select('kind', F.prompt_text(), F.response_text()).n_unique() / df.height:.0%} distinct); "
                  f"load average {os.getloadavg()[0]:.1f}")
            print(f"{'filter (alone, detect)':26}{'old wall':>9}{'new wall':>9}{'old CPU':>9}{'new CPU':>9}"
                  f"{'new/old CPU':>12}")
            for name in F.FILTERS:
                if name not in old.FILTERS:
                    continue
                oc = old.FilterSuiteConfig.from_dict({"only": [name]})
                nc = F.FilterSuiteConfig.from_dict({"only": [name]})
                (ow, oc_s), (nw, nc_s) = side_by_side(lambda: old.detect(df, oc, show_progress=False),
                                                      lambda: F.detect(df, nc, show_progress=False))
                print(f"{name:26}{ow:9.2f}{nw:9.2f}{oc_s:9.2f}{nc_s:9.2f}{nc_s / max(oc_s, 1e-9):11.2f}x")
            (ow, oc_s), (nw, nc_s) = side_by_side(lambda: old.filter_rows(df), lambda: F.filter_rows(df))
            on = [k for k, c in old.FilterSuiteConfig().filters.items() if c.enabled]
            nn = [k for k, c in F.FilterSuiteConfig().filters.items() if c.enabled]
            print(f"{'default suite (filter_rows)':26}{ow:9.2f}{nw:9.2f}{oc_s:9.2f}{nc_s:9.2f}"
                  f"{nc_s / max(oc_s, 1e-9):11.2f}x   wall new/old {nw / max(ow, 1e-9):.2f}x")
            print(f"  old default: {', '.join(on)}\n  new default: {', '.join(nn)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--repeat", type=int, default=2, help="best of N runs")
    ap.add_argument("--naive-rows", type=int, default=20_000, help="rows for the per-row Python baseline")
    ap.add_argument("--per-filter", action="store_true", help="also time each filter alone")
    ap.add_argument("--against-old", action="store_true",
                    help=f"side by side with the suite at {OLD_SUITE} (curate/filters.py, from git)")
    ap.add_argument("--sizes", default="50000,200000", help="row counts for --against-old")
    args = ap.parse_args()
    if args.against_old:
        against_old([int(x) for x in args.sizes.split(",")], args.repeat)
        return

    from bakeoff.curate import filters as F

    ncpu = len(os.sched_getaffinity(0))
    target = 200_000
    print(f"{ncpu} CPUs, polars {pl.__version__}, {pl.thread_pool_size()} threads. A shared machine "
          f"inflates wall time; CPU seconds are what the work costs, so 'rows/s if idle' = rows / "
          f"(CPU s / {ncpu}).")

    def timed(fn) -> tuple[float, float]:
        """(wall, CPU) seconds of the fastest of --repeat runs."""
        runs = []
        for _ in range(args.repeat):
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            runs.append((time.perf_counter() - t0, time.process_time() - c0))
        return min(runs)

    header = f"{'':34}{'rows':>9}{'wall s':>8}{'rows/s':>11}{'CPU s':>8}{'rows/s if idle':>16}{'vs 200k':>9}{'vs naive':>10}"
    for label, perturb in (("demo corpus tiled (repeats)", False), ("tiled, numbers perturbed (~no repeats)", True)):
        t = time.perf_counter()
        df = build_rows(args.rows, perturb=perturb)
        keys = df.select("kind", F.prompt_text(), F.response_text())
        chars = keys.select(pl.col("prompt_text").str.len_chars().sum() + pl.col("response_text").str.len_chars().sum()).item()
        print(f"\n== {label}: {df.height:,} rows, {chars / df.height:,.0f} chars/row, "
              f"{keys.n_unique() / df.height:.1%} distinct (kind, prompt, response); built in "
              f"{time.perf_counter() - t:.1f}s; load average {os.getloadavg()[0]:.1f}")
        F.langid_identifier()  # one-off model load, not per run
        F.filter_rows(df.head(5000))  # and the numba kernels' first compile

        sample = df.sample(min(args.naive_rows, df.height), seed=1)
        c0, t0 = time.process_time(), time.perf_counter()
        naive_filters(sample)
        nw, nc = time.perf_counter() - t0, time.process_time() - c0
        naive_idle = sample.height / max(nc, 1e-9)  # one thread: its rows/s if idle
        same4 = F.FilterSuiteConfig.from_dict({"only": ["control", "refusal", "pii", "repetition"]})
        rows = [("naive per-row Python, 4 filters", sample.height, nw, nc, naive_idle)]
        for name, fn in (("ours, same 4 filters (detect)", lambda: F.detect(df, same4, show_progress=False)),
                         ("ours, all 11 filters (detect)", lambda: F.detect(df, show_progress=False)),
                         ("ours, all 11: detect+act+report", lambda: F.filter_rows(df))):
            w, c = timed(fn)
            rows.append((name, df.height, w, c, df.height / max(c / ncpu, w / 50, 1e-9)))
        print(header)
        for name, n, w, c, idle in rows:
            print(f"{name:34}{n:9,}{w:8.2f}{n / w:11,.0f}{c:8.2f}{idle:16,.0f}{idle / target:8.2f}x"
                  f"{idle / naive_idle:9.1f}x")
        rep = F.filter_rows(df).report["filter"]
        print(f"  kept {rep['rows_out']:,}, dropped {rep['dropped']:,}, rewritten {rep['rewritten']:,}; hits: "
              + ", ".join(f"{k} {v['hits']:,}" for k, v in rep["filters"].items()))

        if args.per_filter:
            print(f"\n{'filter (alone, detect)':34}{'wall s':>8}{'CPU s':>8}")
            for name in F.FILTERS:
                cfg = F.FilterSuiteConfig.from_dict({"only": [name]})
                w, c = timed(lambda: F.detect(df, cfg, show_progress=False))
                print(f"{name:34}{w:8.2f}{c:8.2f}")


if __name__ == "__main__":
    main()
