"""Noise filters: named, configurable row checks, vectorized with polars.

One module per filter, its config beside it; ``base.py`` says what a filter is
(and holds the registry), ``suite.py`` runs them. The filters, in the order
they run:

=============  ================================================================
structure      chat structure: roles in a valid order, an answer at the end
empty          an empty or whitespace-only turn
length         characters (and, with a local tokenizer, tokens) out of bounds
mojibake       UTF-8 decoded as Windows-1252 and the like (ftfy), repaired
control        control / non-printable characters (C0, C1, DEL, zero-width, U+FFFD)
repetition     Gopher-style repetition, on the prose of an answer
refusal        the answer declines or disclaims the task
pii            e-mails, phones, payment cards, IBANs, each validated; redacted
echo           the answer repeats the question (off by default)
truncated      cut mid-sentence, mid-word, mid-number, in a bracket or code block
language       not in the expected language(s) (langid, offline)
=============  ================================================================

Adding a filter: a new module here with a ``FilterConfig`` subclass and a
``@register``-ed ``Filter`` subclass, imported below (the import order is the
run order), and a noise kind in ``bakeoff.demo_data.NOISE`` so the recall tests
plant and check it.

Speed: ``detect`` builds the prompt/response texts once and runs every
text-level filter once per distinct (kind, prompt, response) -- corpora repeat
rows and turns a lot -- and gathers the results back. Detection is one batch of
polars expressions (the Rust regex engine) plus numba kernels (``scan.py``, and
langid's model over all candidate texts at once in ``language.py``); Python runs
only on the few candidate rows of the checks that need a library (ftfy, a
tokenizer) and, once per distinct turn that a rewrite could change
(``Filter.may_rewrite``), to rewrite hit rows. ``benchmarks/bench_filters.py``
measures rows/s, and with ``--against-old`` the ratio to the single-module suite
this package replaced.
"""

from __future__ import annotations

from . import structure, empty, length, mojibake, control, repetition, refusal, pii, echo, truncated, language  # noqa: F401,E401  (registers, in run order)
from .base import FILTERS, Filter, FilterConfig, register
from .control import CONTROL_RE
from .language import langid_identifier
from .mojibake import ftfy_badness_re
from .pii import EMAIL_RE, classify_numbers, iban_ok, luhn_ok, redact_pii
from .refusal import REFUSAL_PATTERNS
from .repetition import prose
from .scan import byte_scan, dup_ngram_fraction, piece_stats
from .suite import FilterSuiteConfig, detect, filter_rows, load_filter_config, parse_filter_config
from bakeoff.schema import prompt_text, response_text  # noqa: F401  (for callers that build the sides)

__all__ = ["FILTERS", "Filter", "FilterConfig", "FilterSuiteConfig", "register", "filter_rows", "detect",
           "parse_filter_config", "load_filter_config", "redact_pii", "luhn_ok", "iban_ok",
           "classify_numbers", "byte_scan", "piece_stats", "dup_ngram_fraction", "prose", "CONTROL_RE",
           "EMAIL_RE", "REFUSAL_PATTERNS", "ftfy_badness_re", "langid_identifier"]
