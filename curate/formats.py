"""Input formats: detection, validation and conversion to the shared row schema.

Records arrive as JSON object text (``bakeoff.curate.readers``). Each format is a
set of *fields* (a message list such as ``messages``/``conversations``/``chosen``,
or a string such as ``instruction``/``output``); one DuckDB query per file pulls
every field out with JSON-path functions, checks types and role order, and
builds the ``messages``/``chosen``/``rejected`` lists, all vectorized. A record
that fails a check gets a reason (the first check it fails) and goes to the
quarantine instead of the rows.

Formats (``--format``):

- ``alpaca``      instruction, input, output (+ optional system, history)  -> sft
- ``sharegpt``    conversations [{from, value}] (+ optional system)        -> sft;
                  with chosen/rejected ({from, value} or lists)            -> preference
- ``messages``    messages [{role, content}] (OpenAI)                      -> sft
- ``completion``  prompt, completion (strings or message lists)            -> sft
- ``preference``  prompt, chosen, rejected (strings or message lists)      -> preference
- ``prompt``      prompt (string or messages), or messages/conversations whose
                  trailing assistant turns are dropped                     -> prompt

``--map field=column`` renames: the canonical field (left) is read from the
input column (right, dotted for nested keys), e.g. ``--map output=answer``,
``--map domain=category``, ``--map role=speaker --map content=text`` for the
keys inside message lists.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import json

import duckdb
import polars as pl
import pyarrow as pa

from bakeoff.schema import META_FIELDS
from bakeoff.workspace import BakeoffError, sql_identifier, sql_string

FORMAT_NAMES = ("alpaca", "sharegpt", "messages", "completion", "preference", "prompt")

#: Role names seen in the wild -> bakeoff roles.
ROLE_ALIASES = {
    "system": "system", "developer": "system",
    "user": "user", "human": "user", "prompter": "user", "question": "user",
    "assistant": "assistant", "gpt": "assistant", "model": "assistant", "bot": "assistant",
    "chatgpt": "assistant", "function_call": "assistant", "answer": "assistant",
    "tool": "tool", "function": "tool", "observation": "tool", "ipython": "tool",
}

#: Which fields each format needs (for auto-detection); a field may be renamed by --map.
REQUIRED = {
    "alpaca": ("instruction", "output"),
    "sharegpt": ("conversations",),
    "messages": ("messages",),
    "completion": ("prompt", "completion"),
    "preference": ("prompt", "chosen", "rejected"),
    "prompt": ("prompt",),
}

MAPPABLE = ("instruction", "input", "output", "system", "history", "conversations", "messages",
            "prompt", "completion", "chosen", "rejected", "role", "content", "meta", *META_FIELDS)


_lit = sql_string


def json_path(column: str) -> str:
    """``a.b`` -> ``$."a"."b"`` (keys quoted so any character works)."""
    return "$" + "".join('."' + part.replace('"', '\\"') + '"' for part in column.split("."))


@dataclass
class Plan:
    """How to read one file: its format, the input column of each field, the keys
    inside message lists, and whether it is the preference variant."""

    fmt: str
    columns: dict[str, str]
    role_key: str = "role"
    content_key: str = "content"
    preference: bool = False
    present: set[str] = field(default_factory=set)   # keys most records have
    keys: list[str] = field(default_factory=list)      # every top-level key seen
    roles_as_is: bool = False  # sampled turns use bakeoff's role names (no aliases)

    def col(self, f: str) -> str:
        return self.columns.get(f, f)

    def has(self, f: str) -> bool:
        return self.col(f).split(".")[0] in self.present


# --- detection ------------------------------------------------------------------------

def key_stats(con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, int]]:
    """(number of records, {top-level key: records that have it}) of table ``recs``."""
    n, stats, _ = key_census(con)
    return n, stats


#: A record whose text matches this may have an empty key name somewhere (an
#: empty string followed by a colon is a key); ``split_bad_keys`` settles it.
EMPTY_KEY_PATTERN = r'""\s*:'


def text_matches(records: pa.Table, pattern: str) -> pa.ChunkedArray:
    """Whether each record's text (``records.raw``) matches the regex
    ``pattern``, chunked like ``records`` (so it joins the table as a column
    without a copy). For a pattern without a rare literal to look for (the
    fast tier's suspect test), polars' regex engine (Rust ``regex``) scans
    record text ~2x faster than DuckDB's RE2: 0.3 s against 0.6 s of CPU per
    million chat rows. (``\\s`` differs between the two only in characters
    that valid JSON, as record text is, has nowhere between tokens.)"""
    raw = records.column("raw")
    hits = pl.from_arrow(raw).str.contains(pattern).fill_null(False).to_arrow()  # type: ignore[union-attr]
    chunks, start = [], 0
    for chunk in raw.chunks:
        chunks.append(hits.slice(start, len(chunk)))
        start += len(chunk)
    return pa.chunked_array(chunks, type=pa.bool_())


def key_census(con: duckdb.DuckDBPyConnection) -> tuple[int, dict[str, int], int]:
    """``key_stats`` plus how many records have a duplicated or empty top-level
    key (then ``split_bad_keys`` names them), or may have an empty key in a
    nested object (a text test, ``EMPTY_KEY_PATTERN``; settled exactly there).
    One parse per record: the records are grouped by their key list (most
    records of a file share a handful of lists), and the keys are counted over
    the groups."""
    # An empty key name (at the top or in meta) cannot be addressed by a JSON
    # path: a record where one may be counts as bad too. (RE2 finds the rare
    # literal '""' itself: a contains() in front of it cost 2x the regex.)
    rows = con.execute(f"""
        WITH g AS MATERIALIZED (SELECT json_keys(raw) AS ks, regexp_matches(raw, {_lit(EMPTY_KEY_PATTERN)}) AS empty,
                                       count(*) AS c FROM recs GROUP BY ks, empty)
        SELECT 'key', k, sum(c) FROM (SELECT unnest(list_distinct(ks)) AS k, c FROM g) GROUP BY k
        UNION ALL SELECT 'n', NULL, sum(c) FROM g
        UNION ALL SELECT 'bad', NULL, sum(c) FROM g
                  WHERE empty OR len(ks) <> len(list_distinct(ks)) OR list_contains(ks, '')""").fetchall()
    stats = {k: int(c) for what, k, c in rows if what == "key" and k != ""}
    totals = {what: int(c or 0) for what, _, c in rows if what != "key"}
    return totals["n"], stats, totals["bad"]


def split_bad_keys(con: duckdb.DuckDBPyConnection, meta: str = "meta") -> tuple[pl.DataFrame, Any]:
    """(records of ``recs`` with a duplicated or empty key, with a reason; the
    other records as Arrow). JSON readers disagree on which value of a duplicated
    key wins (DuckDB keeps the first, Python the last), and an empty key name
    cannot be addressed, so such a record is quarantined, not guessed."""
    meta_keys = f"coalesce(json_keys(raw, {_lit(json_path(meta))}), [])"
    cond = (f"len(json_keys(raw)) <> len(list_distinct(json_keys(raw))) OR list_contains(json_keys(raw), '') "
            f"OR list_contains({meta_keys}, '')")
    bad = con.sql(f"SELECT source_line, raw, json_keys(raw) AS ks FROM recs WHERE {cond}").pl()
    reasons = []
    for ks in bad["ks"].to_list():  # few rows: name the first repeated key
        seen: set[str] = set()
        key = next((k for k in ks if k in seen or seen.add(k)), None)  # type: ignore[func-returns-value]
        reasons.append(f"duplicate key {key!r} in the record (which value is meant is ambiguous)"
                       if key is not None else "empty key name in the record")
    rest = con.sql(f"SELECT * FROM recs WHERE NOT ({cond})").to_arrow_table()
    return bad.select("source_line", pl.Series("reason", reasons, dtype=pl.String), "raw"), rest


def candidates(present: set[str], mapping: dict[str, str]) -> list[str]:
    def has(f: str) -> bool:
        return mapping.get(f, f).split(".")[0] in present

    found = [f for f, req in REQUIRED.items() if all(has(x) for x in req)]
    # A format whose fields are a strict subset of another match's is not a real
    # alternative (prompt+completion is not also "prompt").
    return [f for f in found
            if not any(set(REQUIRED[f]) < set(REQUIRED[g]) for g in found if g != f)]


def detect(path: str, mapping: dict[str, str], n: int, stats: dict[str, int]) -> str:
    """The format of a file's records, from the keys most records have (``stats``
    from ``key_stats``). Raises a one-line BakeoffError if none or several fit."""
    if n == 0:
        return "messages"
    present = {k for k, c in stats.items() if c * 2 >= n}
    found = candidates(present, mapping)
    if len(found) == 1:
        return found[0]
    cols = ", ".join(sorted(present)) or "none"
    if not found:
        raise BakeoffError(
            f"cannot detect the format of {path} (columns: {cols}); pass --format "
            f"{{{'|'.join(FORMAT_NAMES)}}} and/or --map field=column")
    desc = " or ".join(f"{f} ({', '.join(mapping.get(x, x) for x in REQUIRED[f])})" for f in found)
    raise BakeoffError(f"ambiguous format for {path}: looks like {desc}; pass --format to choose")


def plan_for(con: duckdb.DuckDBPyConnection, fmt: str, mapping: dict[str, str],
             n: int, stats: dict[str, int]) -> Plan:
    """Decide the message keys (from/value vs role/content) and the variant."""
    present = {k for k, c in stats.items() if c * 2 >= n} if n else set()
    plan = Plan(fmt=fmt, columns=dict(mapping), present=present, keys=sorted(stats))
    list_field = {"sharegpt": "conversations", "messages": "messages"}.get(fmt)
    if fmt == "prompt":
        for f in ("prompt", "messages", "conversations"):
            if plan.has(f):
                list_field = f
                break
        else:
            raise BakeoffError("format 'prompt' needs a 'prompt', 'messages' or 'conversations' column "
                               "(or --map prompt=COLUMN)")
        plan.columns.setdefault("_prompt_source", list_field)
    elif fmt == "preference":
        list_field = "prompt"
    elif fmt == "completion":
        list_field = "prompt"
    if fmt == "sharegpt":
        plan.preference = plan.has("chosen") and plan.has("rejected")
    # Keys inside the turns: whatever most first turns use, unless --map says.
    if list_field and ("role" not in mapping or "content" not in mapping):
        path = json_path(plan.col(list_field))
        rows = con.execute(
            f"SELECT k, count(*) FROM (SELECT unnest(json_keys(raw, {_lit(path + '[0]')})) AS k "
            f"FROM (SELECT raw FROM recs WHERE json_type(raw, {_lit(path)}) = 'ARRAY' LIMIT 2000)) GROUP BY k"
        ).fetchall()
        keys = dict(rows)
        if keys.get("from", 0) + keys.get("value", 0) > keys.get("role", 0) + keys.get("content", 0):
            plan.role_key, plan.content_key = "from", "value"
    plan.role_key = mapping.get("role", plan.role_key)
    plan.content_key = mapping.get("content", plan.content_key)
    if list_field:
        # Whether the turns' roles are spelled as bakeoff spells them (no
        # 'human'/'gpt'): then the fast tier checks the parsed turns first and
        # rebuilds only the lists that need it (``_Query.message_field``).
        path = json_path(plan.col(list_field))
        other = con.execute(
            f"SELECT count(*) FROM (SELECT unnest(json_extract_string(raw, {_lit(path + '[*].' + json_path(plan.role_key)[2:])})) AS r "
            f"FROM (SELECT raw FROM recs WHERE json_type(raw, {_lit(path)}) = 'ARRAY' LIMIT 2000)) "
            "WHERE r NOT IN ('system', 'user', 'assistant', 'tool')").fetchall()[0][0]
        plan.roles_as_is = other == 0
    # A mapped label must take effect: one that no record has would silently
    # fall back to the row's own label.
    for f in (f for f in META_FIELDS if f in mapping):
        found = con.execute(f"SELECT count(*) FROM recs WHERE json_type(raw, {_lit(json_path(mapping[f]))}) "
                            "NOT IN ('NULL')").fetchone()[0]
        if not found:
            raise BakeoffError(f"--map {f}={mapping[f]}: no record has {mapping[f]!r}; "
                               f"check the column name (keys seen: {', '.join(sorted(stats)[:8])})")
    return plan


# --- SQL building blocks ----------------------------------------------------------------
#
# Two tiers, both one SQL query over all records, nothing per row in Python:
#
# - exact: ``from_json(raw, {every key: JSON})`` gives every top-level field as JSON
#   text whose type is its first character (``jt``); a message list is parsed into
#   turns with JSON leaves (to check each is a string) and with VARCHAR leaves (the
#   values). Every check has its own reason, first failing one wins.
# - fast: one typed parse per record (message lists as LIST(STRUCT(role, content))
#   VARCHAR leaves); a regex on the raw text flags records where a checked key
#   has a non-string value (the typed parse would coerce it), and the role order
#   is checked as one comma-joined string. It only says accept or not; records
#   it does not accept go through the exact tier (``convert``).

_WS = "E' \\t\\n\\r'"


def install_macros(con: duckdb.DuckDBPyConnection) -> None:
    """``jt(json)``: the JSON type of a JSON text (NULL when absent);
    ``role_norm(text)``: a role name as bakeoff spells it."""
    con.execute(
        "CREATE OR REPLACE MACRO jt(x) AS CASE WHEN x IS NULL THEN NULL ELSE CASE left(x::VARCHAR, 1) "
        "WHEN '\"' THEN 'VARCHAR' WHEN '[' THEN 'ARRAY' WHEN '{' THEN 'OBJECT' WHEN 'n' THEN 'NULL' "
        "WHEN 't' THEN 'BOOLEAN' WHEN 'f' THEN 'BOOLEAN' ELSE 'NUMBER' END END")
    cases = " ".join(f"WHEN {_lit(k)} THEN {_lit(v)}" for k, v in ROLE_ALIASES.items())
    con.execute(f"CREATE OR REPLACE MACRO role_norm(x) AS CASE lower(trim(x)) {cases} ELSE lower(trim(x)) END")


_ident = sql_identifier


def _turn(role: str, content_sql: str) -> str:
    return f"{{'role': {_lit(role)}, 'content': {content_sql}}}"


_EMPTY = "CAST([] AS STRUCT(role VARCHAR, content VARCHAR)[])"
_NULL_MSGS = "CAST(NULL AS STRUCT(role VARCHAR, content VARCHAR)[])"
_TYPE_WORD = "CASE {t} WHEN 'VARCHAR' THEN 'a string' WHEN 'ARRAY' THEN 'a list' WHEN 'OBJECT' THEN 'an object' " \
             "WHEN 'NUMBER' THEN 'a number' WHEN 'BOOLEAN' THEN 'a boolean' ELSE lower({t}) END"


def _concat(*parts: str) -> str:
    """``list_concat`` of turn lists, leaving out the always-empty ones (a copy
    of every conversation saved when there is nothing to prepend)."""
    parts = tuple(p for p in parts if p != _EMPTY)
    if not parts:
        return _EMPTY
    return parts[0] if len(parts) == 1 else f"list_concat({', '.join(parts)})"


class _Query:
    """Collects the columns of the extraction query, stage by stage, and the
    checks in the order they are tried (the first failing one is the reason)."""

    def __init__(self, plan: Plan, fast: bool = False) -> None:
        self.plan = plan
        self.fast = fast
        self.typed: dict[str, Any] = {}  # fast mode: top-level key -> type in the first parse
        self.suspect_keys: set[str] = set()  # fast mode: keys whose non-string value sends a row to the exact path
        self.fast_ok: list[str] = []  # fast mode: conditions a message field must meet to be accepted here
        self.top: list[str] = []    # top-level keys to pull out of raw
        self.s1: list[str] = []     # from the parsed record f
        self.s2: list[str] = []     # from s1
        self.s3: list[str] = []     # from s2
        self.s4: list[str] = []     # from s3
        self.s5: list[str] = []     # from s4
        self.s6: list[str] = []     # from s5
        self.checks: list[tuple[str, str]] = []

    def access(self, column: str) -> str:
        """SQL for the JSON value of an input column (dotted = nested)."""
        head, *rest = column.split(".")
        if head not in self.top:
            self.top.append(head)
        expr = f"f.{_ident(head)}"
        if rest:
            expr = f"json_extract({expr}, {_lit(json_path('.'.join(rest)))})"
        return expr

    def string_field(self, name: str, column: str, required: bool) -> None:
        if self.fast:
            # typed VARCHAR in the first parse; a non-string value is caught by
            # the suspect regex and the row re-checked on the exact path
            self.typed[column] = "VARCHAR"
            self.suspect_keys.add(column)
            self.s1 += [f"{self.access(column)} AS {name}_s"]
            self.s2 += [f"CASE WHEN {name}_s IS NULL THEN NULL ELSE 'VARCHAR' END AS {name}_t"]
        else:
            self.s1 += [f"{self.access(column)} AS {name}_j"]
            self.s2 += [f"jt({name}_j) AS {name}_t",
                        f"json_extract_string({name}_j, '$') AS {name}_s"]
        label = _lit(column)
        if required:
            self.checks.append((f"{name}_t IS NULL OR {name}_t = 'NULL'", f"'missing field ' || {label}"))
        self.checks.append((f"{name}_t IS NOT NULL AND {name}_t NOT IN ('VARCHAR', 'NULL')",
                            f"{label} || ' must be a string, got ' || {_TYPE_WORD.format(t=f'{name}_t')}"))
        if required:
            self.checks.append((f"length(trim({name}_s, {_WS})) = 0", f"'empty ' || {label}"))

    def message_field(self, name: str, column: str, *, purpose: str, string_role: str | None) -> None:
        """A list of turns (or one turn object, or a plain string = one turn of
        ``string_role``; None: a list only). ``purpose``: 'conversation' (sft: ends with assistant),
        'prompt' (ends with a user/tool turn), 'prompt-strip' (trailing assistant
        turns dropped, see ``{name}_keep``), 'response' (assistant turns only)."""
        rk, ck = self.plan.role_key, self.plan.content_key
        label = _lit(column)
        typed_schema = json.dumps([{rk: "VARCHAR", ck: "VARCHAR"}])
        e_r, e_c = f"e.{_ident(rk)}", f"e.{_ident(ck)}"
        known = "('system', 'user', 'assistant', 'tool')"
        if self.fast:
            # Fast path: one typed parse; missing/null leaves come back NULL and
            # non-string leaves are caught by the suspect regex (exact path).
            self.suspect_keys |= {rk, ck}
            if string_role is None:
                self.typed[column] = [{rk: "VARCHAR", ck: "VARCHAR"}]
                self.s1 += [f"{self.access(column)} AS {name}_typed"]
                self.s2 += [f"CASE WHEN {name}_typed IS NULL THEN NULL ELSE 'ARRAY' END AS {name}_t"]
            else:
                self.s1 += [f"{self.access(column)} AS {name}_j"]
                self.s2 += [f"jt({name}_j) AS {name}_t", self._norm(name, string_role)]
                self.s3 += [f"from_json({name}_norm, {_lit(typed_schema)}) AS {name}_typed"]
            # Accept-or-not from the roles written as one string, checked with
            # string/regex ops, where a turn with a null or blank leaf or an
            # unknown role is written '!' (so no role name, even one holding a
            # comma, can pass for a valid order). Whatever is not accepted here
            # is judged by the exact checks. Where the file's roles are spelled
            # as bakeoff spells them (``Plan.roles_as_is``, role/content keys),
            # the string is first written from the turns as parsed: a row where
            # no turn is '!' has its messages already (rebuilding every list
            # cost ~0.3 s of CPU per million chat rows); other rows normalise
            # the roles and write the string again (1.17x the work in a file
            # where every row has an alias such as 'human', hence the sample).
            role = f"CASE WHEN {e_r} IN {known} THEN {e_r} ELSE role_norm({e_r}) END"
            normalised = f"list_transform({name}_typed, lambda e: {{'role': {role}, 'content': {e_c}}})"
            # (blank test: the first character decides unless it is whitespace)
            bad_turn = ("{r} IS NULL OR {c} IS NULL OR {r} NOT IN " + known + " OR {c} = '' "
                        "OR (ascii({c}) IN (9, 10, 11, 12, 13, 32) AND regexp_full_match({c}, '\\s*'))")

            def role_string(turns: str, r: str, c: str, var: str) -> str:
                return (f"',' || array_to_string(list_transform({turns}, lambda {var}: CASE WHEN "
                        f"{bad_turn.format(r=r, c=c)} THEN '!' ELSE {r} END), ',') || ','")
            if (rk, ck) == ("role", "content") and self.plan.roles_as_is:
                self.s4 += [f"{role_string(f'{name}_typed', e_r, e_c, 'e')} AS {name}_rs0"]
                self.s5 += [f"CASE WHEN contains({name}_rs0, '!') THEN {normalised} ELSE {name}_typed END AS {name}_msgs"]
                self.s6 += [f"CASE WHEN contains({name}_rs0, '!') THEN {role_string(f'{name}_msgs', 'm.role', 'm.content', 'm')} "
                            f"ELSE {name}_rs0 END AS {name}_rs"]
            else:
                self.s4 += [f"{normalised} AS {name}_msgs"]
                self.s5 += [f"{role_string(f'{name}_msgs', 'm.role', 'm.content', 'm')} AS {name}_rs"]
            rs = f"{name}_rs"
            shape = {
                "conversation": "(,system)*,user(,(user|assistant|tool))*,assistant,",
                "prompt": "(,system)*,user((,(user|assistant|tool))*,(user|tool))?,",
                "prompt-strip": "(,system)*,user(,(user|assistant|tool))*,",
                "response": "(,assistant)+,",
            }[purpose]
            ok = f"{name}_typed IS NOT NULL AND len({name}_typed) > 0 AND regexp_full_match({rs}, {_lit(shape)})"
            if purpose != "response":
                ok += f" AND NOT contains({rs}, ',user,user,') AND NOT contains({rs}, ',assistant,assistant,')"
            self.fast_ok.append(f"({ok})")
            if purpose == "prompt-strip":
                # the exact tier checks what is left after the strip
                keep = (f"len({name}_typed) + 1 - coalesce(list_position(list_reverse(list_transform({name}_msgs, "
                        f"lambda x: x.role <> 'assistant')), true), len({name}_typed) + 1)")
                self.fast_ok.append(f"({keep} > 0 AND {name}_msgs[{keep}].role IN ('user', 'tool'))")
            return
        else:
            self.s1 += [f"{self.access(column)} AS {name}_j"]
            self.s2 += [f"jt({name}_j) AS {name}_t", self._norm(name, string_role)]
            # Two parses of the turns: with JSON leaves (to check each leaf is a
            # string) and with VARCHAR leaves (the values); per-leaf
            # json_extract_string measured ~2x slower.
            self.s3 += [
                f"from_json({name}_norm, {_lit(json.dumps([{rk: 'JSON', ck: 'JSON'}]))}) AS {name}_turns",
                f"from_json({name}_norm, {_lit(typed_schema)}) AS {name}_typed",
            ]
            self.s4 += [
                f"list_position(list_transform({name}_turns, lambda e: e IS NULL OR ({e_r} IS NULL AND {e_c} IS NULL)), true) AS {name}_nonobj",
                f"list_position(list_transform({name}_turns, lambda e: NOT coalesce(starts_with({e_r}::VARCHAR, '\"'), false)), true) AS {name}_badrole",
                f"list_position(list_transform({name}_turns, lambda e: NOT coalesce(starts_with({e_c}::VARCHAR, '\"'), false)), true) AS {name}_badcontent",
                f"list_transform({name}_typed, lambda e: CASE WHEN {e_r} IN {known} THEN {e_r} ELSE role_norm({e_r}) END) AS {name}_r",
                f"list_transform({name}_typed, lambda e: {e_c}) AS {name}_c",
            ]
        r, c = f"{name}_r", f"{name}_c"
        allowed = "('ARRAY', 'OBJECT', 'VARCHAR')" if string_role else "('ARRAY')"
        self.checks += [
            (f"{name}_t IS NULL OR {name}_t = 'NULL'", f"'missing field ' || {label}"),
            (f"{name}_t NOT IN {allowed}",
             f"{label} || ' must be a list of turns, got ' || {_TYPE_WORD.format(t=f'{name}_t')}"),
            (f"len({name}_typed) = 0", f"'empty ' || {label}"),
            (f"{name}_nonobj IS NOT NULL", f"{label} || ' turn ' || {name}_nonobj || ' is not a turn object'"),
            (f"{name}_badrole IS NOT NULL",
             f"{label} || ' turn ' || {name}_badrole || ' has no string ' || {_lit(repr(rk))}"),
            (f"{name}_badcontent IS NOT NULL",
             f"{label} || ' turn ' || {name}_badcontent || ' has no string ' || {_lit(repr(ck))}"),
            (f"len(list_filter({r}, lambda x: x NOT IN ('system', 'user', 'assistant', 'tool'))) > 0",
             f"{label} || ' has an unknown role ''' || list_filter({r}, lambda x: x NOT IN ('system', 'user', 'assistant', 'tool'))[1] || ''''"),
            (f"list_position(list_transform({c}, lambda x: regexp_full_match(x, '\\s*')), true) IS NOT NULL",
             f"'empty turn in ' || {label} || ' (turn ' || list_position(list_transform({c}, lambda x: regexp_full_match(x, '\\s*')), true) "
             f"|| ', ' || {r}[list_position(list_transform({c}, lambda x: regexp_full_match(x, '\\s*')), true)] || ')'"),
        ]
        if purpose == "response":
            self.checks.append((f"len(list_filter({r}, lambda x: x <> 'assistant')) > 0",
                                f"{label} || ' must hold assistant turns only, has a ' || "
                                f"list_filter({r}, lambda x: x <> 'assistant')[1] || ' turn'"))
            return
        # Role order. s = the non-system turns; system turns may only lead.
        nsys = f"len(list_filter({r}, lambda x: x = 'system'))"
        s = f"list_filter({r}, lambda x: x <> 'system')"
        pairs = f"list_zip({s}[1:-2], {s}[2:])"
        dup = "lambda p: p[1] = p[2] AND p[1] IN ('user', 'assistant')"
        self.checks += [
            (f"len(list_filter({r}[1:{nsys}], lambda x: x <> 'system')) > 0",
             f"'system turn after the start of ' || {label}"),
            (f"len({s}) = 0", f"{label} || ' has only system turns'"),
            (f"{s}[1] <> 'user'",
             f"{label} || ' starts with ' || CASE {s}[1] WHEN 'assistant' THEN 'an assistant' ELSE 'a ' || {s}[1] END "
             f"|| ' turn (expected a user turn first)'"),
            (f"coalesce(list_bool_or(list_transform({pairs}, {dup})), false)",
             f"'two ' || list_filter({pairs}, {dup})[1][1] || ' turns in a row in ' || {label}"),
        ]
        if purpose == "conversation":
            self.checks.append((f"{r}[-1] <> 'assistant'",
                                f"{label} || ' does not end with an assistant turn (ends with ' || {r}[-1] || ')'"))
        elif purpose == "prompt":
            self.checks.append((f"{r}[-1] NOT IN ('user', 'tool')",
                                f"'prompt ' || {label} || ' does not end with a user turn (ends with ' || {r}[-1] || ')'"))
        elif purpose == "prompt-strip":
            # Trailing assistant turns (an sft row's answer) are dropped; what is
            # left must end with a user turn.
            keep = (f"len({r}) + 1 - coalesce(list_position(list_reverse(list_transform({r}, "
                    f"lambda x: x <> 'assistant')), true), len({r}) + 1)")
            self.checks += [
                (f"{keep} = 0", f"{label} || ' has only assistant turns'"),
                (f"{r}[{keep}] NOT IN ('user', 'tool')",
                 f"'prompt ' || {label} || ' does not end with a user turn (ends with ' || {r}[{keep}] || ')'"),
            ]

    def _norm(self, name: str, string_role: str | None) -> str:
        """The field as a JSON list of turns: a list as is; one turn object or a
        plain string (a turn of ``string_role``) wrapped, where allowed."""
        rk, ck = self.plan.role_key, self.plan.content_key
        return (f"CASE jt({name}_j) WHEN 'ARRAY' THEN {name}_j "
                + (f"WHEN 'OBJECT' THEN json_array({name}_j) "
                   f"WHEN 'VARCHAR' THEN json_array(json_object({_lit(rk)}, {_lit(string_role)}, {_lit(ck)}, {name}_j)) "
                   if string_role else "")
                + f"END AS {name}_norm")

    def turns(self, name: str, keep: str | None = None) -> str:
        """The validated turns of a message field as LIST(STRUCT(role, content))."""
        if self.fast:
            return f"{name}_msgs" if keep is None else f"({name}_msgs)[1:{keep}]"
        r, c = f"{name}_r", f"{name}_c"
        n = keep or f"len({r})"
        return f"list_transform(range(1, {n} + 1), lambda i: {{'role': {r}[i], 'content': {c}[i]}})"


# --- conversion ----------------------------------------------------------------------------

def _key_regex(key: str) -> str:
    """A regex for ``key`` as it may be written in JSON text: ``"`` and ``\\``
    and control characters escaped, other characters as themselves or, beyond
    ASCII, as ``\\uXXXX`` (what ``ensure_ascii`` writers produce); in the
    syntax DuckDB's RE2 and polars' Rust regex share (``\\x{..}`` for every
    ASCII character but letters, digits and ``_``)."""
    def lit(text: str) -> str:
        return "".join(c if c.isalnum() and c.isascii() or c == "_" else f"\\x{{{ord(c):02x}}}" for c in text)

    def hex4(text: str) -> str:  # \\uXXXX, hex digits in either case
        return "".join(f"[{d.lower()}{d.upper()}]" if d.isalpha() else d for d in text)

    out = []
    for c in key:
        plain = json.dumps(c, ensure_ascii=False)[1:-1]  # the char, or its short escape
        if ord(c) < 128:
            out.append(lit(plain))
        else:  # the char itself (its UTF-8 bytes) or \\uXXXX (a surrogate pair beyond the BMP)
            escaped = json.dumps(c)[1:-1]
            out.append(f"(?:{c}|" + "".join(lit("\\u") + hex4(u) for u in escaped.split("\\u")[1:]) + ")")
    return "".join(out)


def suspect_pattern(keys: set[str]) -> str:
    """A regex matching record text where one of ``keys`` has a value that is
    not a string or null (valid JSON: after the colon, only whitespace, then
    the value)."""
    alternatives = "|".join(_key_regex(k) for k in sorted(keys))
    return '"(?:' + alternatives + r')"\s*:\s*[^"\sn]'


def fast_suspect_pattern(plan: Plan) -> str | None:
    """The fast tier's suspect regex for ``plan`` (None: it has none)."""
    return _build_query(plan, fast=True)[1]


