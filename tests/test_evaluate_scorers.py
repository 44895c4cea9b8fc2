"""Scorers: exact, numeric (tolerance, scale, percentages, separators, negatives),
token F1, ROUGE-L, choice, fields; versions in the cache key."""

from __future__ import annotations

import pytest

from bakeoff.evaluate.scorers import (SCORERS, parse_fields, parse_number, parse_scoring, score_one,
                                      scorer_version)
from bakeoff.workspace import BakeoffError


def s(method: str, pred: str, ref: str, **opts) -> float:
    return score_one(pred, ref, {"method": method, **opts})


def test_exact_normalises_case_space_and_punctuation():
    assert s("exact", "  Paris. ", "paris") == 1.0
    assert s("exact", "Paris, France", "paris") == 0.0
    assert s("exact", "Paris", "paris", case_sensitive=True) == 0.0


@pytest.mark.parametrize("pred,ref,opts,expected", [
    ("1.2 million", "1200000", {}, 1.0),
    ("$1,200,000", "1.2m", {}, 1.0),
    ("The total is 1,204.50.", "1204.5", {}, 1.0),
    ("(1,200)", "-1200", {}, 1.0),
    ("a loss of -1,200", "(1,200)", {}, 1.0),
    ("12%", "0.12", {}, 1.0),
    ("12 percent", "12%", {}, 1.0),
    ("12%", "0.12", {"percent_as_fraction": False}, 0.0),
    ("1,200", "1200000", {"scale": 1000}, 1.0),          # answer in the table's unit
    ("1,200,000", "1200", {"scale": 1000}, 1.0),         # reference in the table's unit
    ("1,200", "1200000", {}, 0.0),
    ("100.4", "100", {"tolerance": 0.005}, 1.0),
    ("101", "100", {"tolerance": 0.005}, 0.0),
    ("revenue grew from 100 to 120, i.e. 20%", "20%", {}, 1.0),  # last number is the result
    ("no idea", "42", {}, 0.0),
    ("0.5bn", "500,000,000", {}, 1.0),
])
def test_numeric(pred, ref, opts, expected):
    assert s("numeric", pred, ref, **opts) == expected


def test_parse_number_thousands_and_decimals():
    assert parse_number("1,234,567.89").value == pytest.approx(1234567.89)
    assert parse_number("€ 3.5k").value == pytest.approx(3500)
    assert parse_number("nothing") is None


def test_token_f1_and_rouge_l():
    assert s("token_f1", "the cat sat", "cat sat") == 1.0  # articles ignored
    assert s("token_f1", "x b c", "b c d") == pytest.approx(2 / 3)
    assert s("token_f1", "", "x") == 0.0
    # LCS of (cat sat on mat) vs (cat is on mat) = cat on mat -> 3; P=3/4, R=3/4
    assert s("rouge_l", "the cat sat on the mat", "the cat is on the mat") == pytest.approx(0.75)
    # order matters for ROUGE-L but not for F1
    assert s("token_f1", "mat on cat", "cat on mat") == 1.0
    assert s("rouge_l", "mat on cat", "cat on mat") < 1.0


def test_choice():
    opts = {"choices": ["nda", "lease", "employment"]}
    assert s("choice", "This is a Lease agreement.", "lease", **opts) == 1.0
    assert s("choice", "NDA", "lease", **opts) == 0.0
    assert s("choice", "I cannot tell", "lease", **opts) == 0.0
    # the earliest label mentioned is the answer
    assert s("choice", "lease, not an nda", "lease", **opts) == 1.0


def test_fields_json_and_lines():
    ref = '{"vendor": "ACME Corp", "total": "1,200.00", "date": "2024-03-01"}'
    assert s("fields", '```json\n{"vendor": "acme corp", "total": 1200, "date": "2024-03-01"}\n```', ref) == 1.0
    assert s("fields", "Vendor: ACME Corp\nTotal: $1,200\nDate: 2024-03-02", ref) == pytest.approx(2 / 3)
    assert s("fields", "no fields here", ref) == 0.0
    assert s("fields", "total: 1200", ref, fields=["total"]) == 1.0
    assert parse_fields("Invoice Number: 17\n- due-date: soon") == {"invoice_number": "17", "due_date": "soon"}


def test_versions_and_specs():
    assert parse_scoring(None)["method"] == "token_f1"
    assert parse_scoring('"exact"')["method"] == "exact"
    with pytest.raises(BakeoffError):
        parse_scoring('{"method": "bleu"}')
    a = scorer_version({"method": "numeric", "tolerance": 0.01})
    b = scorer_version({"method": "numeric", "tolerance": 0.02})
    assert a != b and a.startswith("numeric@" + SCORERS["numeric"].version)
    assert scorer_version({"method": "reward"}, "r1") != scorer_version({"method": "reward"}, "r2")
    with pytest.raises(BakeoffError):
        score_one("x", "y", {"method": "reward"})


def test_realistic_demo_answers():
    """Answer styles a model gives to the demo test set's references."""
    spec = {"method": "numeric", "scale": 1e6, "tolerance": 0.005, "abs_tolerance": 0.005}
    for pred in ("3.7", "€3.7 million", "3,700,000", "EUR 3.7m", "The answer is 3.70."):
        assert score_one(pred, "€3.7 million", spec) == 1.0, pred
    for pred in ("-9.8", "(9.8)", "−€9.8 million", "a decrease of -9.8 million"):
        assert score_one(pred, "€-9.8 million", spec) == 1.0, pred
    assert score_one("3.8", "€3.7 million", spec) == 0.0
    choices = {"method": "choice", "choices": ["confidentiality", "limitation_of_liability", "non_compete"]}
    assert score_one("Limitation of liability", "limitation_of_liability", choices) == 1.0
    assert score_one("This is a non-compete clause.", "non_compete", choices) == 1.0
    assert score_one("limitation_of_liability", "confidentiality", choices) == 0.0
    ref = "vendor: Nordic Coffee Roasters AB\ndocument_number: INV-2025-09324\ndate: 2025-02-03\ncurrency: SEK\ntotal: 75.7"
    fields = {"method": "fields", "fields": ["currency", "date", "document_number", "total", "vendor"]}
    pred = ('{"vendor": "Nordic Coffee Roasters AB", "document_number": "INV-2025-09324", '
            '"date": "2025-02-03", "currency": "SEK", "total": "75.70"}')
    assert score_one(pred, ref, fields) == 1.0
    assert score_one(pred.replace("09324", "09325"), ref, fields) == pytest.approx(0.8)
