"""The evaluation cache: DuckDB tables in the workspace catalog.

Outputs and scores live in separate tables so that a changed scorer re-scores
stored outputs without generating again:

- ``eval_outputs``  (weights_digest, prompt_digest, template, gen_config) -> output
- ``eval_logliks``  (weights_digest, item_digest, template) -> log-likelihood of the reference
- ``eval_scores``   (weights_digest, item_digest, template, gen_config, scorer) -> score
- ``eval_models``   weights_digest -> what the model is (path, run, step, datasets...)
- ``eval_aliases``  every label seen for a weights digest (two checkpoints with
  identical weights, or a checkpoint equal to its base, share one digest)
- ``eval_started``  which model began an evaluation on which test set version, so
  an interrupted one is listed as not ranked instead of vanishing
- ``eval_runs``     which model was fully evaluated on which test set version, how
- ``eval_file_hashes`` sha256 of weight files by (path, size, mtime, ctime,
  inode), so an unchanged checkpoint is not re-hashed on every run. The ctime
  is the key that matters: ``cp -p``, ``rsync -a`` and ``tar x`` restore the
  mtime of replaced weights, but no user-space tool can set the ctime.

Each output row records the environment that generated it (``env``: backend,
batch size, dtype, device type, library versions); the ranking refuses to mix
environments unless asked to (``--allow-mixed``).

The model is identified by ``weights_digest``: a sha256 over its weight files
(and config/tokenizer files; an adapter's digest includes its base model's), never
by its path or name, so two models with the same config but different weights
never share outputs, and a checkpoint copied elsewhere keeps its cache.

Outputs are written as batches finish (:class:`BatchWriter`: at most every
``flush_seconds``, and always when the loop ends or raises), each write in its
own transaction: an interrupted run keeps everything finished before the
interruption and resumes from there.
"""

from __future__ import annotations

import hashlib
import json
import threading
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator, Sequence

import polars as pl

from bakeoff.workspace import Workspace

#: Serialises this process's catalog writes (``--devices`` evaluates models in threads).
_LOCK = threading.RLock()

_TABLES = """
CREATE TABLE IF NOT EXISTS eval_outputs (
    weights_digest VARCHAR, prompt_digest VARCHAR, template VARCHAR, gen_config VARCHAR,
    output VARCHAR, created_at TIMESTAMP,
    PRIMARY KEY (weights_digest, prompt_digest, template, gen_config));
CREATE TABLE IF NOT EXISTS eval_logliks (
    weights_digest VARCHAR, item_digest VARCHAR, template VARCHAR,
    loglik DOUBLE, n_tokens INTEGER, created_at TIMESTAMP,
    PRIMARY KEY (weights_digest, item_digest, template));
CREATE TABLE IF NOT EXISTS eval_scores (
    weights_digest VARCHAR, item_digest VARCHAR, template VARCHAR, gen_config VARCHAR,
    scorer VARCHAR, score DOUBLE, created_at TIMESTAMP,
    PRIMARY KEY (weights_digest, item_digest, template, gen_config, scorer));
CREATE TABLE IF NOT EXISTS eval_models (
    weights_digest VARCHAR PRIMARY KEY, label VARCHAR, path VARCHAR, run_id VARCHAR,
    experiment VARCHAR, step BIGINT, kind VARCHAR, base_model VARCHAR, datasets VARCHAR,
    parent_run_id VARCHAR, is_base BOOLEAN, meta VARCHAR, template VARCHAR, updated_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS eval_runs (
    testset VARCHAR, testset_digest VARCHAR, weights_digest VARCHAR, template VARCHAR,
    gen_config VARCHAR, settings VARCHAR, n_items INTEGER, seconds DOUBLE, generated INTEGER,
    completed_at TIMESTAMP,
    PRIMARY KEY (testset, weights_digest, template, gen_config));
CREATE TABLE IF NOT EXISTS eval_file_hashes (
    path VARCHAR PRIMARY KEY, size BIGINT, mtime_ns BIGINT, ctime_ns BIGINT, inode BIGINT, sha256 VARCHAR);
CREATE TABLE IF NOT EXISTS eval_aliases (
    weights_digest VARCHAR, label VARCHAR, path VARCHAR, is_base BOOLEAN, meta VARCHAR, updated_at TIMESTAMP,
    PRIMARY KEY (weights_digest, label));
CREATE TABLE IF NOT EXISTS eval_started (
    testset VARCHAR, weights_digest VARCHAR, template VARCHAR, gen_config VARCHAR, label VARCHAR,
    started_at TIMESTAMP, PRIMARY KEY (testset, weights_digest, template, gen_config));
ALTER TABLE eval_outputs ADD COLUMN IF NOT EXISTS env VARCHAR;
ALTER TABLE eval_outputs ADD COLUMN IF NOT EXISTS truncated BOOLEAN;
"""


