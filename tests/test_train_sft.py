"""SFT on the tiny model: loss, LR schedule, lineage, checkpoints, masks, packing, resume."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from _train_data import commit, sft_rows

pytest.importorskip("trl")


@pytest.fixture(scope="module")
def model_cache(tmp_path_factory):
    import os

    path = tmp_path_factory.mktemp("models")
    old = os.environ.get("BAKEOFF_MODEL_CACHE")
    os.environ["BAKEOFF_MODEL_CACHE"] = str(path)
    yield path
    if old is None:
        os.environ.pop("BAKEOFF_MODEL_CACHE", None)
    else:
        os.environ["BAKEOFF_MODEL_CACHE"] = old


def _cfg(ref, **kw):
    from bakeoff.train.config import SFTRunConfig

    base = dict(dataset=ref, model="tiny", experiment_name="exp", lora=False, lr=3e-3, max_steps=10,
                batch_size=4, max_length=96, save_steps=5, warmup=0.2)
    base.update(kw)
    return SFTRunConfig(**base)


def _client(r):
    import mlflow

    return mlflow.MlflowClient(tracking_uri=r.tracking_uri)


def _history(r, key):
    hist = _client(r).get_metric_history(r.run_id, key)
    by_step = {}
    for m in sorted(hist, key=lambda m: m.timestamp):
        by_step[m.step] = m.value  # last write wins (a resumed run re-logs its tail)
    return [by_step[s] for s in sorted(by_step)], sorted(by_step)


@pytest.fixture(scope="module")
def mws(tmp_path_factory):
    """One workspace for the module: each new MLflow store costs seconds of schema set-up."""
    from bakeoff.workspace import Workspace

    return Workspace(tmp_path_factory.mktemp("ws"))


@pytest.fixture(scope="module")
def full_run(mws, model_cache):
    from bakeoff.train.sft import train_sft

    ws = mws
    ref = commit(ws, "fin", sft_rows(32))
    result = train_sft(ws, _cfg(ref, hypothesis="tiny model learns the pattern"))
    return ws, ref, result


def test_sft_loss_falls_and_checkpoints(full_run):
    ws, ref, r = full_run
    losses, steps = _history(r, "loss")
    assert steps == list(range(1, 11))
    assert losses[-1] < losses[0] * 0.8
    assert [Path(c).name for c in r.checkpoints] == ["checkpoint-5", "checkpoint-10"]
    meta = json.loads((Path(r.checkpoints[0]) / "bakeoff_checkpoint.json").read_text())
    assert meta == {"run_id": r.run_id, "run_name": None, "experiment_name": "exp", "step": 5, "kind": "sft",
                    "base_model": meta["base_model"], "datasets": [ref], "parent_run_id": None,
                    "parent_checkpoint": None, "round": None}
    assert Path(meta["base_model"]).is_dir()
    assert Path(r.checkpoints[0]).parent == ws.runs_dir() / "exp" / r.run_id
    from bakeoff.train.checkpoints import list_checkpoints

    assert [m.step for m in list_checkpoints(ws, "exp", kind="sft")] == [5, 10]


def test_sft_learning_rate_metric_has_warmup_stepdown_floor(full_run):
    _, _, r = full_run
    lrs, steps = _history(r, "learning_rate")
    assert steps == list(range(1, 11))  # every optimizer step
    peak = 3e-3
    # warm-up: 20 % of 10 steps = 2 steps rising to the peak
    assert lrs[0] == pytest.approx(peak / 2) and lrs[1] == pytest.approx(peak)
    # linear step-down: equal decrements
    diffs = [b - a for a, b in zip(lrs[1:], lrs[2:])]
    assert all(d < 0 for d in diffs) and max(diffs) - min(diffs) < 1e-9
    # floor at 0.45 x peak, not zero
    assert lrs[-1] == pytest.approx(0.45 * peak)


def test_sft_mlflow_lineage(full_run):
    ws, ref, r = full_run
    run = _client(r).get_run(r.run_id)
    v = ws.resolve(ref)
    inputs = run.inputs.dataset_inputs
    assert [i.dataset.name for i in inputs] == [ref]
    assert inputs[0].dataset.digest == v.digest[:36]
    p = run.data.params
    assert p["lr"] == "0.003" and p["max_grad_norm"] == "1.0" and p["lr_floor"] == "0.45"
    assert p["total_steps"] == "10" and p["warmup_steps"] == "2" and p["dataset"] == ref
    t = run.data.tags
    assert t["bakeoff.hypothesis"] == "tiny model learns the pattern"
    assert t["bakeoff.kind"] == "sft" and t["bakeoff.dataset.training"] == ref
    assert "outside the usual range" in t["bakeoff.practice_warnings"]
    assert r.tracking_uri == ws.tracking_uri


def test_sft_checkpoint_loads_and_note(full_run):
    from bakeoff.train.models import load_causal_lm
    from bakeoff.train.tracking import note

    ws, _, r = full_run
    model, tok = load_causal_lm(r.checkpoints[-1])
    assert tok.pad_token_id != tok.eos_token_id and tok.padding_side == "left"
    enc = tok.apply_chat_template([{"role": "user", "content": "Repeat the word cost."}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    outp = model.generate(**enc, max_new_tokens=4, do_sample=False)
    assert outp.shape[1] > enc["input_ids"].shape[1]
    res = note(ws, r.run_id, "loss fell; pattern learnt")

    tags = _client(r).get_run(r.run_id).data.tags
    assert tags["bakeoff.conclusion"] == "loss fell; pattern learnt"
    assert "Hypothesis: tiny model learns the pattern" in tags["mlflow.note.content"]
    assert res["experiment_name"] == "exp"


def test_lora_run_adapter_checkpoint_loads_merged(mws, model_cache):
    from bakeoff.train.models import load_causal_lm
    from bakeoff.train.sft import train_sft

    ws = mws
    ref = commit(ws, "fin-lora", sft_rows(8))
    r = train_sft(ws, _cfg(ref, lora=True, lr=2e-4, max_steps=2, save_steps=2, warmup=0.05,
                                experiment_name="lora"))
    ckpt = Path(r.checkpoints[-1])
    assert (ckpt / "adapter_config.json").exists() and not (ckpt / "model.safetensors").exists()
    model, tok = load_causal_lm(ckpt)
    assert not hasattr(model, "peft_config")  # merged for inference
    assert r.warnings == []  # 2e-4 is the usual LoRA LR


def test_monitor_fires_on_too_high_lr(mws, model_cache):

    from bakeoff.train.sft import train_sft

    ws = mws
    ref = commit(ws, "fin-hot", sft_rows(16))
    r = train_sft(ws, _cfg(ref, lr=30.0, max_steps=6, save_steps=6, warmup=1, experiment_name="hot"))
    assert r.lr_alerts, "a too-high LR should trip the monitor"
    tags = _client(r).get_run(r.run_id).data.tags
    assert tags["bakeoff.lr_monitor"] == "warned"
    assert set(tags["bakeoff.lr_warning"].split(",")) & {"nan", "spike", "rising", "stalled"}
    assert _client(r).get_metric_history(r.run_id, "lr_monitor_alert")


def test_assistant_only_labels_and_packing_positions(model_cache):
    """The collated batch trains on assistant answers (+ end-of-turn) only, and
    packed samples restart their position ids."""
    import torch
    from trl import SFTConfig, SFTTrainer

    from bakeoff.train.models import load_causal_lm
    from bakeoff.train.sft import sft_dataset

    rows = sft_rows(6)
    model, tok = load_causal_lm("tiny")
    args = SFTConfig(output_dir=str(model_cache / "mask"), per_device_train_batch_size=6, max_length=256,
                     packing=True, packing_strategy="bfd", padding_free=True, assistant_only_loss=False,
                     report_to="none", use_cpu=True)
    data, _ = sft_dataset(rows, tok, 256)  # tokenized with bakeoff's assistant mask
    trainer = SFTTrainer(model=model.train(), args=args, train_dataset=data, processing_class=tok)
    batch = next(iter(trainer.get_train_dataloader()))
    ids, labels, pos = batch["input_ids"][0], batch["labels"][0], batch["position_ids"][0]
    starts = (pos == 0).nonzero().flatten().tolist()
    assert len(starts) == 6 and "attention_mask" not in batch
    trained = tok.decode(ids[labels != -100])
    answers = sorted(m[-1]["content"] + "<|im_end|>" for m in rows["messages"].to_list())
    # each sample's trained tokens are exactly its answer and the end-of-turn token
    bounds = starts + [len(ids)]
    per_sample = sorted(tok.decode(ids[a:b][labels[a:b] != -100]) for a, b in zip(bounds, bounds[1:]))
    assert per_sample == answers
    assert "user" not in trained
    assert torch.all(labels[torch.tensor(starts)] == -100)


def test_packed_samples_do_not_attend_to_each_other(model_cache):
    import torch

    from bakeoff.train.models import load_causal_lm

    model, tok = load_causal_lm("tiny")
    a = tok("What is the total revenue?", return_tensors="pt")["input_ids"][0]
    b = tok("Invoice INV-0042 total due", return_tensors="pt")["input_ids"][0]
    packed = torch.cat([a, b]).unsqueeze(0)
    pos = torch.cat([torch.arange(len(a)), torch.arange(len(b))]).unsqueeze(0)
    with torch.no_grad():
        # use_cache=False as in training (TRL sets it): with a KV cache the
        # packed-sequence mask is not derived from the position ids
        lp = model(input_ids=packed, position_ids=pos, use_cache=False).logits[0]
        crossed = model(input_ids=packed, use_cache=False).logits[0]
        la = model(input_ids=a.unsqueeze(0)).logits[0]
        lb = model(input_ids=b.unsqueeze(0)).logits[0]
    assert torch.allclose(lp[: len(a)], la, atol=1e-5)
    assert torch.allclose(lp[len(a):], lb, atol=1e-5)
    assert not torch.allclose(crossed[len(a):], lb, atol=1e-3)  # without position ids they would mix


def test_resume_continues_with_the_same_loss_curve(mws, model_cache):
    from transformers import TrainerCallback

    from bakeoff.train.sft import train_sft

    ws = mws
    ref = commit(ws, "fin-resume", sft_rows(24))
    whole = train_sft(ws, _cfg(ref, max_steps=4, save_steps=2, experiment_name="whole", lora=True, lr=1e-2))

    class Crash(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            raise KeyboardInterrupt("simulated crash right after the first checkpoint")

    with pytest.raises(KeyboardInterrupt):
        train_sft(ws, _cfg(ref, max_steps=4, save_steps=2, experiment_name="crash", lora=True, lr=1e-2),
                  callbacks=[Crash()])
    resumed = train_sft(ws, _cfg(ref, experiment_name="crash", resume=True))
    assert [Path(c).name for c in resumed.checkpoints] == ["checkpoint-2", "checkpoint-4"]
    a, sa = _history(whole, "loss")
    b, sb = _history(resumed, "loss")
    assert sa == sb == list(range(1, 5))
    assert b == pytest.approx(a, rel=1e-4)
    la, _ = _history(whole, "learning_rate")
    lb, _ = _history(resumed, "learning_rate")
    assert lb == pytest.approx(la)
    assert not any(math.isnan(x) for x in b)
