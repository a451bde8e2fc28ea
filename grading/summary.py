"""The instructor's summary page, ``OUT/index.html``: one self-contained file (no server, no internet).

Sections: the class at a glance; the score histogram; the pass rate of every check; the most
frequent diagnoses with how many students got each; the students not gradable and why; lateness
and missing deliverables; similar pairs with their overlapping lines side by side; every student
with a link to the report. The plots are matplotlib PNGs inlined as data URIs. Every piece of
text that comes from a submission (names, messages, code) is HTML-escaped.
"""
from __future__ import annotations

import base64
import io
import re
from collections import Counter
from html import escape
from urllib.parse import quote

from . import registry

CSS = """
body{font-family:system-ui,sans-serif;margin:2em auto;max-width:80em;color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;margin-top:2em}
table{border-collapse:collapse;margin:.5em 0}td,th{border:1px solid #ddd;padding:.25em .6em;text-align:left;
vertical-align:top}th{background:#f4f4f4}.num{text-align:right}.flag{color:#a40000}
.pair{display:flex;gap:1em}.pair pre{flex:1;overflow-x:auto;background:#fafafa;border:1px solid #ddd;padding:.4em;
font-size:.8em;max-height:30em}.hit{background:#ffe08a}img{max-width:100%}
"""


def _png(fig) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, bbox_inches="tight")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def _figures(scores: list[float], maximum: float, rates: list[tuple[str, float]]) -> tuple[str, str]:
    import matplotlib

    matplotlib.use("Agg", force=False)
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7, 3))
    ax = fig.subplots()
    ax.hist(scores, bins=min(20, max(5, len(set(scores)))), range=(0, max(maximum, 1)), color="#4a7ab5",
            edgecolor="white")
    ax.set_xlabel(f"total score (of {maximum:g})")
    ax.set_ylabel("students")
    histogram = _png(fig)
    fig = Figure(figsize=(7, 0.3 * len(rates) + 1))
    ax = fig.subplots()
    ax.barh([r[0] for r in rates][::-1], [100 * r[1] for r in rates][::-1], color="#5a9e6f")
    ax.set_xlim(0, 100)
    ax.set_xlabel("students passing (%)")
    return histogram, _png(fig)


def diagnosis(message: str) -> str:
    """A message reduced to its kind: the first line, numbers and quoted names masked."""
    first = message.strip().splitlines()[0] if message.strip() else ""
    first = re.sub(r"`[^`]*`|'[^']*'|\"[^\"]*\"", "…", first)
    first = re.sub(r"\d+(\.\d+)?(e[-+]?\d+)?", "N", first)
    return first[:160]


