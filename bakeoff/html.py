"""Self-contained HTML reports: inline CSS, plots as inline PNG (matplotlib),
no external scripts or fonts, so a report opens offline and can be mailed."""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any, Iterable, Sequence

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;max-width:1100px;color:#222;padding:0 1rem}
h1{font-size:1.6rem}h2{font-size:1.25rem;margin-top:2rem;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.5rem 0;font-size:.9rem}
th,td{border:1px solid #ddd;padding:.25rem .5rem;text-align:left;vertical-align:top}
th{background:#f4f4f4}tr.hl td{background:#fff7d6}
.muted{color:#777}.bad{color:#b00020}.good{color:#0a7d32}
img{max-width:100%}details{margin:.3rem 0}code,pre{background:#f6f6f6;padding:.1rem .3rem}
pre{white-space:pre-wrap;max-height:20rem;overflow:auto}
"""


def report_name(kind: str, ref: str) -> str:
    """The file name of a report about a version: ``KIND-NAME-vN.html``
    (``leaderboard-fin-test-v1.html``, ``coverage-fin-train-v2.html``)."""
    return f"{kind}-{ref.replace('@', '-')}.html"


def esc(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def figure(fig: Any, alt: str = "") -> str:
    """A matplotlib figure as an inline <img> (the figure is closed)."""
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f'<img alt="{esc(alt)}" src="data:image/png;base64,{data}">'


def table(columns: Sequence[str], rows: Iterable[Sequence[Any]],
          highlight: Iterable[int] = ()) -> str:
    """An HTML table; rows whose index is in ``highlight`` are shaded."""
    hl = set(highlight)
    head = "".join(f"<th>{esc(c)}</th>" for c in columns)
    body = "".join(
        f'<tr{" class=hl" if i in hl else ""}>' + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>"
        for i, r in enumerate(rows))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def page(title: str, sections: Iterable[str]) -> str:
    body = "\n".join(sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{esc(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>\n{body}\n</body></html>")


def write(path: str | Path, title: str, sections: Iterable[str]) -> Path:
    """Write a report page atomically and return its path."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(page(title, sections), encoding="utf-8")
    os.replace(tmp, path)
    return path