def _now() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


_OPEN = threading.local()
_READY: set[str] = set()  # catalogs whose eval tables this process has created


@contextmanager
def connect(ws: Workspace) -> Iterator[Any]:
    """A catalog connection with the eval tables, held under the process lock.

    Re-entrant per thread: a block that does several reads/writes wraps them in
    one ``connect`` and the inner calls reuse its connection (opening the catalog
    costs ~70 ms). Generation loops open it per batch instead, so other bakeoff
    processes can use the catalog between batches.
    """
    held = getattr(_OPEN, "cons", {})
    _OPEN.cons = held
    key = str(ws.catalog_path)
    if key in held:
        yield held[key]
        return
    with _LOCK, ws.connect() as con:
        if key not in _READY:
            con.execute(_TABLES)
            _READY.add(key)
        held[key] = con
        try:
            yield con
        finally:
            del held[key]


# --- model identity ----------------------------------------------------------------

#: Files that decide what a model answers. Trainer state (optimizer.pt, rng_state,
#: training_args.bin) is left out: it does not change outputs and is large.
_WEIGHT_SUFFIXES = (".safetensors", ".gguf")
_WEIGHT_NAMES = ("pytorch_model.bin", "adapter_model.bin", "model.bin")
_CONFIG_NAMES = ("config.json", "adapter_config.json", "generation_config.json", "tokenizer.json",
                 "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                 "reward_stats.json")


def _model_files(path: Path) -> list[Path]:
    files = []
    for f in sorted(path.iterdir()):
        if not f.is_file():
            continue
        if f.suffix in _WEIGHT_SUFFIXES or f.name in _WEIGHT_NAMES or f.name in _CONFIG_NAMES or (
                f.name.startswith("pytorch_model-") and f.suffix == ".bin"):
            files.append(f)
    return files


def _file_sha256(f: Path, known: dict[str, tuple[int, ...]], fresh: dict) -> str:
    st = f.stat()
    key = str(f.resolve())
    stamp = (st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino)
    hit = known.get(key)
    if hit and tuple(hit[:4]) == stamp:
        return str(hit[4])
    h = hashlib.sha256()
    with open(f, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    fresh[key] = (*stamp, h.hexdigest())
    return h.hexdigest()


def weights_digest(path: str | Path, ws: Workspace | None = None) -> str:
    """sha256 identifying a model by its weight (and config/tokenizer) files.

    A PEFT adapter's digest covers the adapter files and its base model's digest.
    A hub id that is not a local directory is identified by its name (``hub:ID``).
    File hashes are remembered in ``eval_file_hashes`` when ``ws`` is given,
    keyed by (size, mtime, ctime, inode): weights replaced in place under the
    same mtime (``cp -p``, ``rsync -a``, ``tar x``) change the ctime and are re-hashed.
    """
    p = Path(path)
    if not p.is_dir():
        return "hub:" + str(path)
    known: dict[str, tuple[int, ...]] = {}
    if ws is not None:
        with connect(ws) as con:
            known = {r[0]: tuple(r[1:]) for r in con.execute(
                "SELECT path, size, mtime_ns, ctime_ns, inode, sha256 FROM eval_file_hashes").fetchall()}
    fresh: dict[str, tuple[int, ...]] = {}
    files = _model_files(p)
    if not any(f.suffix in _WEIGHT_SUFFIXES or f.suffix == ".bin" for f in files):
        from bakeoff.workspace import BakeoffError

        raise BakeoffError(f"no weight files (*.safetensors, *.bin) in {p}")
    outer = hashlib.sha256()
    for f in files:
        outer.update(f.name.encode() + b"\0" + _file_sha256(f, known, fresh).encode() + b"\n")
    if (p / "adapter_config.json").exists():
        from bakeoff.train.models import adapter_base

        base = adapter_base(p)
        if base:
            outer.update(b"base\0" + weights_digest(base, ws).encode())
    if ws is not None and fresh:
        with connect(ws) as con:
            con.executemany("INSERT OR REPLACE INTO eval_file_hashes VALUES (?, ?, ?, ?, ?, ?)",
                            [(k, *v) for k, v in fresh.items()])
    return outer.hexdigest()


def register_model(ws: Workspace, digest: str, label: str, path: str, meta: dict[str, Any],
                   is_base: bool = False, template: str | None = None) -> None:
    """Record what a weights digest is (latest description wins) and that
    ``label`` is one of its names (every name is kept: see :func:`aliases`)."""
    with connect(ws) as con:
        con.execute(
            "INSERT OR REPLACE INTO eval_models VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
            [digest, label, str(path), meta.get("run_id"), meta.get("experiment_name"), meta.get("step"),
             meta.get("kind"), meta.get("base_model"), json.dumps(meta.get("datasets") or []),
             meta.get("parent_run_id"), is_base, json.dumps(meta, default=str), template, _now()])
        con.execute("INSERT OR REPLACE INTO eval_aliases VALUES (?,?,?,?,?,?)",
                    [digest, label, str(path), is_base, json.dumps(meta, default=str), _now()])


def aliases(ws: Workspace, digests: Sequence[str]) -> dict[str, list[dict[str, Any]]]:
    """Every label registered for each weights digest (oldest first): checkpoints
    with identical weights share a digest and one leaderboard row."""
    out: dict[str, list[dict[str, Any]]] = {d: [] for d in digests}
    with connect(ws) as con:
        rows = con.execute("SELECT weights_digest, label, path, is_base, meta FROM eval_aliases "
                           "ORDER BY updated_at").fetchall()
    for d, label, path, is_base, meta in rows:
        if d in out:
            # The same checkpoint registered again is one name, its latest: a label
            # gains the run id once a second run of its kind appears.
            if path and Path(path).exists():
                out[d] = [a for a in out[d] if a["path"] != path]
            out[d].append({"label": label, "path": path, "is_base": bool(is_base), "meta": json.loads(meta or "{}")})
    return out


def model_template(ws: Workspace, digest: str) -> str | None:
    """The prompt template id recorded for a weights digest. The digest covers the
    tokenizer files, so a known digest's template is known without loading its
    tokenizer."""
    with connect(ws) as con:
        row = con.execute("SELECT template FROM eval_models WHERE weights_digest = ?", [digest]).fetchone()
    return row[0] if row else None


# --- outputs -------------------------------------------------------------------------

def _frame(con: Any, sql: str, params: list[Any]) -> pl.DataFrame:
    """A query's result as polars (via Arrow; keeps the schema when empty)."""
    return con.sql(sql, params=params).pl()


def _insert(con: Any, table: str, frame: pl.DataFrame) -> None:
    con.register("_batch", frame.to_arrow())
    try:
        cols = ", ".join(frame.columns)
        con.execute(f"INSERT OR REPLACE INTO {table} ({cols}) SELECT {cols} FROM _batch")
    finally:
        con.unregister("_batch")


def stored_prompts(ws: Workspace, digest: str, template: str, gen_config: str) -> set[str]:
    """Prompt digests that already have an output for this model and config."""
    with connect(ws) as con:
        rows = con.execute("SELECT prompt_digest FROM eval_outputs WHERE weights_digest = ? AND template = ? "
                           "AND gen_config = ?", [digest, template, gen_config]).fetchall()
    return {r[0] for r in rows}


def write_outputs(ws: Workspace, digest: str, template: str, gen_config: str,
                  prompt_digests: Sequence[str], outputs: Sequence[str], env: dict[str, Any] | None = None,
                  truncated: Sequence[bool] | None = None) -> None:
    """Store one batch of outputs (its own transaction) with the environment that
    generated them and whether each prompt was cut to fit the context."""
    if len(prompt_digests) != len(outputs):
        raise ValueError(f"{len(prompt_digests)} prompts but {len(outputs)} outputs")
    frame = pl.DataFrame({"weights_digest": digest, "prompt_digest": list(prompt_digests),
                          "template": template, "gen_config": gen_config, "output": list(outputs),
                          "created_at": _now(), "env": json.dumps(env or {}, sort_keys=True),
                          "truncated": list(truncated) if truncated is not None else [False] * len(outputs)},
                         schema_overrides={"truncated": pl.Boolean})
    with connect(ws) as con:
        _insert(con, "eval_outputs", frame)


def load_outputs(ws: Workspace, digest: str, template: str, gen_config: str,
                 with_env: bool = False) -> pl.DataFrame:
    cols = "prompt_digest, output" + (", env, coalesce(truncated, false) AS truncated" if with_env else "")
    with connect(ws) as con:
        return _frame(con, f"SELECT {cols} FROM eval_outputs WHERE weights_digest = ? "
                           "AND template = ? AND gen_config = ?", [digest, template, gen_config])


def stored_logliks(ws: Workspace, digest: str, template: str) -> set[str]:
    with connect(ws) as con:
        rows = con.execute("SELECT item_digest FROM eval_logliks WHERE weights_digest = ? AND template = ?",
                           [digest, template]).fetchall()
    return {r[0] for r in rows}


def write_logliks(ws: Workspace, digest: str, template: str, item_digests: Sequence[str],
                  values: Sequence[tuple[float, int]]) -> None:
    frame = pl.DataFrame({"weights_digest": digest, "item_digest": list(item_digests), "template": template,
                          "loglik": [float(v[0]) for v in values], "n_tokens": [int(v[1]) for v in values],
                          "created_at": _now()})
    with connect(ws) as con:
        _insert(con, "eval_logliks", frame)


# --- scores --------------------------------------------------------------------------

def load_scores(ws: Workspace, digest: str, template: str, gen_config: str) -> pl.DataFrame:
    with connect(ws) as con:
        return _frame(con, "SELECT item_digest, scorer, score FROM eval_scores WHERE weights_digest = ? "
                           "AND template = ? AND gen_config = ?", [digest, template, gen_config])


def write_scores(ws: Workspace, digest: str, template: str, gen_config: str,
                 item_digests: Sequence[str], scorers: Sequence[str], scores: Sequence[float]) -> None:
    frame = pl.DataFrame({"weights_digest": digest, "item_digest": list(item_digests), "template": template,
                          "gen_config": gen_config, "scorer": list(scorers),
                          "score": [float(s) for s in scores], "created_at": _now()},
                         schema_overrides={"score": pl.Float64})
    with connect(ws) as con:
        _insert(con, "eval_scores", frame)


# --- runs ----------------------------------------------------------------------------

def record_run(ws: Workspace, testset: str, testset_digest: str, digest: str, template: str,
               gen_config: str, settings: dict[str, Any], n_items: int, seconds: float,
               generated: int) -> None:
    with connect(ws) as con:
        con.execute("INSERT OR REPLACE INTO eval_runs VALUES (?,?,?,?,?,?,?,?,?,?)",
                    [testset, testset_digest, digest, template, gen_config, json.dumps(settings),
                     n_items, seconds, generated, _now()])


def record_start(ws: Workspace, testset: str, digest: str, template: str, gen_config: str, label: str) -> None:
    """Note that an evaluation began (kept after it completes: a later, longer
    test set or an interruption is still known)."""
    with connect(ws) as con:
        con.execute("INSERT OR REPLACE INTO eval_started VALUES (?,?,?,?,?,?)",
                    [testset, digest, template, gen_config, label, _now()])


def started_for(ws: Workspace, testset: str) -> pl.DataFrame:
    """Evaluations begun on a test set version (completed or not)."""
    with connect(ws) as con:
        return _frame(con, "SELECT * FROM eval_started WHERE testset = ?", [testset])


def runs_for(ws: Workspace, testset: str) -> pl.DataFrame:
    """Completed evaluations on a test set version, joined with their models."""
    with connect(ws) as con:
        return _frame(con,
            """SELECT r.*, m.label, m.path, m.run_id, m.experiment, m.step, m.kind, m.base_model,
                      m.datasets, m.parent_run_id, m.is_base, m.meta
               FROM eval_runs r LEFT JOIN eval_models m USING (weights_digest)
               WHERE r.testset = ? ORDER BY r.completed_at""", [testset])


class BatchWriter:
    """Buffers finished batches and writes them at most every ``flush_seconds``
    (opening the catalog costs ~70 ms, a tiny model's batch less), and on
    :meth:`flush`. Use as a context manager: leaving the block, normally or by an
    exception, writes what is buffered, so an interrupted loop loses nothing it
    finished (a hard kill loses at most ``flush_seconds`` of work)."""

    def __init__(self, write: Any, flush_seconds: float = 1.0):
        import time

        self._write = write
        self._time = time.monotonic
        self.flush_seconds = flush_seconds
        self._keys: list[Any] = []
        self._values: list[Any] = []
        self._last = self._time()

    def add(self, keys: Sequence[Any], values: Sequence[Any]) -> None:
        self._keys.extend(keys)
        self._values.extend(values)
        if self._time() - self._last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if self._keys:
            self._write(self._keys, self._values)
            self._keys, self._values = [], []
        self._last = self._time()

    def __enter__(self) -> "BatchWriter":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.flush()
