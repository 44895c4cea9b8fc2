"""Evaluation on a Ray cluster: actors generate, the driver writes the cache.

The same evaluation as :func:`bakeoff.evaluate.runner.evaluate_model`, with the
generation moved to Ray actors:

1. On the driver, each model is planned from the cache (:func:`runner.plan_model`):
   only prompts without an output and items without a log-likelihood are work.
   A model with nothing missing is never loaded; with nothing missing at all,
   Ray is not even started.
2. The work is cut into shards of exactly the local run's batches, in the
   local run's order (batch composition changes padding, and padding changes
   greedy decoding's numerics), so outputs are identical to ``--executor local``.
3. One actor per GPU (``num_gpus=1``) when the cluster has GPUs, else one per
   CPU slot, each with as many torch threads as CPUs it reserved, so actors do
   not oversubscribe the cores. Shards go out in model order, so an actor loads
   each checkpoint at most once: it keeps the model it has until it is handed
   a shard of the next one.
4. Outputs return to the driver, which alone writes the catalog (DuckDB is
   single-writer) as shards return (:class:`cache.BatchWriter`, like the local
   run): a job killed part-way keeps every shard it stored, and a rerun plans
   only what is missing. Models are scored and recorded on the driver, in the
   order given, as soon as all their shards are in.

Workers never open the workspace: they need the checkpoints (the same paths on
every node, e.g. a shared filesystem) and the ``bakeoff`` package, nothing else.
"""

from __future__ import annotations

import dataclasses
import json
from contextlib import ExitStack
from dataclasses import dataclass
from typing import Any

import polars as pl

from bakeoff.evaluate.generate import GenerationSettings, Generator
from bakeoff.evaluate.runner import (EvalResult, ModelPlan, ModelSpec, finish_model, generation_env,
                                     load_generator, loglik_writer, output_writer, plan_model)
from bakeoff.evaluate.scorers import RewardScorer
from bakeoff.executor import Executor, ray_session
from bakeoff.workspace import BakeoffError, Version, Workspace


@dataclass
class Shard:
    """One local batch of one model's work: ``generate`` answers prompts,
    ``loglik`` scores references."""

    model: int  # index into the plans
    kind: str
    keys: list[str]  # prompt digests (generate) or item digests (loglik)
    prompts: list[Any]
    refs: list[str] | None = None


@dataclass
class ShardResult:
    model: int
    kind: str
    keys: list[str]
    values: list[Any]  # (output, truncated) or (loglik, n_tokens)
    env: dict[str, Any]


def shards_for(plans: list[ModelPlan], batch_size: int) -> list[Shard]:
    """Each model's generation batches, then its log-likelihood batches, as the
    local run makes them; models in the order given."""
    size = max(1, batch_size)
    shards = []
    for m, plan in enumerate(plans):
        for i in range(0, len(plan.todo), size):
            batch = plan.todo[i:i + size]
            shards.append(Shard(m, "generate", [b[0] for b in batch], [b[1] for b in batch]))
        for i in range(0, len(plan.ll_todo), size):
            batch = plan.ll_todo[i:i + size]
            shards.append(Shard(m, "loglik", [b[0] for b in batch], [b[1] for b in batch], [b[2] for b in batch]))
    return shards


class EvalWorker:
    """A Ray actor's state: the model it holds and what generated with it."""

    def __init__(self, threads: int) -> None:
        import torch

        torch.set_num_threads(threads)
        self.threads = threads
        self.digest: str | None = None
        self.generator: Generator | None = None
        self.env: dict[str, Any] = {}

    def run(self, plan: ModelPlan, settings: GenerationSettings, shard: Shard) -> ShardResult:
        if self.digest != plan.digest:
            self._release()  # free the previous model before loading the next
            self.generator = load_generator(plan, settings, None)  # None: this actor's GPU, else CPU
            self.env = generation_env(self.generator, settings)
            self.digest = plan.digest
        g = self.generator
        if shard.kind == "generate":
            answers = g.generate(shard.prompts)
            cut = getattr(g, "last_truncated", None) or [False] * len(answers)
            return ShardResult(shard.model, shard.kind, shard.keys, list(zip(answers, cut)), self.env)
        return ShardResult(shard.model, shard.kind, shard.keys, list(g.loglik(shard.prompts, shard.refs)),
                           self.env)

    def _release(self) -> None:
        if self.generator is None:
            return
        import gc

        import torch

        self.generator, self.digest = None, None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


