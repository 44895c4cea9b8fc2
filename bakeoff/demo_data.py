"""Demo data: a realistic, deterministic, multi-domain raw corpus with planted noise.

``generate(out_dir, seed, scale)`` writes raw files in the formats people actually
have (OpenAI messages JSONL, Alpaca JSON, ShareGPT JSONL.gz, prompt/completion CSV,
ShareGPT preference JSON) plus ``ground_truth.jsonl``: one record per planted defect
(and per deliberate decoy), so tests can measure what the curation steps catch.
``make_demo_workspace(ws, seed, scale)`` generates and ingests it all.

Domains (shared with every stage, see the contract in the README):

- ``finance-tables`` (doctype ``table``, tasks ``qa`` and ``arithmetic``): a small
  markdown table of line items by year + a question; answers look things up or do
  arithmetic (changes, growth rates, sums, averages, ratios) with units and scale.
  This is the training domain (dataset ``fin-train``).
- ``invoices`` (doctype ``invoice`` | ``receipt``, task ``extraction``): the adjacent
  domain; answers are a JSON object or ``field: value`` lines.
- ``contracts`` (doctype ``contract``, task ``classification``): a far domain;
  a clause -> one label of a fixed set.

The held-out pool (``pool``) is written by separate generators with their own
templates, line items and company names, so a test set drawn from it is not
the training data reworded; a few rows are deliberate near-copies of training rows
(kind ``leak`` in the ground truth) for the decontamination step to find.

Why hand-written generators and not a faker library: the content must be
consistent (answers computed from the tables, invoice totals from the line items),
deterministic for a seed across platforms, and offline.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

#: Labels of the contract-clause classification task.
CONTRACT_LABELS = (
    "termination", "confidentiality", "indemnification", "limitation_of_liability",
    "governing_law", "payment_terms", "force_majeure", "assignment", "non_compete", "warranty",
)

# The kinds of planted defects: NOISE (below, "noise: one table ...").

# File names (keys of ``generate``'s result).
FILES = {
    "fin-train": "fin_train.jsonl",
    "pool-finance": "pool_finance.json",
    "pool-invoices": "pool_invoices.jsonl.gz",
    "pool-contracts": "pool_contracts.csv",
    "prefs": "prefs.json",
    "prompts": "prompts.jsonl",
    "ground-truth": "ground_truth.jsonl",
}

#: Which raw files make up which dataset.
DATASETS = {
    "fin-train": ("fin-train",),
    "pool": ("pool-finance", "pool-invoices", "pool-contracts"),
    "prefs": ("prefs",),
    "prompts": ("prompts",),
}

# --- shared vocabulary -----------------------------------------------------------

_TRAIN_COMPANIES = [
    "Northwind Holdings", "Brightwater Industries", "Calder & Finch", "Helios Components",
    "Redstone Logistics", "Maple Ridge Foods", "Quantum Harbor Systems", "Silverline Retail",
    "Granite Peak Energy", "Bluefield Pharmaceuticals", "Oakmont Capital", "Vantage Aerospace",
    "Crescent Textiles", "Ironbridge Manufacturing", "Lumen Software", "Pinecrest Healthcare",
    "Sterling Marine", "Westbrook Media", "Summit Agritech", "Harborview Hotels",
    "Cobalt Mining Corp.", "Evergreen Utilities", "Falcon Freight", "Nimbus Networks",
    "Orchard Beverages", "Pioneer Semiconductors", "Riverside Chemicals", "Tidewater Insurance",
    "Zenith Robotics", "Aurora Biotech",
]
_POOL_COMPANIES = [
    "Kestrel Dynamics", "Marlowe Group", "Juniper Foods plc", "Trident Shipping",
    "Ashgrove Telecom", "Beacon Hill Realty", "Copperleaf Apparel", "Driftwood Games",
    "Elmstead Paper", "Foxglove Cosmetics", "Glenmore Distillers", "Hawthorne Rail",
    "Ivory Coast Cocoa Co.", "Jasper Outdoor", "Kingsway Motors", "Larkspur Clinics",
]
_TRAIN_ITEMS = [
    ("Revenue", 800, 9000), ("Cost of revenue", 300, 5000), ("Gross profit", 200, 4000),
    ("Operating expenses", 150, 2500), ("Operating income", 50, 1500), ("Net income", 20, 1200),
    ("Research and development", 30, 900), ("Selling, general and administrative", 60, 1100),
    ("Cash and cash equivalents", 100, 3000), ("Total assets", 2000, 25000),
    ("Total liabilities", 900, 15000), ("Capital expenditures", 40, 800),
    ("Interest expense", 5, 200), ("Income tax expense", 10, 400),
    ("Depreciation and amortization", 20, 600),
]
_POOL_ITEMS = [
    ("Subscription revenue", 200, 4000), ("Services revenue", 80, 1500),
    ("Segment operating profit", 40, 900), ("Free cash flow", 30, 800), ("Inventories", 100, 2000),
    ("Accounts receivable, net", 90, 1800), ("Long-term debt", 300, 6000),
    ("Deferred revenue", 50, 1200), ("Adjusted EBITDA", 100, 2500),
    ("Share-based compensation", 10, 300), ("Goodwill", 200, 5000), ("Restructuring charges", 5, 150),
]
_SCALES = [("millions", "million"), ("thousands", "thousand")]
_CURRENCIES = [("$", "U.S. dollars"), ("$", "U.S. dollars"), ("$", "U.S. dollars"), ("€", "euros")]

_FIRST = ["james", "maria", "li", "fatima", "olga", "daniel", "aisha", "tom", "sofia", "kenji",
          "priya", "lucas", "emma", "noah", "chloe", "ravi"]
_LAST = ["miller", "garcia", "chen", "okafor", "novak", "schmidt", "haddad", "brown", "rossi",
         "tanaka", "sharma", "dubois", "wilson", "kim", "ivanova", "patel"]
_MAIL_DOMAINS = ["gmail.com", "outlook.com", "yahoo.com", "proton.me", "fastmail.fm"]


def _fmt(v: float, decimals: int = 1) -> str:
    return f"{v:,.{decimals}f}"


def _paragraph_split(msg: dict) -> list[str]:
    """A user turn as (context, last paragraph), other turns whole."""
    import re

    m = re.match(r"(?s)^(.*\S)\s*\n[ \t]*\n\s*(\S.*)$", msg["content"]) if msg["role"] == "user" else None
    return [m.group(1), m.group(2)] if m else [msg["content"]]


def _word_jaccard3(a: str, b: str) -> float:
    """Jaccard of word 3-gram sets (lowercased, whitespace tokens)."""
    def sh(t: str) -> set[tuple[str, ...]]:
        w = t.lower().split()
        return {tuple(w[i:i + 3]) for i in range(max(len(w) - 2, 1))}
    sa, sb = sh(a), sh(b)
    return len(sa & sb) / len(sa | sb) if sa | sb else 1.0


def _conv_text(messages: list[dict]) -> str:
    return "\n".join(m["content"] for m in messages)


# --- finance tables --------------------------------------------------------------

@dataclass
class _Table:
    company: str
    years: list[int]
    items: dict[str, list[float]]   # item -> values aligned with years
    scale: tuple[str, str]
    currency: tuple[str, str]

    def markdown(self, descending: bool = False, label: str | None = None) -> str:
        order = list(range(len(self.years)))
        if descending:
            order.reverse()
        head = label or f"({self.currency[0]} in {self.scale[0]})"
        lines = ["| " + head + " | " + " | ".join(str(self.years[i]) for i in order) + " |",
                 "|---" * (len(order) + 1) + "|"]
        for item, vals in self.items.items():
            lines.append(f"| {item} | " + " | ".join(_fmt(vals[i]) for i in order) + " |")
        return "\n".join(lines)


def _make_table(rng: random.Random, companies: list[str], items: list[tuple[str, int, int]],
                small: bool = False) -> _Table:
    """``small``: 2-3 line items, so a prompt and its answer fit in 192 tokens."""
    n_years = rng.choice([2, 3, 3])
    last = rng.randint(2016, 2024)
    years = list(range(last - n_years + 1, last + 1))
    chosen = rng.sample(items, rng.randint(2, 3) if small else rng.randint(3, 5))
    values: dict[str, list[float]] = {}
    for name, lo, hi in chosen:
        base = rng.uniform(lo, hi)
        vals = [base]
        for _ in years[1:]:
            vals.append(vals[-1] * rng.uniform(0.82, 1.28))
        values[name] = [round(v, 1) for v in vals]
    return _Table(rng.choice(companies), years, values, rng.choice(_SCALES), rng.choice(_CURRENCIES))


def _train_question(rng: random.Random, t: _Table, short: bool = False) -> tuple[str, str, str, str, str]:
    """(question, answer, task, answer_value, answer_unit) in the training style.

    ``short``: the answer is the value and its unit only ("$1,234.5 million."),
    and most questions are look-ups. That is the demo's training objective: a
    135M model learns it in a few hundred LoRA steps on short sequences, so the
    leaderboard can resolve the gain. Long answers (a sentence, the arithmetic
    shown) are what the planted noise rows are made from.
    """
    q, a, task, value, unit = _train_question_long(rng, t, short)
    if not short:
        return q, a, task, value, unit
    if unit == "percent":
        return q, f"{value}%.", task, value, unit
    decimals = len(value.split(".")[-1])
    return q, f"{t.currency[0]}{_fmt(float(value), decimals)} {unit}.", task, value, unit


def _train_question_long(rng: random.Random, t: _Table, lookup_heavy: bool) -> tuple[str, str, str, str, str]:
    cur, (_, unit) = t.currency[0], t.scale
    items = list(t.items)
    item = rng.choice(items)
    low = item[0].lower() + item[1:]
    vals = t.items[item]
    # Look-ups stay a little under 60 %: the shipped objectives report a qa gap.
    kind = rng.choices(["lookup", "change", "growth", "sum", "average", "ratio"],
                       weights=[10, 2, 2, 2, 1, 1] if lookup_heavy else [3, 2, 3, 2, 1, 1])[0]
    if kind == "average" and len(t.years) < 3:
        kind = "sum"
    if kind == "lookup":
        i = rng.randrange(len(t.years))
        q = f"What was {t.company}’s {low} in {t.years[i]}?"
        a = f"{t.company}’s {low} in {t.years[i]} was {cur}{_fmt(vals[i])} {unit}."
        return q, a, "qa", f"{vals[i]:.1f}", unit
    i, j = sorted(rng.sample(range(len(t.years)), 2))
    v1, v2 = vals[i], vals[j]
    y1, y2 = t.years[i], t.years[j]
    if kind == "change":
        d = round(v2 - v1, 1)
        verb = "increased" if d >= 0 else "decreased"
        q = f"By how much did {low} change from {y1} to {y2}?"
        a = (f"{item} {verb} from {cur}{_fmt(v1)} {unit} in {y1} to {cur}{_fmt(v2)} {unit} in {y2}, "
             f"a change of {cur}{_fmt(d)} {unit}.")
        return q, a, "arithmetic", f"{d:.1f}", unit
    if kind == "growth":
        pct = round((v2 - v1) / v1 * 100, 2)
        q = f"What was the percentage change in {low} between {y1} and {y2}?"
        a = (f"{item} went from {_fmt(v1)} to {_fmt(v2)} ({cur} in {t.scale[0]}), so the percentage "
             f"change is ({_fmt(v2)} - {_fmt(v1)}) / {_fmt(v1)} = {pct:.2f}%.")
        return q, a, "arithmetic", f"{pct:.2f}", "percent"
    if kind == "sum":
        s = round(v1 + v2, 1)
        q = f"What was the combined {low} for {y1} and {y2}?"
        a = f"The combined {low} was {cur}{_fmt(v1)} + {cur}{_fmt(v2)} = {cur}{_fmt(s)} {unit}."
        return q, a, "arithmetic", f"{s:.1f}", unit
    if kind == "average":
        avg = round(sum(vals) / len(vals), 2)
        span = f"{t.years[0]} to {t.years[-1]}"
        q = f"What was the average {low} from {span}?"
        a = (f"The average {low} from {span} was (" + " + ".join(_fmt(v) for v in vals)
             + f") / {len(vals)} = {cur}{_fmt(avg, 2)} {unit}.")
        return q, a, "arithmetic", f"{avg:.2f}", unit
    other = rng.choice([x for x in items if x != item])
    k = rng.randrange(len(t.years))
    pct = round(t.items[item][k] / t.items[other][k] * 100, 2)
    olow = other[0].lower() + other[1:]
    q = f"What was {low} as a percentage of {olow} in {t.years[k]}?"
    a = (f"In {t.years[k]}, {low} was {_fmt(t.items[item][k])} and {olow} was "
         f"{_fmt(t.items[other][k])}, so the ratio is {pct:.2f}%.")
    return q, a, "arithmetic", f"{pct:.2f}", "percent"


_SYSTEM = "You are a careful financial analyst. Answer from the table and show the arithmetic."


_SYSTEM_SHORT = "Answer from the table."


def _train_prompt(t: _Table, question: str, short: bool = False) -> str:
    if short:  # the table's header says the currency and scale
        return (f"The following table shows {t.company}’s selected financial data. Answer with the value "
                f"and unit only.\n\n{t.markdown()}\n\nQuestion: {question}")
    return (f"The following table shows {t.company}’s selected financial data "
            f"({t.scale[0]} of {t.currency[1]}):\n\n{t.markdown()}\n\nQuestion: {question}")


def _finance_train_record(rng: random.Random, uid: str, with_meta: bool = True,
                          short: bool = False) -> dict[str, Any]:
    t = _make_table(rng, _TRAIN_COMPANIES, _TRAIN_ITEMS, small=short)
    q, a, task, value, unit = _train_question(rng, t, short)
    msgs = []
    if rng.random() < 0.3:
        msgs.append({"role": "system", "content": _SYSTEM_SHORT if short else _SYSTEM})
    msgs += [{"role": "user", "content": _train_prompt(t, q, short)}, {"role": "assistant", "content": a}]
    rec: dict[str, Any] = {"uid": uid, "messages": msgs}
    if with_meta:
        rec["meta"] = {"domain": "finance-tables", "doctype": "table", "task": task,
                       "tags": ["synthetic", t.scale[0]]}
    rec["answer_value"] = value
    rec["answer_unit"] = unit
    return rec


# Off-objective rows a real scraped training file would have (no meta labels).
_GENERAL = [
    ("Give me three tips for staying focused while working from home.",
     "Keep a fixed start time, work in a room used only for work, and take a short break every hour."),
    ("What is the boiling point of water at sea level in Celsius?",
     "Water boils at 100 degrees Celsius at sea level."),
    ("Write a haiku about autumn leaves.",
     "Red leaves drift and fall,\nquiet paths of amber light,\nthe year exhales slow."),
    ("Translate 'good morning' into Spanish.", "'Good morning' in Spanish is 'buenos días'."),
    ("How many legs does a spider have?", "A spider has eight legs."),
    ("Suggest a name for a bakery that sells sourdough bread.",
     "How about 'Rise & Crumb', a name that hints at slow fermentation and a crisp crust?"),
    ("Explain in one sentence what photosynthesis is.",
     "Photosynthesis is the process by which plants use sunlight, water and carbon dioxide to make sugar and oxygen."),
    ("What is the capital of Australia?", "The capital of Australia is Canberra."),
    ("Recommend a beginner-friendly houseplant.",
     "A pothos is a good choice: it tolerates low light and irregular watering."),
    ("List the primary colours.", "The primary colours are red, yellow and blue."),
    ("What does HTML stand for?", "HTML stands for HyperText Markup Language."),
    ("Give me a synonym for 'happy'.", "A synonym for 'happy' is 'cheerful'."),
    ("Describe the rules of tic-tac-toe briefly.",
     "Two players take turns marking a 3x3 grid; the first to get three marks in a row, column or diagonal wins."),
    ("Why is the sky blue?",
     "Sunlight is scattered by air molecules, and shorter blue wavelengths scatter the most, so the sky looks blue."),
    ("Name a famous painting by Leonardo da Vinci.", "The Mona Lisa is a famous painting by Leonardo da Vinci."),
    ("How do I boil an egg?",
     "Place the egg in boiling water for about nine minutes, then cool it in cold water before peeling."),
]

# --- noise ----------------------------------------------------------------------------

_REFUSALS = [
    "As an AI language model, I cannot provide financial analysis or investment advice.",
    "I'm sorry, but I can't help with that request.",
    "As an AI, I am unable to access or interpret financial tables.",
    "I cannot answer this question because it may involve confidential financial information.",
    "I'm sorry, I am not able to perform calculations on company data.",
    "Unfortunately, I cannot assist with that. Please consult a qualified financial advisor.",
    # paraphrases: no "as an AI", no "I cannot"
    "I must respectfully decline to answer questions about this company's finances.",
    "That's not something I can help with, I'm afraid.",
    "I won't be able to assist with this request.",
    "I'm not comfortable providing an analysis of these figures.",
    "Sorry, I'm not able to share that information.",
    "This goes against my guidelines, so I will have to pass on it.",
]

_NEAR_SWAPS = {
    "shows": "presents", "selected": "key", "was": "amounted to", "combined": "total",
    "following": "below", "change": "movement", "went": "moved", "average": "mean",
    "data": "figures", "careful": "meticulous", "Answer": "Respond",
}

_FOREIGN = [
    ("de", "Wie hoch war der Umsatz von {c} im Jahr {y}?",
     "Der Umsatz von {c} belief sich im Jahr {y} auf {v} Millionen Euro, was gegenüber dem Vorjahr "
     "eine deutliche Steigerung darstellt."),
    ("es", "¿Cuál fue el beneficio neto de {c} en {y}?",
     "El beneficio neto de {c} en {y} fue de {v} millones de dólares, lo que supone un aumento "
     "considerable respecto al año anterior."),
    ("fr", "Quel était le chiffre d'affaires de {c} en {y} ?",
     "Le chiffre d'affaires de {c} en {y} s'élevait à {v} millions d'euros, ce qui représente une "
     "nette progression par rapport à l'année précédente."),
    ("it", "Qual è stato l'utile operativo di {c} nel {y}?",
     "L'utile operativo di {c} nel {y} è stato di {v} milioni di euro, in forte crescita rispetto "
     "all'anno precedente."),
]

_CONTROL_CHARS = ["\x00", "\x07", "\x08", "\x1b[31m", "\x7f", "\u200b", "\x0c", "\x1f", "\x90"]


def _luhn_complete(prefix_digits: str) -> str:
    """Append the Luhn check digit."""
    total = 0
    for i, ch in enumerate(reversed(prefix_digits)):
        d = int(ch)
        if i % 2 == 0:  # positions that get doubled once the check digit is appended
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return prefix_digits + str((10 - total % 10) % 10)


def luhn_valid(number: str) -> bool:
    digits = [int(c) for c in number if c.isdigit()]
    total = 0
    for i, d in enumerate(reversed(digits)):
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return len(digits) >= 12 and total % 10 == 0


def _card(rng: random.Random, valid: bool = True) -> str:
    prefix = rng.choice(["4", "51", "55", "37", "6011"])
    length = 15 if prefix == "37" else 16
    body = prefix + "".join(str(rng.randrange(10)) for _ in range(length - len(prefix) - 1))
    num = _luhn_complete(body)
    if not valid:
        num = num[:-1] + str((int(num[-1]) + rng.randint(1, 9)) % 10)
    sep = rng.choice([" ", "-", ""])
    if length == 16:
        return sep.join(num[i:i + 4] for i in range(0, 16, 4))
    return sep.join([num[:4], num[4:10], num[10:]])


def _iban(rng: random.Random, valid: bool = True) -> str:
    country, blen = rng.choice([("DE", 18), ("GB", 18), ("FR", 23), ("NL", 14), ("ES", 20)])
    if country == "GB":
        bban = rng.choice(["NWBK", "BARC", "HBUK"]) + "".join(str(rng.randrange(10)) for _ in range(14))
    elif country == "NL":
        bban = rng.choice(["ABNA", "RABO", "INGB"]) + "".join(str(rng.randrange(10)) for _ in range(10))
    else:
        bban = "".join(str(rng.randrange(10)) for _ in range(blen))
    rearranged = bban + country + "00"
    num = int("".join(str(int(c, 36)) for c in rearranged))
    check = 98 - num % 97
    if not valid:
        check = (check + rng.randint(1, 50)) % 97 + 2
    iban = f"{country}{check:02d}{bban}"
    return " ".join(iban[i:i + 4] for i in range(0, len(iban), 4))


def _phone(rng: random.Random) -> str:
    return rng.choice([
        f"+1 ({rng.randint(201, 989)}) 555-{rng.randint(100, 999):04d}",
        f"{rng.randint(201, 989)}-555-{rng.randint(1000, 9999)}",
        f"+44 20 7946 {rng.randint(1000, 9999)}",
        f"+49 30 {rng.randint(1000000, 9999999)}",
        f"({rng.randint(201, 989)}) {rng.randint(200, 999)}-{rng.randint(1000, 9999)}",
        f"020 7946 {rng.randint(1000, 9999)}",        # UK national, London
        f"07700 900{rng.randint(100, 999)}",          # UK mobile
    ])


def _email(rng: random.Random) -> str:
    return f"{rng.choice(_FIRST)}.{rng.choice(_LAST)}{rng.randint(1, 99)}@{rng.choice(_MAIL_DOMAINS)}"


def mojibake(text: str) -> str:
    """UTF-8 bytes read as Windows-1252: the classic 'companyâ€™s' damage."""
    return text.encode("utf-8").decode("cp1252", errors="replace")


@dataclass
class _Rec:
    key: float                      # sort key: position in the file
    line: str                       # the raw line written
    uid: str
    truth: dict[str, Any] | None = None
    orig: "_Rec | None" = None
    messages: list[dict] | None = None
    raw: dict[str, Any] | None = None


def _last_user(msgs: list[dict]) -> dict:
    return [m for m in msgs if m["role"] == "user"][-1]


def _answer(msgs: list[dict]) -> dict:
    return [m for m in msgs if m["role"] == "assistant"][-1]


def _truncate(rng: random.Random, answer: str) -> str:
    """A rejected answer for the preference pairs: cut at a word."""
    words = answer.split()
    if rng.random() < 0.35 and "(" in answer:
        # cut inside a parenthesis: unbalanced bracket
        cut = answer.index("(") + rng.randint(2, max(3, len(answer) // 6))
        out = answer[:cut].rstrip()
        if ")" not in out:
            return out.rstrip(".,;:") if out[-1] != "(" else out + "1"
    cands = [k for k in range(max(5, len(words) // 3), len(words) - 1)
             if words[k - 1].isalpha() and words[k - 1].lower() not in ("i", "a")]
    if not cands:
        cands = [k for k in range(4, len(words)) if words[k - 1].isalpha()] or [len(words) - 1]
    k = rng.choice(cands)
    return " ".join(words[:k])


# --- noise: one table of the defects planted into rows -------------------------------
#
# Each kind says which step must catch it and how to damage a conversation (a
# list of {role, content} messages, changed in place; the return value is the
# ground truth's ``detail``). The demo plants each kind into fresh finance rows
# (``_gen_fin_train``); tests plant the same kinds into real rows
# (tests/test_curate_real.py) and check recall per kind. A new filter = a new
# row here.

def _plant_mojibake(rng: random.Random, msgs: list[dict], i: int) -> str:
    ans = _answer(msgs)
    if not any(ord(c) > 127 for c in ans["content"]):  # something non-ASCII to damage
        ans["content"] = ans["content"].rstrip(".") + " — as reported in the company’s filing."
    for m in msgs:
        m["content"] = mojibake(m["content"])
    return "UTF-8 read as cp1252"


def _plant_empty(rng: random.Random, msgs: list[dict], i: int) -> str:
    _answer(msgs)["content"] = "" if i % 3 else rng.choice(["   ", "\n", " \t "])
    return "empty answer"


def _plant_truncated(rng: random.Random, msgs: list[dict], i: int) -> str:
    """Cut mid-word in a later sentence (even i) or mid-number (odd i)."""
    ans = _answer(msgs)
    text = ans["content"].rstrip()
    if text and text[-1] not in ".!?":
        text += "."
    if i % 2 == 0:
        tail = rng.choice(["This figure reflects the combined results reported in the annual filing",
                           "The company attributed the change mainly to higher operating costs in the period",
                           "Management expects the trend to continue over the next two financial years"])
        words = tail.split()
        k = rng.randint(4, len(words) - 1)
        cut = words[k][: max(1, len(words[k]) // 2)] if len(words[k]) > 3 else words[k]
        ans["content"] = f"{text} {' '.join(words[:k])} {cut}"
    else:
        value = f"{rng.randint(1, 99)},{rng.randint(100, 999)}"
        ans["content"] = f"{text} The total for the period was {value[: len(value) - rng.randint(1, 2)]}"
    return ans["content"][-30:]


def _plant_refusal(rng: random.Random, msgs: list[dict], i: int) -> str:
    _answer(msgs)["content"] = _REFUSALS[i % len(_REFUSALS)]
    return _REFUSALS[i % len(_REFUSALS)]


def _plant_pii(kind: str):
    maker = {"pii-email": _email, "pii-phone": _phone, "pii-card": lambda r: _card(r, True),
             "pii-iban": lambda r: _iban(r, True)}[kind]
    phrase = {"pii-email": "Please send the answer to {v} when done.",
              "pii-phone": "If anything is unclear, call me on {v}.",
              "pii-card": "The analysis fee was charged to card {v}.",
              "pii-iban": "Payment for this report goes to IBAN {v}."}[kind]

    def plant(rng: random.Random, msgs: list[dict], i: int) -> str:
        value = maker(rng)
        if i % 2 == 0:  # in the prompt
            u = _last_user(msgs)
            u["content"] = u["content"] + "\n" + phrase.format(v=value)
        else:
            a = _answer(msgs)
            a["content"] = a["content"] + " " + phrase.format(v=value)
        return value
    return plant


def _plant_control(rng: random.Random, msgs: list[dict], i: int) -> str:
    a = _answer(msgs)
    chars = rng.sample(_CONTROL_CHARS, 2)
    text = a["content"] if len(a["content"]) >= 2 else "The answer is in the table."
    for ch in chars:
        p = rng.randrange(1, len(text))
        text = text[:p] + ch + text[p:]
    a["content"] = text
    return " ".join(f"U+{ord(c[0]):04X}" for c in chars)


def _plant_repetition(rng: random.Random, msgs: list[dict], i: int) -> str:
    a = _answer(msgs)
    filler = rng.choice(["All figures are in millions of dollars.", "Please refer to the table above for details.",
                         "This is the final answer to the question.", "The answer is based on the table above."])
    sep = "\n" if i % 2 else " "
    a["content"] = a["content"] + sep + sep.join([filler] * 20)
    return f"20 x {filler!r}"


#: short answers and other scripts: (language, question, answer)
_FOREIGN_SHORT = [
    ("fr", None, "Le chiffre d'affaires était de {v} millions d'euros."),
    ("zh", "{c}在{y}年的营业收入是多少？", "{c}在{y}年的营业收入为{v}百万美元，比上一年明显增长。"),
    ("fr", None, "La marge brute a baissé de {v} points."),
    ("zh", None, "营业收入为{v}百万美元。"),
]


def _plant_language(rng: random.Random, msgs: list[dict], i: int) -> str:
    """German, Spanish, French, Italian ... answers, Chinese ones, and short
    French ones (the prompt stays English when the variant has no question)."""
    c = rng.choice(_TRAIN_COMPANIES)
    y = rng.randint(2016, 2024)
    v = _fmt(rng.uniform(100, 5000))
    lang, q, a = _FOREIGN[i % len(_FOREIGN)] if i % 3 == 0 else _FOREIGN_SHORT[i % len(_FOREIGN_SHORT)]
    if q is not None:
        _last_user(msgs)["content"] = q.format(c=c, y=y)
    _answer(msgs)["content"] = a.format(c=c, y=y, v=v)
    return lang


def _plant_echo(rng: random.Random, msgs: list[dict], i: int) -> str:
    u = _last_user(msgs)["content"]
    _answer(msgs)["content"] = u.rsplit("Question: ", 1)[-1].rsplit("\n\n", 1)[-1]
    return "the question as the answer"


def _plant_bad_structure(rng: random.Random, msgs: list[dict], i: int) -> str:
    turns = [m for m in msgs if m["role"] != "system"]
    if i % 2 == 0:
        msgs[:] = [{"role": "assistant", "content": turns[1]["content"]},
                   {"role": "user", "content": turns[0]["content"]}]
        return "assistant before user, no final answer"
    msgs[:] = [turns[0], {"role": "user", "content": "Please answer quickly."}]
    return "two user turns, no answer"


@dataclass(frozen=True)
class NoiseKind:
    """One kind of planted defect."""

    kind: str
    caught_by: str          # "filter:<name>", "dedup" or "ingest"
    roles: str              # where the damage is: prompt | response | both
    per_demo: int           # rows of it in the demo's fin-train at scale 1
    plant: Any = None       # (rng, messages, i) -> detail; None: made elsewhere (copies, broken lines)


#: Every kind of planted defect (ground-truth ``kind``), in the order they are planted.
NOISE: dict[str, NoiseKind] = {k.kind: k for k in (
    NoiseKind("mojibake", "filter:mojibake", "both", 12, _plant_mojibake),
    NoiseKind("empty", "filter:empty", "response", 9, _plant_empty),
    NoiseKind("truncated", "filter:truncated", "response", 12, _plant_truncated),
    NoiseKind("refusal", "filter:refusal", "response", 12, _plant_refusal),
    NoiseKind("pii-email", "filter:pii", "both", 4, _plant_pii("pii-email")),
    NoiseKind("pii-phone", "filter:pii", "both", 4, _plant_pii("pii-phone")),
    NoiseKind("pii-card", "filter:pii", "both", 4, _plant_pii("pii-card")),
    NoiseKind("pii-iban", "filter:pii", "both", 4, _plant_pii("pii-iban")),
    NoiseKind("control", "filter:control", "response", 10, _plant_control),
    NoiseKind("repetition", "filter:repetition", "response", 8, _plant_repetition),
    NoiseKind("wrong-language", "filter:language", "both", 6, _plant_language),
    NoiseKind("echo", "filter:echo", "response", 6, _plant_echo),
    NoiseKind("bad-structure", "filter:structure", "both", 4, _plant_bad_structure),
    NoiseKind("exact-duplicate", "dedup", "both", 14),
    NoiseKind("near-duplicate", "dedup", "both", 14),
    NoiseKind("malformed-json", "ingest", "both", 8),
)}
#: the kinds' names (ground-truth ``kind``)
NOISE_KINDS = tuple(NOISE)


def _gen_fin_train(rng: random.Random, scale: float) -> tuple[list[str], list[dict[str, Any]]]:
    """Lines of fin_train.jsonl and their ground-truth records."""
    def n(k: float) -> int:
        return max(1, round(k * scale))

    recs: list[_Rec] = []
    n_clean = max(10, round(470 * scale))
    for i in range(n_clean):
        r = _finance_train_record(rng, f"fin-{i:05d}", with_meta=rng.random() > 0.08, short=True)
        recs.append(_Rec(float(i), "", r["uid"], messages=r["messages"]))
        recs[-1].raw = r
    uid_n = n_clean
    total_span = float(n_clean)

    def new_uid() -> str:
        nonlocal uid_n
        uid_n += 1
        return f"fin-{uid_n:05d}"

    # off-objective rows (not defects; coverage should find them)
    for q, a in rng.sample(_GENERAL, min(len(_GENERAL), n(15))):
        uid = new_uid()
        raw = {"uid": uid, "messages": [{"role": "user", "content": q}, {"role": "assistant", "content": a}]}
        rec = _Rec(rng.uniform(0, total_span), "", uid, messages=raw["messages"],
                   truth={"kind": "off-objective", "defect": False, "roles": "both"})
        rec.raw = raw
        recs.append(rec)

    clean = [r for r in recs if r.truth is None]
    pool_iter = iter(rng.sample(clean, len(clean)))  # each noisy copy starts from a distinct clean row

    def fresh(kind: str, roles: str, detail: str = "") -> tuple[dict, _Rec]:
        """A new finance record (not a copy) to damage."""
        raw = _finance_train_record(rng, new_uid())
        rec = _Rec(rng.uniform(0, total_span), "", raw["uid"], messages=raw["messages"],
                   truth={"kind": kind, "defect": True, "roles": roles, "detail": detail})
        rec.raw = raw
        recs.append(rec)
        return raw, rec

    for nk in NOISE.values():
        if nk.plant is None:
            continue
        for i in range(n(nk.per_demo)):
            raw, rec = fresh(nk.kind, nk.roles)
            rec.truth["detail"] = nk.plant(rng, raw["messages"], i)
            rec.messages = raw["messages"]

    # duplicates of clean rows, placed after their original
    for _ in range(n(NOISE["exact-duplicate"].per_demo)):
        orig = next(pool_iter)
        uid = orig.uid
        rec = _Rec(rng.uniform(orig.key, total_span + 1), "", uid, orig=orig, messages=orig.messages,
                   truth={"kind": "exact-duplicate", "defect": True, "roles": "both", "jaccard": 1.0})
        rec.raw = orig.raw
        recs.append(rec)
    for _ in range(n(NOISE["near-duplicate"].per_demo)):
        # reword a few words of the long turns only: a near copy is near in every
        # turn, and in a user turn's context and last paragraph apart (what
        # dedup compares: bakeoff.curate.dedup_key); rows where that is not
        # possible are passed over
        while True:
            orig = next(pool_iter)
            for _attempt in range(20):
                msgs = json.loads(json.dumps(orig.messages))
                targets = [(m, part) for m in msgs if m["role"] in ("user", "assistant", "system")
                           for part in _paragraph_split(m) if len(part.split()) >= 25]
                changed = 0
                for _k in range(rng.randint(1, 3) if targets else 0):
                    m, part = rng.choice(targets)
                    part = next((x for x in _paragraph_split(m) if len(x.split()) >= 25), "")
                    words = part.split(" ")
                    idx = [k for k, w in enumerate(words) if w in _NEAR_SWAPS]
                    if idx:
                        k = rng.choice(idx)
                        words[k] = _NEAR_SWAPS[words[k]]
                        m["content"] = m["content"].replace(part, " ".join(words), 1)
                        changed += 1
                jac = min(_word_jaccard3(x, y) for m0, m1 in zip(orig.messages, msgs)
                          for x, y in zip(_paragraph_split(m0), _paragraph_split(m1)))
                if changed and 0.85 <= jac < 1.0:
                    break
            if changed and 0.85 <= jac < 1.0:
                break
        uid = new_uid()
        raw = {**orig.raw, "uid": uid, "messages": msgs}
        rec = _Rec(rng.uniform(orig.key, total_span + 1), "", uid, orig=orig, messages=msgs,
                   truth={"kind": "near-duplicate", "defect": True, "roles": "both",
                          "jaccard": round(jac, 4)})
        rec.raw = raw
        recs.append(rec)

    # decoys: clean rows with numbers shaped like PII that fail their checksums
    for kind, maker, phrase in (
            ("decoy-card", lambda r: _card(r, False), "Internal reference number {v}."),
            ("decoy-iban", lambda r: _iban(r, False), "Ledger code {v}.")):
        for _ in range(n(2)):
            orig = next(pool_iter)
            v = maker(rng)
            a = _answer(orig.messages)
            a["content"] = a["content"] + " " + phrase.format(v=v)
            orig.truth = {"kind": kind, "defect": False, "roles": "response", "detail": v}

    # serialise; malformed lines are written as raw text
    for rec in recs:
        rec.line = json.dumps(rec.raw, ensure_ascii=False)
    for i in range(n(NOISE["malformed-json"].per_demo)):
        src = json.dumps(_finance_train_record(rng, new_uid()), ensure_ascii=False)
        variant = i % 4
        if variant == 0:
            line, detail = src[: len(src) // 2], "cut mid-record"
        elif variant == 1:
            line, detail = src.replace('"', "'"), "single quotes"
        elif variant == 2:
            line, detail = src.replace('], "', '] "', 1), "missing comma between fields"
        else:
            line, detail = src + " }", "trailing garbage"
        recs.append(_Rec(rng.uniform(0, total_span), line, f"malformed-{i}",
                         truth={"kind": "malformed-json", "defect": True, "roles": "both",
                                "detail": detail}))

    recs.sort(key=lambda r: r.key)
    line_of = {id(r): i + 1 for i, r in enumerate(recs)}
    truth: list[dict[str, Any]] = []
    for r in recs:
        if r.truth is None:
            continue
        t = {"file": FILES["fin-train"], "dataset": "fin-train", "line": line_of[id(r)], "uid": r.uid,
             **r.truth}
        if r.orig is not None:
            t["original_line"] = line_of[id(r.orig)]
            t["original_uid"] = r.orig.uid
        truth.append(t)
    return [r.line for r in recs], truth


# --- held-out pool: separate generators, templates and entities ----------------------

def _pool_finance(rng: random.Random, scale: float, train_lines: list[str],
                  noisy_lines: set[int]) -> tuple[list[dict], list[dict]]:
    """Alpaca records of held-out finance QA, in a different style from training."""
    out: list[dict] = []
    truth: list[dict] = []
    n_rows = max(5, round(150 * scale))
    for i in range(n_rows):
        # Small tables like the training objective's (a 135M model learns to look
        # a value up in those from a few hundred examples), asked in other words:
        # the question first, a sentence with the units, a differently labelled table.
        t = _make_table(rng, _POOL_COMPANIES, _POOL_ITEMS, small=True)
        item = rng.choice(list(t.items))
        vals = t.items[item]
        low = item.lower()
        para = (f"{t.company} reported these figures for fiscal {t.years[0]} to {t.years[-1]}; "
                f"amounts are in {t.scale[0]} of {t.currency[1]}.")
        table = t.markdown(label=f"Fiscal year ({t.scale[0]})")
        # Mostly look-ups, like the training objective (see _train_question).
        style = rng.choices(["yoy", "lookup", "diff", "share"], weights=[1, 5, 2, 1])[0]
        if style == "yoy":
            pct = round((vals[-1] - vals[-2]) / vals[-2] * 100, 2)
            ins = f"Using the table below, compute the year-over-year growth of {low} for fiscal {t.years[-1]}. Answer with a percentage."
            ans, task, value, unit = f"{pct:.2f}%", "arithmetic", f"{pct:.2f}", "percent"
        elif style == "lookup":
            k = rng.randrange(len(t.years))
            ins = f"According to the table below, how much {low} did {t.company} report for fiscal {t.years[k]}?"
            ans, task, value, unit = (f"{t.currency[0]}{_fmt(vals[k])} {t.scale[1]}", "qa",
                                      f"{vals[k]:.1f}", t.scale[1])
        elif style == "diff":
            d = round(vals[-1] - vals[0], 1)
            ins = f"From the table below, by how much did {low} move between fiscal {t.years[0]} and fiscal {t.years[-1]}?"
            ans, task, value, unit = (f"{t.currency[0]}{_fmt(d)} {t.scale[1]}", "arithmetic",
                                      f"{d:.1f}", t.scale[1])
        else:
            tot = sum(t.items[x][-1] for x in t.items)
            pct = round(vals[-1] / tot * 100, 2)
            ins = f"In fiscal {t.years[-1]}, what share of the sum of all line items in the table below does {low} represent?"
            ans, task, value, unit = f"{pct:.2f}%", "arithmetic", f"{pct:.2f}", "percent"
        out.append({"instruction": ins, "input": f"{para}\n\n{table}", "output": ans,
                    "meta": {"domain": "finance-tables", "doctype": "table", "task": task,
                             "tags": ["held-out", style]},
                    "answer_value": value, "answer_unit": unit, "uid": f"pool-fin-{i:05d}"})
    # leaks: near-copies of training rows, as a careless test-set author would make them
    clean_train = []
    for ln, line in enumerate(train_lines, start=1):
        if ln in noisy_lines:  # leak clean rows only
            continue
        r = json.loads(line)
        if isinstance(r.get("meta"), dict) and r["meta"].get("domain") == "finance-tables" \
                and r["uid"].startswith("fin-") and not any(
                    m["role"] == "system" for m in r["messages"]):
            clean_train.append((ln, r))
    for j in range(max(1, round(8 * scale))):
        ln, r = clean_train[rng.randrange(len(clean_train))]
        user, ans = r["messages"][0]["content"], r["messages"][1]["content"]
        ctx, q = user.rsplit("\n\nQuestion: ", 1)
        pos = rng.randrange(len(out) + 1)
        out.insert(pos, {"instruction": q, "input": ctx, "output": ans, "meta": r["meta"],
                         "answer_value": r["answer_value"], "answer_unit": r["answer_unit"],
                         "uid": f"pool-leak-{j:03d}"})
    for idx, rec in enumerate(out):
        if rec["uid"].startswith("pool-leak-"):
            src = next(ln for ln, r in clean_train if r["messages"][1]["content"] == rec["output"]
                       and r["messages"][0]["content"].endswith(rec["instruction"]))
            # _write_json_array puts element i on line i + 2
            truth.append({"file": FILES["pool-finance"], "dataset": "pool", "line": idx + 2,
                          "index": idx, "uid": rec["uid"], "kind": "leak", "defect": True,
                          "roles": "both", "original_file": FILES["fin-train"],
                          "original_line": src})
    return out, truth


_VENDORS = [
    ("Acme Office Supply Ltd", "12 Harbour Road, Leeds LS1 4AB", "GBP", 0.20, "VAT"),
    ("Müller Elektrotechnik GmbH", "Hauptstraße 45, 80331 München", "EUR", 0.19, "MwSt"),
    ("Pacific Coast Printing Inc.", "880 Market St, San Francisco, CA 94102", "USD", 0.0875, "Sales tax"),
    ("Nordic Coffee Roasters AB", "Sveavägen 17, 111 57 Stockholm", "SEK", 0.25, "Moms"),
    ("Lakeside IT Services LLC", "401 W Lake St, Chicago, IL 60606", "USD", 0.0, "Tax"),
    ("Boulangerie Martin SARL", "8 rue des Lilas, 69003 Lyon", "EUR", 0.055, "TVA"),
    ("Greenleaf Catering Co.", "55 King Street West, Toronto, ON M5H 1A1", "CAD", 0.13, "HST"),
    ("Summit Legal Partners LLP", "1 Canada Square, London E14 5AB", "GBP", 0.20, "VAT"),
]
_CUSTOMERS = ["Northgate Dental Practice", "Orbit Analytics Ltd", "City of Westfield",
              "Riverbend Farms", "Aster & Co. Architects", "Polaris Freight GmbH", "Blue Heron Yoga Studio"]
_ITEMS = [("A4 copier paper (box)", 18, 42), ("Toner cartridge", 45, 160), ("Consulting hours", 80, 220),
          ("Website hosting (annual)", 90, 400), ("Espresso beans 1kg", 14, 32), ("USB-C dock", 60, 180),
          ("Catering: lunch buffet per person", 12, 35), ("Legal review (hour)", 150, 450),
          ("Business cards (500)", 25, 70), ("Network switch 24-port", 120, 480)]
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September",
           "October", "November", "December"]


def _invoice(rng: random.Random, i: int) -> dict[str, Any]:
    vendor, addr, cur, rate, tax_name = rng.choice(_VENDORS)
    y, m, d = rng.randint(2021, 2025), rng.randint(1, 12), rng.randint(1, 28)
    receipt = rng.random() < 0.35
    items = []
    for name, lo, hi in rng.sample(_ITEMS, rng.randint(1, 4)):
        qty = rng.randint(1, 12)
        price = round(rng.uniform(lo, hi), 2)
        items.append((name, qty, price, round(qty * price, 2)))
    subtotal = round(sum(x[3] for x in items), 2)
    tax = round(subtotal * rate, 2)
    total = round(subtotal + tax, 2)
    date_iso = f"{y:04d}-{m:02d}-{d:02d}"
    date_h = f"{d} {_MONTHS[m - 1]} {y}"
    lines_txt = "\n".join(f"{n:<36}{q:>4}  {p:>9.2f}  {a:>10.2f}" for n, q, p, a in items)
    if receipt:
        number = f"R{rng.randint(100000, 999999)}"
        text = (f"{vendor.upper()}\n{addr}\nRECEIPT #{number}\n{date_h}  {rng.randint(8, 20):02d}:{rng.randint(0, 59):02d}\n\n"
                f"{lines_txt}\n\nSubtotal {subtotal:.2f}\n{tax_name} {tax:.2f}\nTOTAL {cur} {total:.2f}\n"
                f"Paid by card ending {rng.randint(1000, 9999)}\nThank you for your visit!")
    else:
        number = f"INV-{y}-{rng.randint(1, 9999):05d}"
        due = f"{min(d + 14, 28)} {_MONTHS[m - 1]} {y}"
        text = (f"{vendor}\n{addr}\n\nINVOICE\nInvoice No: {number}\nInvoice date: {date_h}\nDue date: {due}\n"
                f"Bill to: {rng.choice(_CUSTOMERS)}\n\n{'Description':<36}{'Qty':>4}  {'Unit':>9}  {'Amount':>10}\n"
                f"{lines_txt}\n\nSubtotal: {subtotal:.2f}\n{tax_name} ({rate * 100:g}%): {tax:.2f}\n"
                f"Total due: {cur} {total:.2f}")
    fields = {"vendor": vendor, "document_number": number, "date": date_iso, "currency": cur,
              "subtotal": subtotal, "tax": tax, "total": total}
    if rng.random() < 0.6:
        ask = ("Extract vendor, document_number, date (YYYY-MM-DD), currency, subtotal, tax and total "
               "from this {doc}. Reply with a JSON object only.")
        answer = json.dumps(fields, ensure_ascii=False)
        style = "json"
    else:
        ask = ("Read the {doc} and list these fields, one per line as 'field: value': vendor, "
               "document_number, date (YYYY-MM-DD), currency, total.")
        answer = "\n".join(f"{k}: {fields[k]}" for k in ("vendor", "document_number", "date", "currency", "total"))
        style = "lines"
    doc = "receipt" if receipt else "invoice"
    return {"conversations": [{"from": "human", "value": ask.format(doc=doc) + "\n\n" + text},
                              {"from": "gpt", "value": answer}],
            "meta": {"domain": "invoices", "doctype": doc, "task": "extraction", "tags": ["held-out", style]},
            "fields": json.dumps(fields, ensure_ascii=False), "uid": f"pool-inv-{i:05d}"}


_PARTIES = [("Supplier", "Customer"), ("Licensor", "Licensee"), ("Company", "Consultant"),
            ("Landlord", "Tenant"), ("Provider", "Client")]
_CLAUSES = {
    "termination": [
        "Either party may terminate this Agreement upon {n} days' prior written notice to the other party.",
        "The {a} may terminate this Agreement immediately if the {b} commits a material breach that remains uncured {n} days after notice.",
        "This Agreement shall terminate automatically if either party becomes insolvent or enters into liquidation.",
    ],
    "confidentiality": [
        "The {b} shall keep confidential all information disclosed by the {a} and shall not disclose it to any third party without prior written consent.",
        "Each party shall protect the other party's Confidential Information with at least the degree of care it uses for its own, and for no less than {n} years after disclosure.",
    ],
    "indemnification": [
        "The {a} shall indemnify and hold harmless the {b} from any claims, losses and expenses arising out of the {a}'s negligence or wilful misconduct.",
        "The {b} agrees to defend and indemnify the {a} against all third-party claims alleging that the deliverables infringe intellectual property rights.",
    ],
    "limitation_of_liability": [
        "In no event shall either party be liable for indirect, incidental or consequential damages, including loss of profits.",
        "The {a}'s aggregate liability under this Agreement shall not exceed the fees paid by the {b} in the {n} months preceding the claim.",
    ],
    "governing_law": [
        "This Agreement shall be governed by and construed in accordance with the laws of {j}.",
        "Any dispute arising under this Agreement shall be subject to the exclusive jurisdiction of the courts of {j}.",
    ],
    "payment_terms": [
        "The {b} shall pay each invoice within {n} days of the invoice date; late payments bear interest at {p}% per month.",
        "Fees are payable quarterly in advance, and all amounts are exclusive of applicable taxes.",
    ],
    "force_majeure": [
        "Neither party shall be liable for any delay or failure to perform caused by events beyond its reasonable control, including fire, flood, war or epidemic.",
        "If a force majeure event continues for more than {n} days, either party may terminate the affected order without liability.",
    ],
    "assignment": [
        "Neither party may assign or transfer this Agreement without the prior written consent of the other party, which shall not be unreasonably withheld.",
        "The {a} may assign this Agreement to an affiliate or to a successor in connection with a merger or sale of substantially all of its assets.",
    ],
    "non_compete": [
        "During the term and for {n} months thereafter, the {b} shall not engage in any business that competes with the {a} within {j}.",
        "The {b} shall not solicit any employee or customer of the {a} for a period of {n} months after termination.",
    ],
    "warranty": [
        "The {a} warrants that the services will be performed in a professional and workmanlike manner in accordance with industry standards.",
        "The {a} warrants that the goods will be free from defects in materials and workmanship for {n} months from delivery.",
    ],
}
_JURIS = ["England and Wales", "the State of New York", "the State of Delaware", "Ontario", "Germany",
          "Singapore", "the Netherlands"]


def _contract(rng: random.Random, i: int) -> dict[str, Any]:
    label = CONTRACT_LABELS[i % len(CONTRACT_LABELS)] if rng.random() < 0.7 else rng.choice(CONTRACT_LABELS)
    a, b = rng.choice(_PARTIES)
    clause = rng.choice(_CLAUSES[label]).format(a=a, b=b, n=rng.choice([10, 14, 30, 45, 60, 90, 12, 24]),
                                                j=rng.choice(_JURIS), p=rng.choice([1, 1.5, 2]))
    num = f"{rng.randint(2, 18)}.{rng.randint(1, 9)}"
    prompt = (f"Classify the contract clause below into exactly one of these categories: "
              f"{', '.join(CONTRACT_LABELS)}. Answer with the category name only.\n\n"
              f"Clause {num}: {clause}")
    return {"prompt": prompt, "completion": label, "domain": "contracts", "doctype": "contract",
            "task": "classification", "uid": f"pool-con-{i:05d}"}


# --- preferences and PPO prompts -----------------------------------------------------

def _preferences(rng: random.Random, scale: float) -> list[dict]:
    out = []
    for i in range(max(5, round(200 * scale))):
        if rng.random() < 0.8:
            t = _make_table(rng, _TRAIN_COMPANIES, _TRAIN_ITEMS)
            q, good, task, value, unit = _train_question(rng, t, short=True)
            prompt = _train_prompt(t, q, short=True)
            how = rng.choice(["wrong-number", "wrong-number", "refusal", "truncated", "vague"])
            if how == "wrong-number":
                v = float(value)
                wrong_v = v * rng.choice([0.9, 1.1, 1.5, 0.5, -1]) + rng.choice([0, 1.3])
                dec = 2 if unit == "percent" or len(value.split(".")[-1]) == 2 else 1
                bad = good.replace(_fmt(abs(v), dec) if unit != "percent" else f"{v:.2f}",
                                   _fmt(abs(wrong_v), dec) if unit != "percent" else f"{wrong_v:.2f}")
                if bad == good:
                    bad = good.rstrip(".") + f", or roughly {_fmt(abs(wrong_v), dec)}."
            elif how == "refusal":
                bad = rng.choice(_REFUSALS)
            elif how == "truncated":
                bad = _truncate(rng, good)
            else:
                bad = "It changed a bit over the period; the table has the details."
            meta = {"domain": "finance-tables", "doctype": "table", "task": task, "tags": [how]}
        else:
            inv = _invoice(rng, i)
            prompt = inv["conversations"][0]["value"]
            good = inv["conversations"][1]["value"]
            fields = json.loads(inv["fields"])
            bad_fields = dict(fields, total=round(fields["subtotal"], 2), date=fields["date"][::-1])
            bad = json.dumps(bad_fields) if good.startswith("{") else \
                "\n".join(f"{k}: {bad_fields[k]}" for k in ("vendor", "document_number", "date", "currency", "total"))
            meta = dict(inv["meta"], tags=["wrong-fields"])
        out.append({"conversations": [{"from": "human", "value": prompt}],
                    "chosen": {"from": "gpt", "value": good}, "rejected": {"from": "gpt", "value": bad},
                    "meta": meta, "uid": f"pref-{i:05d}"})
    return out


def _prompts(rng: random.Random, scale: float) -> list[dict]:
    out = []
    for i in range(max(5, round(100 * scale))):
        t = _make_table(rng, _TRAIN_COMPANIES, _TRAIN_ITEMS)
        q, good, task, value, unit = _train_question(rng, t, short=True)
        out.append({"prompt": _train_prompt(t, q, short=True),
                    "meta": {"domain": "finance-tables", "doctype": "table", "task": task, "tags": ["ppo"]},
                    "reference": good, "answer_value": value, "answer_unit": unit, "uid": f"prompt-{i:05d}"})
    return out


# --- public API --------------------------------------------------------------------------

def _write_lines(path: Path, lines: list[str]) -> None:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")


def _write_json_array(path: Path, records: list[dict]) -> None:
    """A JSON array with one element per line (element i on line i + 2), so
    ground-truth line numbers match what a reader reports."""
    body = ",\n".join(json.dumps(r, ensure_ascii=False) for r in records)
    path.write_text("[\n" + body + "\n]\n", encoding="utf-8")


def generate(out_dir: str | Path, seed: int = 0, scale: float = 1.0) -> dict[str, Path]:
    """Write the raw demo corpus to ``out_dir``; returns {file key: path} (keys in ``FILES``).

    Deterministic for (seed, scale): each generator draws from its own
    ``random.Random`` stream, seeded from a string (stable across platforms and
    Python hash randomisation).
    """
    if scale <= 0:
        raise ValueError("scale must be > 0")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {k: out / v for k, v in FILES.items()}

    train_lines, truth = _gen_fin_train(random.Random(f"bakeoff-demo/{seed}/fin-train"), scale)
    _write_lines(paths["fin-train"], train_lines)

    fin_pool, leak_truth = _pool_finance(random.Random(f"bakeoff-demo/{seed}/pool-finance"), scale, train_lines,
                                         {t["line"] for t in truth})
    truth += leak_truth
    _write_json_array(paths["pool-finance"], fin_pool)

    rng = random.Random(f"bakeoff-demo/{seed}/pool-invoices")
    inv = [_invoice(rng, i) for i in range(max(5, round(130 * scale)))]
    # mtime=0 keeps the gzip bytes deterministic
    with open(paths["pool-invoices"], "wb") as raw:
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in inv).encode("utf-8"))

    rng = random.Random(f"bakeoff-demo/{seed}/pool-contracts")
    con = [_contract(rng, i) for i in range(max(5, round(120 * scale)))]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=list(con[0]), lineterminator="\n")
    w.writeheader()
    w.writerows(con)
    paths["pool-contracts"].write_text(buf.getvalue(), encoding="utf-8")

    prefs = _preferences(random.Random(f"bakeoff-demo/{seed}/prefs"), scale)
    _write_json_array(paths["prefs"], prefs)

    prompts = _prompts(random.Random(f"bakeoff-demo/{seed}/prompts"), scale)
    _write_lines(paths["prompts"], [json.dumps(p, ensure_ascii=False) for p in prompts])

    _write_lines(paths["ground-truth"], [json.dumps(t, ensure_ascii=False, sort_keys=True) for t in truth])
    return paths


def load_ground_truth(path: str | Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in Path(path).read_text(encoding="utf-8").splitlines() if x.strip()]


#: Meta stamped on rows that carry none (the contracts CSV has its labels as columns).
_POOL_META = {"domain": "contracts", "doctype": "contract", "task": "classification"}


def make_demo_workspace(ws: Any, seed: int = 0, scale: float = 1.0,
                        raw_dir: str | Path | None = None) -> dict[str, Any]:
    """Generate the demo corpus (under ``ws.cache_dir('demo', ...)`` unless
    ``raw_dir``) and ingest it as datasets ``fin-train``, ``pool``, ``prefs`` and
    ``prompts``.

    Returns ``{"raw_dir", "files": {key: path}, "ground_truth": path,
    "datasets": {name: ref}, "ingest": {name: {rows_in, accepted, quarantined, detected}}}``.
    """
    from bakeoff.curate.ingest import ingest

    raw = Path(raw_dir) if raw_dir else ws.cache_dir("demo", f"seed{seed}-scale{scale:g}")
    paths = generate(raw, seed=seed, scale=scale)
    result: dict[str, Any] = {"raw_dir": str(raw), "files": {k: str(p) for k, p in paths.items()},
                              "ground_truth": str(paths["ground-truth"]), "datasets": {}, "ingest": {}}
    for name, keys in DATASETS.items():
        meta = _POOL_META if name == "pool" else None
        res = ingest(ws, [paths[k] for k in keys], name, meta=meta)
        result["datasets"][name] = res.version.ref
        result["ingest"][name] = {"rows_in": res.rows_in, "accepted": res.accepted,
                                  "quarantined": res.quarantined,
                                  "detected": {str(k): v for k, v in (res.detected or {}).items()}}
    return result


__all__ = ["generate", "make_demo_workspace", "load_ground_truth", "mojibake", "luhn_valid",
           "CONTRACT_LABELS", "NOISE_KINDS", "FILES", "DATASETS"]
