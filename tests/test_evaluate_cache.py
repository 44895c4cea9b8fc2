"""The evaluation cache: keys (including two models with the same config but
different weights), resume after an interruption, re-scoring without generating,
incremental evaluation of a new checkpoint."""

from __future__ import annotations

import shutil

import pytest

from bakeoff.evaluate import cache
from bakeoff.evaluate.fakes import GeneratorInterrupted, ScriptedGenerator, commit_testset, save_tiny_causal_lm
from bakeoff.evaluate.generate import GenerationSettings
from bakeoff.evaluate.items import load_items
from bakeoff.evaluate.rank import build_leaderboard
from bakeoff.evaluate.runner import ModelSpec, evaluate_model
from bakeoff.evaluate.scorers import SCORERS, Scorer

N = 20
ITEMS = [dict(question=f"what is {i} + {i}?", reference=str(2 * i),
              slice=("in-domain", "adjacent", "far")[i % 3], task=("qa", "arithmetic")[i % 2],
              scoring={"method": "numeric"}) for i in range(N)]
RIGHT = {it["question"]: it["reference"] for it in ITEMS}


def fake(label: str, answers=None, **kw) -> tuple[ModelSpec, ScriptedGenerator]:
    gen = ScriptedGenerator(RIGHT if answers is None else answers, **kw)
    return ModelSpec(label=label, digest=f"digest-{label}", template_id=gen.template_id,
                     generator_factory=lambda s, d: gen), gen


def never(label: str) -> ModelSpec:
    """A model whose outputs must all come from the cache."""
    def boom(settings, device):
        raise AssertionError(f"{label} should not be loaded: everything is cached")
    return ModelSpec(label=label, digest=f"digest-{label}", template_id="scripted-v1", generator_factory=boom)


@pytest.fixture
def testset(ws):
    commit_testset(ws, "ts", ITEMS)
    return load_items(ws, "ts@v1")


SETTINGS = GenerationSettings(batch_size=4, max_new_tokens=8)


def test_resume_after_interruption_does_not_regenerate(ws, testset):
    version, items = testset
    spec, gen = fake("A", fail_after=2)
    with pytest.raises(GeneratorInterrupted):
        # default buffering: the batches finished before the exception are written on the way out
        evaluate_model(ws, version, items, spec, SETTINGS, loglik=False)
    done = cache.stored_prompts(ws, "digest-A", "scripted-v1", SETTINGS.digest())
    assert len(done) == 8  # the two batches of four finished before the failure
    first = set(gen.generated)

    # The interrupted model is not ranked (its outputs do not cover the test set).
    spec_b, _ = fake("B", answers={})
    evaluate_model(ws, version, items, spec_b, SETTINGS, loglik=False)
    board = build_leaderboard(ws, "ts@v1", n_boot=200)
    assert [e.label for e in board.entries] == ["B"]
    # ... but it does not vanish: it is listed with how many items it lacks.
    assert [(x["label"], x["missing"]) for x in board.not_ranked] == [("A", N - 8)]
    assert "interrupted" in board.not_ranked[0]["reason"]

    spec2, gen2 = fake("A")
    res = evaluate_model(ws, version, items, spec2, SETTINGS, loglik=False)
    assert res.generated == N - 8 and res.reused == 8
    assert not first & set(gen2.generated)  # nothing generated twice
    assert res.mean_score == 1.0


def test_writes_survive_a_kill_between_flushes(ws, testset):
    """With per-batch flushing (flush_seconds=0), every finished batch is in the
    catalog before the next one starts."""
    version, items = testset
    seen = []

    class Spy(ScriptedGenerator):
        def generate(self, prompts):
            seen.append(len(cache.stored_prompts(ws, "digest-S", "scripted-v1", SETTINGS.digest())))
            return super().generate(prompts)

    gen = Spy(RIGHT)
    spec = ModelSpec("S", digest="digest-S", template_id=gen.template_id, generator_factory=lambda s, d: gen)
    evaluate_model(ws, version, items, spec, SETTINGS, loglik=False, flush_seconds=0)
    assert seen == [0, 4, 8, 12, 16]