def build_query(plan: Plan, fast: bool = False, source: str = "recs", sus_column: str | None = None) -> str | None:
    """The extraction SQL for ``plan`` over table ``source``. Result columns:
    source_line, raw, reason, kind, messages, chosen, rejected, domain, doctype,
    task, tags, extra.

    ``fast``: the common-case query (one typed parse per record). Its reason is
    only "accept or not": rows it does not accept go through the exact query,
    which names the precise reason. None if the plan has no fast form (nested
    --map columns). ``sus_column``: a boolean column of ``source`` holding the
    fast tier's suspect test (``fast_suspect_pattern``), computed outside
    DuckDB; None: the query runs the regex itself."""
    return _build_query(plan, fast, source, sus_column)[0]


def _build_query(plan: Plan, fast: bool = False, source: str = "recs",
                 sus_column: str | None = None) -> tuple[str | None, str | None]:
    """``build_query`` and the fast tier's suspect regex (None when unused)."""
    if fast and any("." in c for c in plan.columns.values()):
        return None, None
    q = _Query(plan, fast)
    fmt = plan.fmt
    chosen_sql = rejected_sql = _NULL_MSGS
    system_sql = _EMPTY

    def optional_system() -> str:
        if not plan.has("system"):
            return _EMPTY
        q.string_field("sys", plan.col("system"), required=False)
        return (f"CASE WHEN length(trim(coalesce(sys_s, ''), {_WS})) > 0 "
                f"THEN [{_turn('system', 'sys_s')}] ELSE {_EMPTY} END")

    if fmt == "alpaca":
        q.string_field("ins", plan.col("instruction"), required=True)
        q.string_field("inp", plan.col("input"), required=False)
        q.string_field("out", plan.col("output"), required=True)
        system_sql = optional_system()
        hist = _EMPTY
        if plan.has("history"):
            hcol = plan.col("history")
            q.s1.append(f"{q.access(hcol)} AS hist_j")
            q.s2.append("jt(hist_j) AS hist_t")
            q.s2.append("CASE WHEN jt(hist_j) = 'ARRAY' THEN from_json(hist_j, '[[\"JSON\"]]') END AS hist_p")
            q.checks.append((
                "hist_t NOT IN ('ARRAY', 'NULL') OR list_bool_or(list_transform(hist_p, lambda p: p IS NULL OR len(p) <> 2 "
                "OR jt(p[1]) IS DISTINCT FROM 'VARCHAR' OR jt(p[2]) IS DISTINCT FROM 'VARCHAR'))",
                f"{_lit(hcol)} || ' must be a list of [instruction, response] string pairs'"))
            hist = (f"CASE WHEN hist_t = 'ARRAY' THEN flatten(list_transform(hist_p, lambda p: "
                    f"[{_turn('user', 'json_extract_string(p[1], $$$$$$)')}, "
                    f"{_turn('assistant', 'json_extract_string(p[2], $$$$$$)')}])) ELSE {_EMPTY} END").replace("$$$$$$", "'$'")
        user = (f"CASE WHEN length(trim(coalesce(inp_s, ''), {_WS})) > 0 "
                "THEN ins_s || E'\\n\\n' || inp_s ELSE ins_s END")
        messages_sql = _concat(system_sql, hist, f"[{_turn('user', user)}, {_turn('assistant', 'out_s')}]")
        kind = "sft"
    elif fmt in ("sharegpt", "messages"):
        col = plan.col("conversations" if fmt == "sharegpt" else "messages")
        system_sql = optional_system() if fmt == "sharegpt" else _EMPTY
        if plan.preference:
            q.message_field("conv", col, purpose="prompt", string_role=None)
            for nm, f in (("ch", "chosen"), ("rj", "rejected")):
                q.message_field(nm, plan.col(f), purpose="response", string_role="assistant")
            chosen_sql, rejected_sql = q.turns("ch"), q.turns("rj")
            kind = "preference"
        else:
            q.message_field("conv", col, purpose="conversation", string_role=None)
            kind = "sft"
        messages_sql = _concat(system_sql, q.turns('conv'))
    elif fmt == "completion":
        q.message_field("pr", plan.col("prompt"), purpose="prompt", string_role="user")
        q.message_field("co", plan.col("completion"), purpose="response", string_role="assistant")
        system_sql = optional_system()
        messages_sql = _concat(system_sql, q.turns('pr'), q.turns('co'))
        kind = "sft"
    elif fmt == "preference":
        q.message_field("pr", plan.col("prompt"), purpose="prompt", string_role="user")
        for nm, f in (("ch", "chosen"), ("rj", "rejected")):
            q.message_field(nm, plan.col(f), purpose="response", string_role="assistant")
        system_sql = optional_system()
        messages_sql = _concat(system_sql, q.turns('pr'))
        chosen_sql, rejected_sql = q.turns("ch"), q.turns("rj")
        kind = "preference"
    elif fmt == "prompt":
        col = plan.col(plan.columns.get("_prompt_source", "prompt"))
        q.message_field("pr", col, purpose="prompt-strip", string_role="user")
        system_sql = optional_system()
        roles = "list_transform(pr_msgs, lambda x: x.role)" if fast else "pr_r"
        keep = (f"(len({roles}) + 1 - coalesce(list_position(list_reverse(list_transform({roles}, "
                f"lambda x: x <> 'assistant')), true), len({roles}) + 1))")
        messages_sql = _concat(system_sql, q.turns('pr', keep))
        kind = "prompt"
    else:
        raise BakeoffError(f"unknown format {fmt!r}; expected auto or one of {', '.join(FORMAT_NAMES)}")

    # --- labels: meta.<label>, else a top-level column of that name (or --map) ------------
    meta_col = plan.col("meta")
    q.s1.append(f"{q.access(meta_col)} AS meta_j")
    q.s2.append("jt(meta_j) AS meta_t")
    # Fast tier, labels read from meta only (no top-level or --map label column):
    # the string labels are typed VARCHAR in the meta parse, and a non-string
    # value sends the row to the exact tier (suspect keys), which saves the JSON
    # type tests and extraction per label on every row.
    typed_labels = fast and not any(plan.has(f) or f in plan.columns for f in META_FIELDS if f != "tags")
    meta_types = {f: "VARCHAR" if typed_labels and f != "tags" else "JSON" for f in META_FIELDS}
    q.s2.append("CASE WHEN jt(meta_j) = 'OBJECT' THEN from_json(meta_j, "
                + _lit(json.dumps(meta_types)) + ") END AS meta_f")
    q.checks.append(("meta_t NOT IN ('OBJECT', 'NULL')",
                     f"{_lit(meta_col)} || ' must be an object, got ' || {_TYPE_WORD.format(t='meta_t')}"))
    labels = {}
    for f in META_FIELDS:
        if meta_types[f] == "VARCHAR":
            q.suspect_keys.add(f)
            labels[f] = f"nullif(trim(meta_f.{f}), '')"
            continue
        top = plan.col(f)
        top_sql = q.access(top) if (plan.has(f) or f in plan.columns) else "NULL::JSON"
        # A label the user mapped (--map task=meta.answer_type) wins over the
        # row's own meta.<label>: the mapping is the user saying where it lives.
        first, then = (top_sql, f"meta_f.{f}") if f in plan.columns else (f"meta_f.{f}", top_sql)
        q.s3.append(f"coalesce({first}, {then}) AS {f}_j")
        lt = f"jt({f}_j)"
        if f == "tags":
            q.checks.append((f"{lt} NOT IN ('ARRAY', 'VARCHAR', 'NULL')", "'tags must be a list of strings or a string'"))
            q.checks.append((f"{lt} = 'ARRAY' AND len(list_filter(json_type({f}_j, '$[*]'), lambda x: x <> 'VARCHAR')) > 0",
                             "'tags must be a list of strings'"))
            labels[f] = (f"CASE {lt} WHEN 'ARRAY' THEN json_extract_string({f}_j, '$[*]') "
                         f"WHEN 'VARCHAR' THEN [json_extract_string({f}_j, '$')] END")
        else:
            q.checks.append((f"{lt} IN ('ARRAY', 'OBJECT')",
                             f"{_lit(f)} || ' label must be a string, got ' || {_TYPE_WORD.format(t=lt)}"))
            labels[f] = f"CASE WHEN {lt} <> 'NULL' THEN nullif(trim(json_extract_string({f}_j, '$')), '') END"

    # --- extra: every top-level input key no field consumed, and unknown meta keys ---------
    unknown = [k for k in plan.keys if k not in q.top]
    entries = ", ".join(f"{{'k': {_lit(k)}, 'v': f.{_ident(k)}}}" for k in unknown)
    for k in unknown:
        q.top.append(k)
    meta_known = "(" + ", ".join(_lit(k) for k in META_FIELDS) + ")"
    q.s2.append(
        f"CASE WHEN jt(meta_j) = 'OBJECT' THEN list_transform(list_filter(json_keys(meta_j), lambda k: k NOT IN {meta_known}), "
        "lambda k: {'k': k, 'v': json_extract(meta_j, '$.\"' || replace(k, '\"', '\\\"') || '\"')}) END AS xm")
    q.s1.append(f"list_filter([{entries}], lambda e: e.v IS NOT NULL) AS xt" if unknown
                else "CAST([] AS STRUCT(k VARCHAR, v JSON)[]) AS xt")
    extra_sql = ("CASE WHEN len(xt) = 0 AND coalesce(len(xm), 0) = 0 THEN NULL ELSE CAST(to_json(map_from_entries("
                 "list_concat(xt, CASE WHEN len(xm) > 0 THEN [{'k': 'meta', 'v': to_json(map_from_entries(xm))}] "
                 "ELSE [] END))) AS VARCHAR) END")

    schema = _lit(json.dumps({k: q.typed.get(k, "JSON") for k in q.top}))
    checks = list(q.checks)
    sus = "false"
    pattern = suspect_pattern(q.suspect_keys) if fast and q.suspect_keys else None
    if pattern is not None:
        # A string-typed key whose value is not a string (number, bool, list,
        # object) would be coerced by the typed parse: such rows take the exact path.
        sus = _ident(sus_column) if sus_column else f"regexp_matches(raw, {_lit(pattern)})"
        checks.insert(0, ("sus", "'suspect'"))
    if fast:
        checks += [(f"NOT coalesce({ok}, false)", "'not accepted by the fast tier'") for ok in q.fast_ok]
    reason = "CASE " + " ".join(f"WHEN {cond} THEN {why}" for cond, why in checks) + " END"

    def accepted(sql: str) -> str:
        # The exact tier builds the lists of accepted rows only. The fast tier's
        # rejected rows are discarded (re-run on the exact tier), and its turn
        # lists are already built for every row, so the guard (which copies
        # every list) is skipped there.
        return sql if fast else f"CASE WHEN reason IS NULL THEN {sql} END"
    return f"""
    WITH p AS (SELECT source_line, raw, from_json(raw, {schema}) AS f, {sus} AS sus FROM {source}),
         s1 AS (SELECT source_line, raw, f, sus, {', '.join(q.s1)} FROM p),
         s2 AS (SELECT *, {', '.join(q.s2 or ['NULL AS _s2'])} FROM s1),
         s3 AS (SELECT *, {', '.join(q.s3 or ['NULL AS _s3'])} FROM s2),
         s4 AS (SELECT *, {', '.join(q.s4 or ['NULL AS _s4'])} FROM s3),
         s5 AS (SELECT *, {', '.join(q.s5 or ['NULL AS _s5'])} FROM s4),
         s6 AS (SELECT *, {', '.join(q.s6 or ['NULL AS _s6'])} FROM s5),
         r AS (SELECT *, {reason} AS reason FROM s6)
    SELECT source_line, CASE WHEN reason IS NOT NULL THEN raw END AS raw, reason,
           {_lit(kind)} AS kind,
           {accepted(messages_sql)} AS messages,
           {accepted(chosen_sql)} AS chosen,
           {accepted(rejected_sql)} AS rejected,
           {labels['domain']} AS domain, {labels['doctype']} AS doctype, {labels['task']} AS task,
           {labels['tags']} AS tags,
           CASE WHEN reason IS NULL THEN {extra_sql} END AS extra
    FROM r
    """, pattern


