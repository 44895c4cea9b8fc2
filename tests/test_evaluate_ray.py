"""Evaluation on Ray (``--executor ray``): the same scores and the same cached
outputs as the local run, nothing generated twice, and a job stopped part-way
resumes with only what is missing. One local Ray instance (2 CPUs, no
dashboard) serves the whole module."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from click.testing import CliRunner

ray = pytest.importorskip("ray", reason="Ray is an optional extra: pip install 'bakeoff[ray]'")

from _chat_fixtures import build_model_dir  # noqa: E402

from bakeoff.cli import cli  # noqa: E402
from bakeoff.evaluate import cache  # noqa: E402
from bakeoff.evaluate.fakes import ScriptedGenerator, commit_testset  # noqa: E402
from bakeoff.evaluate.generate import GenerationSettings  # noqa: E402
from bakeoff.evaluate.items import load_items  # noqa: E402
from bakeoff.evaluate.on_ray import actor_layout  # noqa: E402
from bakeoff.evaluate.runner import ModelSpec, evaluate_models  # noqa: E402
from bakeoff.executor import Executor  # noqa: E402
from bakeoff.workspace import BakeoffError, Workspace  # noqa: E402

RAY = Executor("ray")
# Questions of varied length, so batches differ in padding: a shard that were not
# exactly the local batch would change greedy outputs.
ITEMS = [dict(question="What is the total revenue for 2023?" + " Please explain." * (i % 4) + f" ({i})",
              reference=str(100 + i), slice=("in-domain", "adjacent")[i % 2],
              scoring={"method": ("numeric", "token_f1")[i % 2]}) for i in range(14)]
SETTINGS = GenerationSettings(batch_size=4, max_new_tokens=6)


@pytest.fixture(scope="module", autouse=True)
def ray_instance():
    # Test-local generator factories travel to the actors by value.
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
    yield
    ray.shutdown()


def _talkative(name: str, target, seed: int) -> str:
    """A tiny checkpoint with ``name``'s real chat template, tokenizer and
    generation config, its weights redrawn wider (std 0.2): at the default init
    every prompt gets the same blank answer, which would make "identical
    outputs" say nothing."""
    import torch
    from transformers import AutoModelForCausalLM

    build_model_dir(name, target)
    model = AutoModelForCausalLM.from_pretrained(target)
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.normal_(0.0, 0.2)
    model.save_pretrained(target)
    return str(target)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two tiny checkpoints with real chat templates (SmolLM2's and Qwen2.5's)."""
    root = tmp_path_factory.mktemp("models")
    return [ModelSpec("smol", _talkative("smollm2", root / "smol", seed=1)),
            ModelSpec("qwen", _talkative("qwen2_5", root / "qwen", seed=2))]


def _testset(root) -> tuple[Workspace, object, object]:
    ws = Workspace(root)
    commit_testset(ws, "ts", ITEMS)
    return (ws, *load_items(ws, "ts@v1"))


def _outputs(ws: Workspace) -> list[tuple]:
    with cache.connect(ws) as con:
        return con.execute("SELECT weights_digest, prompt_digest, template, gen_config, output, env, truncated "
                           "FROM eval_outputs ORDER BY ALL").fetchall()


def _logliks(ws: Workspace) -> list[tuple]:
    with cache.connect(ws) as con:
        return con.execute("SELECT weights_digest, item_digest, template, loglik, n_tokens FROM eval_logliks "
                           "ORDER BY ALL").fetchall()


def _scores(ws: Workspace) -> list[tuple]:
    with cache.connect(ws) as con:
        return con.execute("SELECT weights_digest, item_digest, scorer, score FROM eval_scores "
                           "ORDER BY ALL").fetchall()


def test_ray_matches_local_and_reruns_generate_nothing(tmp_path, checkpoints, torch_one_thread):
    local_ws, version, items = _testset(tmp_path / "local")
    ray_ws, ray_version, ray_items = _testset(tmp_path / "ray")
    local = evaluate_models(local_ws, version, items, checkpoints, SETTINGS)
    on_ray = evaluate_models(ray_ws, ray_version, ray_items, checkpoints, SETTINGS, executor=RAY)

    # Same models, same counts, same scores, in the order given.
    assert [(r.label, r.weights_digest, r.generated, r.reused, r.scored, r.mean_score) for r in on_ray] == \
        [(r.label, r.weights_digest, r.generated, r.reused, r.scored, r.mean_score) for r in local]
    assert all(r.generated == len(ITEMS) for r in on_ray)
    # Byte for byte the same cache: outputs (with their environment), log-likelihoods, scores.
    assert _outputs(ray_ws) == _outputs(local_ws) and len(_outputs(ray_ws)) == 2 * len(ITEMS)
    assert len({o[4] for o in _outputs(ray_ws)}) > len(ITEMS)  # real, varied answers
    assert _logliks(ray_ws) == _logliks(local_ws) and _scores(ray_ws) == _scores(local_ws)

    # A rerun on Ray finds everything stored: nothing generated, nothing loaded.
    before = _outputs(ray_ws)
    again = evaluate_models(ray_ws, ray_version, ray_items, checkpoints, SETTINGS, executor=RAY)
    assert [(r.generated, r.reused) for r in again] == [(0, len(ITEMS))] * 2
    assert _outputs(ray_ws) == before

    # A partial cache (a job killed after some shards) resumes with only the missing items.
    qwen = on_ray[1].weights_digest
    with cache.connect(ray_ws) as con:
        gone = {r[0] for r in con.execute("SELECT prompt_digest FROM eval_outputs WHERE weights_digest = ? "
                                          "ORDER BY prompt_digest LIMIT 5", [qwen]).fetchall()}
        con.execute("DELETE FROM eval_outputs WHERE weights_digest = ? AND prompt_digest IN "
                    f"({','.join('?' * len(gone))})", [qwen, *gone])
    # (through the command line this time)
    res = CliRunner().invoke(cli, ["-w", str(ray_ws.root), "evaluate", "run", "--testset", "ts@v1",
                                   "--checkpoints", " ".join(c.path for c in checkpoints), "--base-model", "none",
                                   "--batch-size", str(SETTINGS.batch_size), "--max-new-tokens",
                                   str(SETTINGS.max_new_tokens), "--executor", "ray", "--no-rank", "--json"],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    resumed = json.loads(res.stdout)["models"]
    assert {r["weights_digest"]: (r["generated"], r["reused"]) for r in resumed} == \
        {on_ray[0].weights_digest: (0, len(ITEMS)), qwen: (5, len(ITEMS) - 5)}
    assert _outputs(ray_ws) == _outputs(local_ws)


def _scripted(label: str, fail_after: int | None = None) -> ModelSpec:
    answers = {it["question"]: it["reference"] for it in ITEMS}
    return ModelSpec(label, digest=f"digest-{label}", template_id="scripted-v1",
                     generator_factory=lambda s, d: ScriptedGenerator(answers, fail_after=fail_after))


def test_a_job_stopped_by_an_actor_failure_keeps_its_shards_and_resumes(tmp_path):
    """Each actor fails after its first batch: the batches that returned are stored
    by the driver, and the rerun generates only the rest."""
    ws, version, items = _testset(tmp_path / "ws")
    with pytest.raises(BakeoffError, match="GeneratorInterrupted.*run the same command again"):
        evaluate_models(ws, version, items, [_scripted("A", fail_after=1)], SETTINGS, loglik=False,
                        executor=RAY)
    stored = cache.stored_prompts(ws, "digest-A", "scripted-v1", SETTINGS.digest())
    assert 0 < len(stored) < len(ITEMS) and len(stored) % SETTINGS.batch_size == 0  # whole batches only
    res = evaluate_models(ws, version, items, [_scripted("A")], SETTINGS, loglik=False, executor=RAY)
    assert res[0].generated == len(ITEMS) - len(stored) and res[0].mean_score == 1.0


def test_actor_layout():
    assert actor_layout({"CPU": 2.0}, 10) == (2, {"num_gpus": 0, "num_cpus": 1, "threads": 1})
    assert actor_layout({"CPU": 8.0}, 3) == (3, {"num_gpus": 0, "num_cpus": 2, "threads": 2})
    assert actor_layout({"CPU": 8.0}, 10, actors=2) == (2, {"num_gpus": 0, "num_cpus": 4, "threads": 4})
    assert actor_layout({"CPU": 32.0, "GPU": 4.0}, 100) == (4, {"num_gpus": 1, "num_cpus": 1, "threads": 8})
    assert actor_layout({"CPU": 32.0, "GPU": 4.0}, 2)[0] == 2
    # 4 nodes of 16 CPUs, 2 shards: an actor of 32 CPUs would never be placed
    assert actor_layout({"CPU": 64.0}, 2, node_cpus=16) == (2, {"num_gpus": 0, "num_cpus": 16, "threads": 16})


def test_devices_and_ray_together_are_refused(tmp_path):
    ws, version, items = _testset(tmp_path / "ws")
    with pytest.raises(BakeoffError, match="--devices"):
        evaluate_models(ws, version, items, [_scripted("A")], SETTINGS, devices=["cpu"], executor=RAY)


def test_local_executor_never_imports_ray(tmp_path):
    code = f"""