def test_new_checkpoint_costs_one_evaluation_and_scorer_change_rescores(ws, testset, monkeypatch):
    version, items = testset
    for label in ("A", "B"):
        spec, _ = fake(label)
        assert evaluate_model(ws, version, items, spec, SETTINGS).generated == N
    # Adding C: A and B come entirely from the cache (their generators would raise).
    spec_c, gen_c = fake("C", answers={q: "0" for q in RIGHT})
    for s in (never("A"), never("B"), spec_c):
        evaluate_model(ws, version, items, s, SETTINGS)
    assert len(gen_c.generated) == N
    board = build_leaderboard(ws, "ts@v1", n_boot=200)
    assert {e.label: e.score for e in board.entries}["C"] == pytest.approx(1 / N)  # 0 + 0 = 0 is right once

    # A new scorer version: stored outputs are re-scored, nothing is generated.
    monkeypatch.setitem(SCORERS, "numeric", Scorer("numeric", lambda p, r, o: float(p == "0"), True))
    _, items2 = load_items(ws, "ts@v1")
    assert set(items2["scorer"]) != set(items["scorer"])
    res = evaluate_model(ws, version, items2, never("C"), SETTINGS)
    assert res.generated == 0 and res.scored == N and res.mean_score == 1.0
    board = build_leaderboard(ws, "ts@v1", n_boot=200)  # rescoring A and B happens here, from outputs
    scores = {e.label: e.score for e in board.entries}
    assert scores == {"C": 1.0, "A": pytest.approx(1 / N), "B": pytest.approx(1 / N)}
    assert board.winner.label == "C"


def test_same_config_different_weights_never_share_outputs(ws, tmp_path):
    """Two tiny Llamas with identical configs and different weights get different
    digests and each generates its own outputs; a byte-identical copy of one
    (another path) reuses its outputs."""
    commit_testset(ws, "ts", ITEMS[:4], with_columns=False)
    version, items = load_items(ws, "ts@v1")
    a = save_tiny_causal_lm(tmp_path / "a", seed=1)
    b = save_tiny_causal_lm(tmp_path / "b", seed=2)
    assert (a / "config.json").read_text() == (b / "config.json").read_text()
    da, db = cache.weights_digest(a, ws), cache.weights_digest(b, ws)
    assert da != db
    settings = GenerationSettings(batch_size=2, max_new_tokens=6)
    ra = evaluate_model(ws, version, items, ModelSpec("a", str(a)), settings, device="cpu")
    rb = evaluate_model(ws, version, items, ModelSpec("b", str(b)), settings, device="cpu")
    assert ra.generated == 4 and rb.generated == 4
    assert ra.weights_digest == da and rb.weights_digest == db
    template = cache.runs_for(ws, "ts@v1")["template"][0]
    outs_a = cache.load_outputs(ws, da, template, settings.digest())
    outs_b = cache.load_outputs(ws, db, template, settings.digest())
    assert outs_a.height == outs_b.height == 4
    assert outs_a.sort("prompt_digest")["output"].to_list() != outs_b.sort("prompt_digest")["output"].to_list()

    copy = tmp_path / "copy-of-a"
    shutil.copytree(a, copy)
    assert cache.weights_digest(copy, ws) == da
    rc = evaluate_model(ws, version, items, ModelSpec("copy", str(copy)), settings, device="cpu")
    assert rc.generated == 0

    # Other generation settings are another cache key.
    r2 = evaluate_model(ws, version, items, ModelSpec("a", str(a)), GenerationSettings(batch_size=2,
                                                                                     max_new_tokens=3),
                        device="cpu", loglik=False)
    assert r2.generated == 4
    # Hand-made test set (no reference/scoring columns): token F1 against the last assistant turn.
    assert set(items["method"]) == {"token_f1"}
    assert items["reference"].to_list() == [it["reference"] for it in ITEMS[:4]]


def test_batched_generation_matches_one_at_a_time(tmp_path):
    from bakeoff.evaluate.generate import HFGenerator

    path = save_tiny_causal_lm(tmp_path / "m", seed=3)
    prompts = [[{"role": "user", "content": "x" * (1 + 7 * i)}] for i in range(5)]
    refs = ["12", "abc", "", "7 8", "zz"]
    batched = HFGenerator.from_path(str(path), GenerationSettings(batch_size=5, max_new_tokens=6), "cpu")
    single = HFGenerator(batched.model, batched.tok, GenerationSettings(batch_size=1, max_new_tokens=6))
    assert batched.generate(prompts) == single.generate(prompts)
    lb, ls = batched.loglik(prompts, refs), single.loglik(prompts, refs)
    assert [n for _, n in lb] == [n for _, n in ls]
    assert [v for v, _ in lb] == pytest.approx([v for v, _ in ls], abs=1e-3)
    assert lb[2] == (0.0, 0) and all(v < 0 for v, n in lb if n)


