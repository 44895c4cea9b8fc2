"""Evaluate models on a test set through the cache.

For each model: identify it by its weights digest, look up which prompts already
have an output under (digest, template, generation config), generate only the
rest in batches (stored as they finish, see ``cache.BatchWriter``: an exception
loses nothing finished, a hard kill at most ``flush_seconds`` of work), then score every item whose score under the current scorer
version is missing, from stored outputs. A model whose outputs are all stored is
never loaded.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Callable

import polars as pl

from bakeoff.evaluate import cache
from bakeoff.evaluate.generate import GenerationSettings, Generator, HFGenerator, load_template_id
from bakeoff.evaluate.scorers import RewardScorer, score_one
from bakeoff.executor import Executor
from bakeoff.workspace import BakeoffError, Version, Workspace


@dataclass
class ModelSpec:
    """A model to evaluate. ``digest``/``template_id``/``generator_factory`` are
    filled from ``path`` when not given (tests give them for scripted fakes)."""

    label: str
    path: str | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    is_base: bool = False
    digest: str | None = None
    template_id: str | None = None
    generator_factory: Callable[[GenerationSettings, str | None], Generator] | None = None

    def make_generator(self, settings: GenerationSettings, device: str | None) -> Generator:
        if self.generator_factory is not None:
            return self.generator_factory(settings, device)
        if self.path is None:
            raise BakeoffError(f"model {self.label} has neither a path nor a generator")
        return HFGenerator.from_path(self.path, settings, device)


@dataclass
class EvalResult:
    label: str
    weights_digest: str
    n_items: int
    generated: int
    reused: int
    scored: int
    seconds: float
    mean_score: float
    is_base: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def generation_env(generator: Generator, settings: GenerationSettings) -> dict[str, Any]:
    """What, besides the generation settings, can change a generated answer:
    backend, batch size (padding changes greedy decoding's numerics), dtype,
    device type and library versions. Stored with every output."""
    env = {"batch_size": settings.batch_size}
    describe = getattr(generator, "environment", None)
    env.update(describe() if callable(describe) else {"backend": type(generator).__name__})
    return env


def _batches(seq: list, size: int):
    for i in range(0, len(seq), max(1, size)):
        yield seq[i:i + size]


def score_items(ws: Workspace, items: pl.DataFrame, digest: str, template: str, gen_config: str,
                reward: RewardScorer | None = None) -> tuple[pl.DataFrame, int]:
    """Scores of ``items`` for one model: stored ones reused, missing ones computed
    from stored outputs (never generating). Returns (frame of item_digest,
    scorer, score, output for items that have an output, number newly scored)."""
    outputs = cache.load_outputs(ws, digest, template, gen_config)
    have = items.join(outputs, on="prompt_digest", how="inner")
    stored = cache.load_scores(ws, digest, template, gen_config)
    todo = have.join(stored, on=["item_digest", "scorer"], how="anti").unique("item_digest")
    if todo.height:
        import json

        from bakeoff.evaluate.scorers import SCORERS

        model_methods = [m for m, sc in SCORERS.items() if sc.needs_model]
        needs_model = todo.filter(pl.col("method").is_in(model_methods))
        plain = todo.filter(~pl.col("method").is_in(model_methods))
        new_d, new_s, new_v = [], [], []
        # Scorers are string parsing (regexes, LCS): per-row Python by nature.
        for d, s, out, ref, spec in plain.select("item_digest", "scorer", "output", "reference",
                                                 "scoring").iter_rows():
            new_d.append(d), new_s.append(s), new_v.append(score_one(out, ref, json.loads(spec)))
        if needs_model.height:
            if reward is None:
                raise BakeoffError(f"{needs_model.height} items are scored by a reward model: "
                                   "pass --reward-model PATH")
            for method, group in needs_model.group_by("method"):
                specs = [{k: v for k, v in json.loads(x).items() if k != "method"} for x in group["scoring"]]
                vals = SCORERS[method[0]].fn(group["output"].to_list(), group["reference"].to_list(), specs,
                                             group["prompt"].to_list(), reward)
                new_d += group["item_digest"].to_list()
                new_s += group["scorer"].to_list()
                new_v += list(vals)
        for chunk in _batches(list(range(len(new_d))), 5000):
            cache.write_scores(ws, digest, template, gen_config, [new_d[i] for i in chunk],
                               [new_s[i] for i in chunk], [new_v[i] for i in chunk])
        stored = cache.load_scores(ws, digest, template, gen_config)
    scored = have.join(stored, on=["item_digest", "scorer"], how="inner")
    return scored.select("item_digest", "scorer", "score", "output").unique("item_digest"), todo.height


@dataclass
class ModelPlan:
    """What one model still needs, found on the driver from the cache before any
    generation: the prompts without an output (shortest first, as they are
    batched) and the items without a reference log-likelihood."""

    spec: ModelSpec
    digest: str
    template: str
    gen_config: str
    todo: list[tuple[str, Any]]  # (prompt_digest, prompt)
    ll_todo: list[tuple[str, Any, str]]  # (item_digest, prompt, reference)
    n_prompts: int
    started: float

    @property
    def n_work(self) -> int:
        return len(self.todo) + len(self.ll_todo)


def plan_model(ws: Workspace, version: Version, items: pl.DataFrame, spec: ModelSpec,
               settings: GenerationSettings, loglik: bool = True) -> ModelPlan:
    """Identify ``spec`` by its weights, register it, note that its evaluation
    began, and list what the cache lacks for it (see :class:`ModelPlan`)."""
    t0 = time.perf_counter()
    gen_config = settings.digest()
    with cache.connect(ws):  # one catalog connection for the lookups
        digest = spec.digest or cache.weights_digest(spec.path, ws)
        template = spec.template_id or cache.model_template(ws, digest) or load_template_id(spec.path)
        cache.register_model(ws, digest, spec.label, spec.path or "", spec.meta, spec.is_base, template)
        cache.record_start(ws, version.ref, digest, template, gen_config, spec.label)
        done = cache.stored_prompts(ws, digest, template, gen_config)
        ll_done = cache.stored_logliks(ws, digest, template) if loglik else set()
    prompts = items.unique("prompt_digest", keep="first", maintain_order=True)
    todo = prompts.filter(~pl.col("prompt_digest").is_in(list(done)))
    # Similar lengths in one batch waste less on padding. Batches are the same on
    # every run (stable sort, ordered unique): a batch's composition changes its
    # padding, and padding changes greedy outputs and log-likelihoods in the last
    # digits, so a rerun, a resumed run or a Ray run must batch as this one did.
    todo = todo.with_columns(pl.col("prompt").list.eval(pl.element().struct.field("content").str.len_chars())
                             .list.sum().alias("_len")).sort("_len", maintain_order=True)
    ll_todo = items.head(0)
    if loglik:
        ll_todo = items.filter(~pl.col("item_digest").is_in(list(ll_done))).unique("item_digest",
                                                                                   maintain_order=True)
    return ModelPlan(spec, digest, template, gen_config, list(todo.select("prompt_digest", "prompt").iter_rows()),
                     list(ll_todo.select("item_digest", "prompt", "reference").iter_rows()), prompts.height, t0)


def load_generator(plan: ModelPlan, settings: GenerationSettings, device: str | None) -> Generator:
    """The model of ``plan`` loaded, after checking that it renders prompts the way
    the cache key says."""
    generator = plan.spec.make_generator(settings, device)
    if generator.template_id != plan.template:
        raise BakeoffError(f"{plan.spec.label}: template id {generator.template_id} != {plan.template}")
    return generator


def output_writer(ws: Workspace, plan: ModelPlan, env: dict[str, Any], flush_seconds: float) -> cache.BatchWriter:
    """Buffers (prompt_digest -> (output, truncated)) and stores them with ``env``."""
    return cache.BatchWriter(
        lambda keys, vals: cache.write_outputs(ws, plan.digest, plan.template, plan.gen_config, keys,
                                               [v[0] for v in vals], env, [v[1] for v in vals]), flush_seconds)


def loglik_writer(ws: Workspace, plan: ModelPlan, flush_seconds: float) -> cache.BatchWriter:
    """Buffers (item_digest -> (loglik, n_tokens)) and stores them."""
    return cache.BatchWriter(
        lambda keys, vals: cache.write_logliks(ws, plan.digest, plan.template, keys, vals), flush_seconds)


def finish_model(ws: Workspace, version: Version, items: pl.DataFrame, plan: ModelPlan,
                 settings: GenerationSettings, reward: RewardScorer | None = None,
                 loglik: bool = True) -> EvalResult:
    """Once every output is stored: score what is unscored, check every item has a
    score, and record the completed evaluation."""
    spec = plan.spec
    with cache.connect(ws):
        scored, n_scored = score_items(ws, items, plan.digest, plan.template, plan.gen_config, reward)
        joined = items.join(scored, on="item_digest", how="inner")
        if joined.height != items.height:
            raise BakeoffError(f"{spec.label}: {items.height - joined.height} items have no score after "
                               "evaluation")
        seconds = time.perf_counter() - plan.started
        cache.record_run(ws, version.ref, version.digest, plan.digest, plan.template, plan.gen_config,
                         {**settings.key_dict(), "batch_size": settings.batch_size, "loglik": loglik,
                          "reward_digest": reward.digest if reward is not None else None},
                         items.height, seconds, len(plan.todo))
    return EvalResult(spec.label, plan.digest, items.height, len(plan.todo), plan.n_prompts - len(plan.todo),
                      n_scored, seconds, float(joined["score"].mean()), spec.is_base)


def evaluate_model(ws: Workspace, version: Version, items: pl.DataFrame, spec: ModelSpec,
                   settings: GenerationSettings, device: str | None = None,
                   reward: RewardScorer | None = None, loglik: bool = True,
                   progress: Any = None, flush_seconds: float = 1.0) -> EvalResult:
    """Evaluate one model on every item, through the cache (see module docstring)."""
    plan = plan_model(ws, version, items, spec, settings, loglik)
    generator: Generator | None = None
    if plan.n_work:
        generator = load_generator(plan, settings, device)
    task = None
    if progress is not None and plan.n_work:
        task = progress.add_task(f"{spec.label}", total=plan.n_work)
    env = generation_env(generator, settings) if generator is not None else {}
    with output_writer(ws, plan, env, flush_seconds) as out_writer:
        for batch in _batches(plan.todo, settings.batch_size):
            answers = generator.generate([b[1] for b in batch])
            cut = getattr(generator, "last_truncated", None) or [False] * len(answers)
            out_writer.add([b[0] for b in batch], list(zip(answers, cut)))
            if task is not None:
                progress.advance(task, len(batch))
    with loglik_writer(ws, plan, flush_seconds) as ll_writer:
        for batch in _batches(plan.ll_todo, settings.batch_size):
            ll_writer.add([b[0] for b in batch], generator.loglik([b[1] for b in batch], [b[2] for b in batch]))
            if task is not None:
                progress.advance(task, len(batch))
    if task is not None:
        progress.remove_task(task)
    return finish_model(ws, version, items, plan, settings, reward, loglik)


def evaluate_models(ws: Workspace, version: Version, items: pl.DataFrame, specs: list[ModelSpec],
                    settings: GenerationSettings, devices: list[str] | None = None,
                    reward: RewardScorer | None = None, loglik: bool = True,
                    executor: Executor | None = None) -> list[EvalResult]:
    """Evaluate several models; with several ``devices``, one model per device at
    a time, in threads (torch releases the GIL in its kernels). With a Ray
    ``executor``, actors on the cluster generate and this process writes the
    cache (see :mod:`bakeoff.evaluate.on_ray`)."""
    from bakeoff.console import progress

    if executor is not None and executor.is_ray:
        if devices:
            raise BakeoffError("--devices places models in this process; with --executor ray each Ray "
                               "actor takes one GPU (or CPU slot) of the cluster")
        from bakeoff.evaluate.on_ray import evaluate_on_ray

        return evaluate_on_ray(ws, version, items, specs, settings, executor, reward, loglik)
    devices = devices or [None]  # type: ignore[list-item]
    with progress() as p:
        overall = p.add_task("models", total=len(specs))
        if len(devices) == 1:
            results = []
            for spec in specs:
                results.append(evaluate_model(ws, version, items, spec, settings, devices[0], reward,
                                              loglik, p))
                p.advance(overall)
            return results

        import queue

        free: "queue.Queue[str | None]" = queue.Queue()
        for d in devices:
            free.put(d)

        def work(spec: ModelSpec) -> EvalResult:
            device = free.get()  # a device no other model is using
            try:
                res = evaluate_model(ws, version, items, spec, settings, device, reward, loglik, p)
            finally:
                free.put(device)
            p.advance(overall)
            return res

        with ThreadPoolExecutor(max_workers=len(devices)) as pool:
            return list(pool.map(work, specs))
