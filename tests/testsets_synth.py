"""Small synthetic multi-domain data for the test-set tests (not a test module).

Four domains with their own vocabulary and templates: financial tables (the
training domain: qa and arithmetic), invoices (adjacent: extraction; shares the
money vocabulary), contracts (classification) and recipes (far).
"""

from __future__ import annotations

import json
import random
import re

import polars as pl

from bakeoff.schema import conform, with_ids

COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Hooli", "Vandelay", "Stark", "Wayne", "Tyrell",
             "Cyberdyne", "Soylent", "Wonka", "Gringotts", "Oscorp", "Massive", "Dunder", "Pied", "Aperture"]
METRICS = ["revenue", "operating cost", "net income", "gross margin", "capital expenditure", "free cash flow",
           "interest expense", "tax provision", "depreciation", "inventory"]
REGIONS = ["north", "south", "east", "west", "central", "pacific", "atlantic", "alpine", "coastal", "inland"]
SEGMENTS = ["retail", "wholesale", "online", "enterprise", "government", "consumer", "industrial", "services"]
VENDORS = ["Bolt Supplies", "Crane Logistics", "Delta Paper", "Echo Printing", "Falcon Freight", "Granite Tools",
           "Harbor Foods", "Ivy Office", "Juniper Cleaning", "Kestrel IT"]
ITEMS = ["printer toner", "copy paper", "desk chair", "monitor stand", "cleaning service", "freight charge",
         "laptop repair", "catering", "software licence", "office plants", "coffee beans", "shipping boxes"]
CLAUSES = {
    "termination": ["either party may terminate", "upon written notice", "material breach", "cure period",
                    "effective date of termination", "winding down obligations"],
    "confidentiality": ["confidential information", "shall not disclose", "receiving party", "trade secrets",
                        "return or destroy", "survive expiry"],
    "payment": ["invoices are payable", "within thirty days", "late payment interest", "fees and expenses",
                "withholding taxes", "disputed amounts"],
    "liability": ["in no event shall", "indirect or consequential", "aggregate liability", "cap on damages",
                  "gross negligence", "wilful misconduct"],
}
FOODS = ["basil", "garlic", "lentils", "saffron", "shallots", "fennel", "quinoa", "paprika", "ginger", "leeks",
         "mushrooms", "thyme", "chickpeas", "lemon zest", "cumin", "spinach"]
STEPS = ["simmer gently", "whisk until smooth", "roast until golden", "fold in carefully", "season to taste",
         "rest for ten minutes", "chop finely", "bring to a boil", "stir occasionally", "drizzle with oil"]


def _finance(r: random.Random, style: int = 0) -> tuple[str, str, str, str]:
    """Style 0 is the training generator; style 1 the held-out one (other wording),
    as a separate process would write it."""
    company = f"{r.choice(COMPANIES)} {r.choice(['Corp', 'Holdings', 'Group', 'Ltd', 'Industries'])}"
    metric = r.choice(METRICS)
    seg, reg = r.choice(SEGMENTS), r.choice(REGIONS)
    year = r.randint(2008, 2024)
    vals = {q: r.randint(100, 9999) for q in ("Q1", "Q2", "Q3", "Q4")}
    table = "\n".join(f"| {q} | {v:,} | {r.randint(10, 999)} |" for q, v in vals.items())
    if style == 0:
        head = (f"{company} {seg} segment, {reg} region, fiscal {year} (in thousands).\n"
                f"| Quarter | {metric.title()} | Headcount |\n|---|---|---|\n{table}")
    else:
        head = (f"Figures reported by {company} for FY{year}; {reg} {seg} business, USD in thousands.\n"
                f"| Period | {metric.title()} | Staff |\n|---|---|---|\n{table}")
    if r.random() < 0.5:
        q = r.choice(list(vals))
        ask = (f"What was the {metric} of {company} in {q} {year}?" if style == 0 else
               f"Looking at {q}, which {metric} figure does the table give?")
        return head + "\n" + ask, f"{vals[q]:,}", "qa", "table"
    a, b = r.sample(list(vals), 2)
    ask = (f"How much higher was {metric} in {a} than in {b} for the {seg} segment?" if style == 0 else
           f"Compute {a} minus {b} for {metric}.")
    return head + "\n" + ask, f"{vals[a] - vals[b]:,}", "arithmetic", "table"