def test_several_devices_evaluate_models_in_parallel(ws, testset):
    """--devices: each model gets a device no other running model holds."""
    import threading

    from bakeoff.evaluate.runner import evaluate_models

    version, items = testset
    busy: dict[str, int] = {}
    lock = threading.Lock()
    clashes = []

    def factory(label):
        class Gen(ScriptedGenerator):
            def generate(self, prompts):
                with lock:
                    if busy.get(self.device, 0):
                        clashes.append(self.device)
                    busy[self.device] = busy.get(self.device, 0) + 1
                import time
                time.sleep(0.01)
                with lock:
                    busy[self.device] -= 1
                return super().generate(prompts)

        def make(settings, device):
            g = Gen(RIGHT)
            g.device = device
            return g
        return ModelSpec(label, digest=f"digest-{label}", template_id="scripted-v1", generator_factory=make)

    results = evaluate_models(ws, version, items, [factory(x) for x in "ABCD"], SETTINGS,
                              devices=["dev0", "dev1"], loglik=False)
    assert [r.label for r in results] == list("ABCD") and all(r.generated == N for r in results)
    assert clashes == []


def test_adapter_checkpoint_digest_covers_its_base(ws, tmp_path):
    """A LoRA adapter is identified by its files and its base model's weights: the
    same adapter files on another base are another model."""
    import json

    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from bakeoff.evaluate.discover import find_checkpoints

    bases = [save_tiny_causal_lm(tmp_path / f"base{k}", seed=k) for k in (1, 2)]
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(bases[0]),
                           LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    ckpts = []
    for k, base in enumerate(bases):
        ckpt = ws.runs_dir() / "exp" / f"run{k}" / "checkpoint-5"
        model.save_pretrained(ckpt)
        (ckpt / "bakeoff_checkpoint.json").write_text(json.dumps(
            {"run_id": f"run{k}", "experiment_name": "exp", "step": 5, "kind": "sft", "base_model": str(base),
             "datasets": []}))
        ckpts.append(ckpt)
    d0, d1 = (cache.weights_digest(c, ws) for c in ckpts)
    assert d0 != d1 and d0 != cache.weights_digest(bases[0], ws)
    specs = find_checkpoints(ws, [], experiment="exp")
    assert [s.label for s in specs] == ["sft step 5 (run0)", "sft step 5 (run1)"]  # run ids tell them apart
    commit_testset(ws, "ts", ITEMS[:2])
    version, items = load_items(ws, "ts@v1")
    res = evaluate_model(ws, version, items, specs[0], GenerationSettings(batch_size=2, max_new_tokens=3),
                         device="cpu", loglik=False)
    assert res.generated == 2 and res.weights_digest == d0


def test_clashing_labels_use_the_run_names_that_tell_runs_apart():
    """Two checkpoints of one kind, dataset and step: the words of their run names
    that differ name them (a control run ``...-lr10x``), else the run id."""
    from bakeoff.evaluate.discover import _unique_labels

    def spec(run_id: str, run_name: str | None) -> ModelSpec:
        return ModelSpec(label="r1 sft fin@v2 step 64", path="/x", meta={"run_id": run_id, "run_name": run_name})

    specs = [spec("fb23f142aa", "r1-sft-fin@v2"), spec("0123456789", "r1-sft-fin@v2-lr10x")]
    _unique_labels(specs)
    assert [s.label for s in specs] == ["r1 sft fin@v2 step 64 (fb23f142)", "r1 sft fin@v2 step 64 (lr10x)"]
    same = [spec("aaaaaaaa11", "x"), spec("bbbbbbbb22", "x")]  # equal names: the run ids
    _unique_labels(same)
    assert [s.label for s in same] == ["r1 sft fin@v2 step 64 (aaaaaaaa)", "r1 sft fin@v2 step 64 (bbbbbbbb)"]