#: Up to this many records, the exact tier's query skips DuckDB's optimizer and
#: its relation layer (``_small_query``): for the few records a batch sends it
#: (~70 per 32 MB of a file with 0.1 % bad lines), planning the query was most
#: of its cost: the exact tier took 64 ms of CPU per batch, 38 ms without them.
#: (On a whole batch the optimizer halves the query's time.)
SMALL_REDO = 1_000


def _small_query(con: duckdb.DuckDBPyConnection, sql: str, schema: pl.Schema) -> pl.DataFrame:
    """``sql``'s few result rows, planned without the optimizer and fetched as
    Python rows (DuckDB's cursor offers Arrow only with a warning about the
    extra copy; for a few rows the rows cost less than binding the query twice
    in the relation layer), in ``schema``."""
    con.execute("PRAGMA disable_optimizer")
    try:
        rows = con.execute(sql).fetchall()
    finally:
        con.execute("PRAGMA enable_optimizer")
    return pl.DataFrame(rows, schema=schema, orient="row")


def convert(con: duckdb.DuckDBPyConnection, plan: Plan,
            records: pa.Table | None = None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows without ids, rejected records with reason) for table ``recs``.

    Two tiers: the fast query accepts the clean majority with one typed parse per
    record; the records it does not accept (bad or merely unusual, e.g. a
    non-string value somewhere under a checked key) are re-run through the exact
    query, which decides and names the reason. Both share the checks, so a record
    the fast tier accepts is one the exact tier would accept. ``records``: the
    Arrow table registered as ``recs``; given, the fast tier's suspect regex
    runs in polars (``text_matches``: ~0.3 s of CPU less per million rows).
    (Ingest runs the two tiers in two threads: ``fast_tier``, ``exact_tier``.)"""
    return exact_tier(con, plan, *fast_tier(con, plan, records))


def fast_tier(con: duckdb.DuckDBPyConnection, plan: Plan,
              records: pa.Table | None = None) -> tuple[pl.DataFrame, pl.DataFrame | None]:
    """(the rows the fast tier accepted, the records it did not: source_line and
    raw, for ``exact_tier``) of table ``recs``. A plan without a fast tier runs
    the exact query on every record: (its output, None)."""
    install_macros(con)
    pattern = fast_suspect_pattern(plan) if records is not None else None
    if pattern is not None:
        con.register("recs_sus", records.select(["source_line", "raw"]).append_column(  # type: ignore[union-attr]
            "sus", text_matches(records, pattern)))  # type: ignore[arg-type]
        fast_sql = build_query(plan, fast=True, source="recs_sus", sus_column="sus")
    else:
        fast_sql = build_query(plan, fast=True)
    if fast_sql is None:
        return con.sql(build_query(plan)).pl(), None
    first = con.sql(fast_sql).pl()
    if pattern is not None:
        con.unregister("recs_sus")
    # The records to judge again, with their text: the fast tier keeps it for
    # the rows it did not accept (not looked up by line: records of a JSON
    # array can share a line).
    redo = first.filter(pl.col("reason").is_not_null()).select("source_line", "raw")
    if not redo.height:
        return first, redo
    return first.filter(pl.col("reason").is_null()), redo


def exact_tier(con: duckdb.DuckDBPyConnection, plan: Plan, first: pl.DataFrame,
               redo: pl.DataFrame | None) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(rows without ids, rejected records with reason): ``first`` (the fast
    tier's accepted rows) with the ``redo`` records the exact query accepts, in
    line order; ``redo`` None: ``first`` is the exact query's output already."""
    if redo is None:
        bad = first.filter(pl.col("reason").is_not_null()).select("source_line", "reason", "raw")
        return first.filter(pl.col("reason").is_null()).drop("reason", "raw"), bad
    if not redo.height:
        return first.drop("reason", "raw"), first.head(0).select("source_line", "reason", "raw")
    install_macros(con)
    con.register("recs_redo", redo)
    exact = _small_query(con, build_query(plan, source="recs_redo"), first.schema) \
        if redo.height <= SMALL_REDO else con.sql(build_query(plan, source="recs_redo")).pl()
    con.unregister("recs_redo")
    out = first
    late = exact.filter(pl.col("reason").is_null())
    if late.height:  # re-sorting copies every row: only when the exact tier accepted some
        out = pl.concat([out, late], how="vertical_relaxed").sort("source_line")
    bad = exact.filter(pl.col("reason").is_not_null()).select("source_line", "reason", "raw")
    return out.drop("reason", "raw"), bad.sort("source_line")