def actor_layout(resources: dict[str, float], n_shards: int, actors: int | None = None,
                 node_cpus: int | None = None) -> tuple[int, dict[str, Any]]:
    """(number of actors, Ray options of each) for a cluster's ``resources``:
    one actor per GPU when there are GPUs, else one per CPU; never more than
    there are shards; ``actors`` overrides the count (e.g. fewer copies of a big
    model on a CPU-only cluster). Each actor runs ``threads`` torch threads and
    reserves as many CPUs (one on a GPU), never more than the largest node has
    (``node_cpus``), or it could not be placed."""
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    n = max(1, min(actors or gpus or cpus, n_shards))
    if gpus:
        n = min(n, gpus)
    threads = max(1, min(cpus // n, node_cpus or cpus))
    if gpus:
        return n, {"num_gpus": 1, "num_cpus": 1, "threads": threads}
    return n, {"num_gpus": 0, "num_cpus": threads, "threads": threads}


def _unwrap(exc: BaseException) -> BaseException:
    """The worker's own exception (a BakeoffError stays a one-line error) from
    Ray's wrapper, which carries the remote traceback."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, BakeoffError):
        return cause
    return BakeoffError(f"evaluation failed on a Ray actor ({type(cause or exc).__name__}: {cause or exc}); "
                        "every finished shard is stored: run the same command again to resume")


def evaluate_on_ray(ws: Workspace, version: Version, items: pl.DataFrame, specs: list[ModelSpec],
                    settings: GenerationSettings, executor: Executor, reward: RewardScorer | None = None,
                    loglik: bool = True, actors: int | None = None, flush_seconds: float = 1.0) -> list[EvalResult]:
    """Evaluate ``specs`` with generation on Ray actors (see the module docstring).
    Results are in the order of ``specs``, as from the local executor."""
    from bakeoff.console import log, progress

    plans: list[ModelPlan] = []
    planned: set[tuple[str, str]] = set()
    for spec in specs:
        plan = plan_model(ws, version, items, spec, settings, loglik)
        if (plan.digest, plan.template) in planned:
            # The same weights under another name: its twin's shards cover it, and
            # it finishes after its twin, from the cache, as locally.
            plan = dataclasses.replace(plan, todo=[], ll_todo=[])
        planned.add((plan.digest, plan.template))
        plans.append(plan)
    shards = shards_for(plans, settings.batch_size)
    results: list[EvalResult] = []
    if not shards:
        return [finish_model(ws, version, items, p, settings, reward, loglik) for p in plans]

    left = [0] * len(plans)
    for s in shards:
        left[s.model] += 1

    def finish_ready() -> None:
        """Score and record, in the order given, every model whose shards are all in."""
        while len(results) < len(plans) and left[len(results)] == 0:
            results.append(finish_model(ws, version, items, plans[len(results)], settings, reward, loglik))

    with ray_session(executor) as ray, progress() as bar, ExitStack() as writers:
        from ray.util import ActorPool

        node_cpus = max((int(node["Resources"].get("CPU", 0)) for node in ray.nodes() if node.get("Alive")),
                        default=None)
        n, options = actor_layout(ray.cluster_resources(), len(shards), actors, node_cpus)
        threads = options.pop("threads")
        worker = ray.remote(EvalWorker).options(**options, max_restarts=1, max_task_retries=1)
        pool = ActorPool([worker.remote(threads) for _ in range(n)])
        kind = "GPU" if options["num_gpus"] else f"{threads} CPU"
        log(f"Ray: {n} actors ({kind} each) for {len(shards)} batches of {sum(p.n_work for p in plans)} "
            f"items over {sum(1 for x in left if x)} models")
        # Only a reference to each plan travels with a shard; the prompts travel in the shard.
        plan_refs = [ray.put(dataclasses.replace(p, todo=[], ll_todo=[])) for p in plans]
        settings_ref = ray.put(settings)
        task = bar.add_task(f"generating on Ray ({n} actors)", total=sum(len(s.keys) for s in shards))
        sinks: dict[tuple[int, str, str], Any] = {}  # (model, kind, env) -> BatchWriter
        finish_ready()
        results_iter = pool.map_unordered(lambda a, s: a.run.remote(plan_refs[s.model], settings_ref, s), shards)
        while True:
            try:
                res: ShardResult = next(results_iter)
            except StopIteration:
                break
            except ray.exceptions.RayError as exc:  # leaving ``writers`` stores every shard that returned
                raise _unwrap(exc) from None
            key = (res.model, res.kind, json.dumps(res.env, sort_keys=True))
            if key not in sinks:
                plan = plans[res.model]
                sinks[key] = writers.enter_context(output_writer(ws, plan, res.env, flush_seconds)
                                                   if res.kind == "generate"
                                                   else loglik_writer(ws, plan, flush_seconds))
            sinks[key].add(res.keys, res.values)
            bar.advance(task, len(res.keys))
            left[res.model] -= 1
            if left[res.model] == 0:
                for k, sink in sinks.items():
                    if k[0] == res.model:
                        sink.flush()
                finish_ready()
    return results