def _table(head: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML already (the caller escapes student text)."""
    return ("<table><tr>" + "".join(f"<th>{h}</th>" for h in head) + "</tr>"
            + "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows) + "</table>")


def _pair(p: dict) -> str:
    def side(lines):
        return "".join(f'<span class="{"hit" if hit else ""}">{n:4d}  {escape(text)}</span>\n' for n, text, hit in lines)
    return (f"<h3>{escape(p['a'])} and {escape(p['b'])}: {escape(p['unit'])}, {100 * p['similarity']:.0f}% "
            f"({p['tokens']} tokens in common)</h3>"
            f'<div class="pair"><pre>{side(p["a_lines"])}</pre><pre>{side(p["b_lines"])}</pre></div>')


def page(reports: list[dict], pairs: list[dict], rubric, crits: list, maximum: float) -> str:
    graded = [r for r in reports if not r.get("not_gradable")]
    scores = [r["total"] for r in graded if r.get("total") is not None]
    rates = []
    for spec in registry.CHECKS:
        ran = [c for r in graded for c in r["checks"] if c["id"] == spec.id and c["status"] != "skipped"]
        if ran:  # (a check skipped for everyone, e.g. the notebooks with --no-notebooks, is left out)
            rates.append((spec.id, sum(c["status"] == "pass" for c in ran) / len(ran)))
    histogram, passing = _figures(scores, maximum, rates) if graded else ("", "")
    diag = Counter()
    for r in graded:
        for c in r["checks"]:
            if c["status"] not in ("pass", "skipped"):
                diag[(c["id"], c["status"], diagnosis(c["message"]))] += 1
    unreadable = [(r["student"], r["not_gradable"]) for r in reports if r.get("not_gradable")]
    for r in graded:  # one line per student and reason, with the checks it cost
        reasons: dict[str, list[str]] = {}
        for c in r["checks"]:
            if c["status"] == "not_gradable":
                reasons.setdefault(c["message"].splitlines()[0] if c["message"] else "", []).append(c["id"])
        unreadable += [(r["student"], f"{why} (checks: {', '.join(ids)})") for why, ids in reasons.items()]
    mean = sum(scores) / len(scores) if scores else 0
    parts = [f"<h1>{escape(rubric.title)}: summary of {len(reports)} submission(s)</h1>",
             '<section id="overview"><h2>Overview</h2>'
             f"<p>{len(graded)} graded, {len(reports) - len(graded)} not gradable at all; mean total {mean:.1f} of "
             f"{maximum:g}; {len(pairs)} similar pair(s) flagged.</p></section>",
             '<section id="histogram"><h2>Score histogram</h2>'
             + (f'<img alt="histogram of the total scores" src="{histogram}">' if histogram else "<p>No scores.</p>")
             + "</section>",
             '<section id="pass-rates"><h2>Pass rate of every check</h2>'
             + (f'<img alt="pass rate per check" src="{passing}">' if passing else "")
             + _table(["check", "passing"], [[escape(rubric.titles.get(cid, cid)) + f" (<code>{cid}</code>)",
                                              f'<span class="num">{100 * rate:.0f}%</span>'] for cid, rate in rates])
             + "</section>",
             '<section id="diagnoses"><h2>Most frequent diagnoses</h2>'
             + _table(["students", "check", "result", "diagnosis"],
                      [[str(n), f"<code>{escape(cid)}</code>", escape(status), escape(text)]
                       for (cid, status, text), n in diag.most_common(25)]) + "</section>",
             '<section id="not-gradable"><h2>Not gradable, and why</h2>'
             + (_table(["student", "why"], [[escape(s), escape(w)] for s, w in unreadable]) if unreadable
                else "<p>Every submission could be graded.</p>") + "</section>",
             '<section id="rules"><h2>Lateness and deliverables</h2>'
             + _table(["student", "late", "deduction", "deliverables flagged"],
                      [[escape(r["student"]), "yes" if r.get("late") else "no",
                        "" if r.get("late_deduction") is None else f"{r['late_deduction']:g}",
                        escape("; ".join(f"{d['title']}: {d['message']}" for d in r.get("deliverables", [])
                                         if d["status"] == "flagged"))]
                       for r in reports if r.get("late") or any(d["status"] == "flagged"
                                                                for d in r.get("deliverables", []))])
             + "</section>",
             '<section id="similar"><h2>Similar submissions (for a person to read; scores unchanged)</h2>'
             + ("".join(_pair(p) for p in pairs) if pairs else "<p>No pair over the threshold.</p>") + "</section>",
             '<section id="students"><h2>Students</h2>'
             + _table(["student", "total", "checks", "late", *(escape(c.title) for c in crits), "report"],
                      [[escape(r["student"]) + (f"<br><small>{escape(', '.join(r['names']))}</small>"
                                                if r.get("names") else ""),
                        "" if r.get("total") is None else f"{r['total']:g}",
                        "" if r.get("score") is None else f"{r['score']:g} / {r['max_score']:g}",
                        "" if not r.get("late_deduction") else f"-{r['late_deduction']:g}",
                        *("" if (r.get("manual") or {}).get(c.id) is None else f"{r['manual'][c.id]:g}"
                          for c in crits),
                        f'<a href="{escape(quote(r["student"]))}/report.md">report.md</a>']
                       for r in reports]) + "</section>"]
    return ("<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{escape(rubric.title)}: summary</title><style>{CSS}</style></head><body>\n"
            + "\n".join(parts) + "\n</body></html>\n")
