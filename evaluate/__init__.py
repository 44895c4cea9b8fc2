"""bakeoff.evaluate: score every checkpoint (and the base model) on the full test
set, cache outputs and scores, rank with paired statistics, report.

Modules: ``items`` (test items and their digests), ``generate`` (the Generator
protocol and the batched transformers backend), ``scorers``, ``cache`` (DuckDB
tables in the workspace catalog), ``runner`` (evaluate through the cache),
``discover`` (checkpoints of runs/experiments), ``stats``, ``rank``
(leaderboard), ``report`` (terminal, HTML, MLflow), ``imports`` (predictions made
elsewhere), ``api`` (what the CLI calls),
``fakes`` (scripted generator and tiny models for tests and benchmarks).
"""
