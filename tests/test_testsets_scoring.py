"""Scoring-spec defaults by task, overrides, and slice power."""

from __future__ import annotations

import json
import math

import polars as pl
import pytest

from bakeoff.testsets.power import half_width, items_needed, slice_power
from bakeoff.testsets.scoring import (ScoringConfig, assign_scoring, default_spec, is_numeric_reference,
                                      label_sets, parse_overrides, prompt_scale)
from bakeoff.workspace import BakeoffError


def test_numeric_detection_and_scale():
    assert is_numeric_reference("$1,204.50")
    assert is_numeric_reference("12.5%")
    assert is_numeric_reference("The total is 1.2 million")
    assert not is_numeric_reference("Revenue rose from 10 to 12")  # two numbers: not one answer
    assert not is_numeric_reference("termination")
    assert prompt_scale("Selected data (in thousands of U.S. dollars)") == 1000.0
    assert prompt_scale("figures in USD millions") == 1e6
    assert prompt_scale("no scale here") == 1.0


def test_defaults_by_task():
    labels = {"classification": ["payment", "termination"]}
    spec = default_spec("arithmetic", "$38,829.6 million", "($ in millions)", labels)
    assert spec == {"method": "numeric", "scale": 1e6}  # precision from the reference, no fixed band
    assert default_spec("qa", "Paris is the capital", "", labels)["method"] == "token_f1"
    # a worked calculation: numeric on its last number; the same answer to a qa task is text
    worked = "The combined total was $19,869.1 + $18,960.5 = $38,829.6 million."
    assert default_spec("arithmetic", worked, "", labels)["method"] == "numeric"
    assert default_spec("qa", worked, "", labels)["method"] == "token_f1"
    assert default_spec("classification", "payment", "", labels) == {"method": "choice",
                                                                     "choices": ["payment", "termination"]}
    fields = default_spec("extraction", json.dumps({"vendor": "A", "total": 3}), "", labels)
    assert fields == {"method": "fields", "fields": ["total", "vendor"]}
    assert default_spec("extraction", "vendor: A\ndate: 2024-01-02", "", labels)["fields"] == ["date", "vendor"]
    assert default_spec("summarisation", "A long summary.", "", labels)["method"] == "token_f1"


def test_overrides():
    cfg = ScoringConfig(overrides=parse_overrides("qa=exact,*=rouge_l"))
    assert default_spec("qa", "42", "", {}, cfg)["method"] == "exact"
    assert default_spec("other", "text", "", {}, cfg)["method"] == "rouge_l"
    cfg = ScoringConfig(overrides=parse_overrides('{"arithmetic": {"method": "numeric", "tolerance": 0.1}}'))
    spec = default_spec("arithmetic", "5", "", {}, cfg)
    assert spec["tolerance"] == 0.1 and spec["scale"] == 1.0
    with pytest.raises(BakeoffError, match="unknown scoring method"):
        parse_overrides("qa=bleu")
    with pytest.raises(BakeoffError, match="TASK=METHOD"):
        parse_overrides("qa")


def test_assign_scoring_frame():
    rows = pl.DataFrame({
        "task": ["classification", "classification", "qa", "extraction"],
        "reference": ["payment", "termination", "1,200", '{"vendor": "X"}'],
        "prompt_text": ["clause", "clause", "Table (in thousands)", "invoice"],
    })
    labels = label_sets([rows])
    assert labels == {"classification": ["payment", "termination"]}
    out = assign_scoring(rows, labels)
    specs = [json.loads(s) for s in out["scoring"]]
    assert [s["method"] for s in specs] == ["choice", "choice", "numeric", "fields"]
    assert specs[2]["scale"] == 1000.0
    assert out.columns == [*rows.columns, "scoring"]


def test_power():
    assert half_width(100) == pytest.approx(0.098, abs=1e-3)
    assert half_width(0) == math.inf
    assert items_needed(0.1) == 97
    p = slice_power({"in-domain": 400, "far": 30, "empty": 0})
    assert not p["slices"]["in-domain"]["too_wide"]
    assert p["slices"]["far"]["too_wide"] and p["slices"]["far"]["half_width"] == pytest.approx(0.179, abs=1e-3)
    assert p["slices"]["empty"]["half_width"] is None
    assert len(p["warnings"]) == 2 and "'far' has 30 items" in p["warnings"][0]