import sys
from bakeoff.evaluate.fakes import ScriptedGenerator, commit_testset
from bakeoff.evaluate.generate import GenerationSettings
from bakeoff.evaluate.items import load_items
from bakeoff.evaluate.runner import ModelSpec, evaluate_models
from bakeoff.executor import Executor
from bakeoff.workspace import Workspace
ws = Workspace({str(tmp_path / 'ws')!r})
commit_testset(ws, "ts", [dict(question="q", reference="a")])
version, items = load_items(ws, "ts@v1")
spec = ModelSpec("A", digest="d", template_id="scripted-v1", generator_factory=lambda s, d: ScriptedGenerator({{}}))
for executor in (None, Executor("local")):
    evaluate_models(ws, version, items, [spec], GenerationSettings(), executor=executor)
print("ray" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.slow
def test_a_killed_driver_keeps_the_shards_it_stored_and_a_rerun_completes(tmp_path):
    """SIGKILL the driver process mid-run: the outputs it stored stay, and a rerun
    on Ray generates only the rest (nothing twice)."""
    import os
    import signal
    import time

    ws, version, items = _testset(tmp_path / "ws")
    code = f"""
import time
import ray
from bakeoff.evaluate.fakes import ScriptedGenerator
from bakeoff.evaluate.generate import GenerationSettings
from bakeoff.evaluate.items import load_items
from bakeoff.evaluate.on_ray import evaluate_on_ray
from bakeoff.evaluate.runner import ModelSpec
from bakeoff.executor import Executor
from bakeoff.workspace import Workspace

class Slow(ScriptedGenerator):
    def generate(self, prompts):
        time.sleep(0.7)
        return super().generate(prompts)

ray.init(address={ray.get_runtime_context().gcs_address!r}, log_to_driver=False, logging_level="ERROR")
ws = Workspace({str(ws.root)!r})
version, items = load_items(ws, "ts@v1")
spec = ModelSpec("A", digest="digest-A", template_id="scripted-v1", generator_factory=lambda s, d: Slow({{}}))
evaluate_on_ray(ws, version, items, [spec], GenerationSettings(batch_size=1, max_new_tokens=6),
                Executor("ray"), loglik=False, flush_seconds=0)
"""
    settings = GenerationSettings(batch_size=1, max_new_tokens=6)
    driver = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 240
        stored: set[str] = set()
        while len(stored) < 3 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.3)
            stored = cache.stored_prompts(ws, "digest-A", "scripted-v1", settings.digest())
        assert driver.poll() is None, "the driver finished before it could be killed"
        os.kill(driver.pid, signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
    stored = cache.stored_prompts(ws, "digest-A", "scripted-v1", settings.digest())
    assert 3 <= len(stored) < len(ITEMS)
    answers = {it["question"]: it["reference"] for it in ITEMS}
    spec = ModelSpec("A", digest="digest-A", template_id="scripted-v1",
                     generator_factory=lambda s, d: ScriptedGenerator(answers))
    res = evaluate_models(ws, version, items, [spec], settings, loglik=False, executor=RAY)
    assert res[0].generated == len(ITEMS) - len(stored) and res[0].reused == len(stored)