def _invoice(r: random.Random) -> tuple[str, str, str, str]:
    """Invoices are laid out as tables of amounts like the financial tables (an
    adjacent domain, also to a lexical embedder) but ask for field extraction."""
    vendor = r.choice(VENDORS)
    company = f"{r.choice(COMPANIES)} {r.choice(['Corp', 'Holdings', 'Group', 'Ltd', 'Industries'])}"
    num = r.randint(1000, 99999)
    date = f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}"
    lines = r.sample(ITEMS, r.randint(2, 4))
    amounts = [r.randint(100, 9999) for _ in lines]
    body = "\n".join(f"| {it} | {a:,} | {r.randint(1, 20)} |" for it, a in zip(lines, amounts))
    total = sum(amounts)
    doc = r.choice(["invoice", "receipt"])
    text = (f"{doc.title()} {num} from {vendor} to {company} {r.choice(SEGMENTS)} segment, "
            f"{r.choice(REGIONS)} region, dated {date}.\n| Item | Amount | Quantity |\n|---|---|---|\n{body}\n"
            f"| Total | {total:,} | |\nExtract the vendor, date and total amount as JSON.")
    return text, json.dumps({"vendor": vendor, "date": date, "total": total}), "extraction", doc


def _contract(r: random.Random) -> tuple[str, str, str, str]:
    label = r.choice(sorted(CLAUSES))
    phrases = r.sample(CLAUSES[label], 4)
    other = r.choice([k for k in CLAUSES if k != label])
    party = r.choice(["the Supplier", "the Customer", "the Licensor", "the Contractor"])
    text = (f"Clause {r.randint(2, 40)}.{r.randint(1, 9)}: {party} agrees that {phrases[0]}, and {phrases[1]}; "
            f"furthermore {phrases[2]} in respect of {phrases[3]}, save as provided in the "
            f"{other} section.\nWhich type of clause is this?")
    return text, label, "classification", "contract"


def _recipe(r: random.Random) -> tuple[str, str, str, str]:
    foods = r.sample(FOODS, 4)
    steps = r.sample(STEPS, 3)
    mins = r.randint(5, 90)
    text = (f"Recipe: {foods[0]} and {foods[1]} stew. Heat a pan, add {foods[2]}, {steps[0]}, then add "
            f"{foods[3]} and {steps[1]}; {steps[2]} for {mins} minutes.\nHow long does the final step take?")
    return text, f"{mins} minutes", "qa", "recipe"


GENERATORS = {"finance-tables": _finance, "invoices": _invoice, "contracts": _contract, "recipes": _recipe}


def make_rows(counts: dict[str, int], seed: int = 0, labelled: bool = True, style: int = 0) -> pl.DataFrame:
    """``counts`` maps a domain to a number of sft rows; ``style`` 1 = the held-out
    finance generator."""
    r = random.Random(seed)
    recs = []
    for domain, n in counts.items():
        for i in range(n):
            gen = GENERATORS[domain]
            prompt, answer, task, doctype = gen(r, style) if domain == "finance-tables" else gen(r)
            recs.append({"kind": "sft",
                         "messages": [{"role": "system", "content": "You are a careful analyst. Answer briefly."},
                                      {"role": "user", "content": prompt},
                                      {"role": "assistant", "content": answer}],
                         "domain": domain if labelled else None, "doctype": doctype, "task": task,
                         "tags": [], "source_file": f"{domain}.jsonl", "source_line": i + 1})
    return with_ids(conform(pl.DataFrame(recs)))


def paraphrase(text: str, r: random.Random, changes: int = 2) -> str:
    """A light paraphrase: ``changes`` words replaced by a synonym-ish word or swapped
    with their neighbour."""
    words = text.split(" ")
    wordy = [i for i in range(1, len(words) - 1) if re.search(r"\w", words[i])]
    for _ in range(changes):
        i = r.choice(wordy)
        if r.random() < 0.5 and words[i] != words[i + 1] and re.search(r"\w", words[i + 1]):
            words[i], words[i + 1] = words[i + 1], words[i]
        else:
            words[i] = r.choice(["approximately", "roughly", "overall", "reported", "indeed", "namely"])
    return " ".join(words)


def with_user_text(df: pl.DataFrame, texts: list[str]) -> pl.DataFrame:
    """Rows of ``df`` with their user turn replaced by ``texts`` (ids recomputed)."""
    recs = df.to_dicts()
    for rec, t in zip(recs, texts):
        rec["messages"] = [({**m, "content": t} if m["role"] == "user" else m) for m in rec["messages"]]
    return with_ids(conform(pl.DataFrame(recs, schema=df.schema)))


def user_texts(df: pl.DataFrame) -> list[str]:
    return [next(m["content"] for m in msgs if m["role"] == "user") for msgs in df["messages"].to_list()]
