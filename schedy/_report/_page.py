"""The report's page: the figures, a summary, the best schedule and the job table
in one HTML document that needs nothing but itself.

plotly.js is inlined once; each figure's spec and the job table's rows are
embedded as JSON (``<script type="application/json">``, made safe against
``</script>``), and a few lines of inline JavaScript (``assets/``) draw the
figures and sort and filter the table. A Content-Security-Policy lets the
page make no request at all, and any script error or blocked request is
shown at its top (which is also how the browser test reads it).
"""

from __future__ import annotations

import html
import json
import shlex
from collections import Counter
from collections.abc import Mapping
from datetime import datetime
from functools import cache
from importlib import resources
from typing import Any

from .. import _lineage
from ..pbt import Objective
from ._figures import View, figures, number

__all__ = ["asset", "json_for_script", "page_parts", "plotly_js", "render"]

#: Job table rows drawn at once (filtering and sorting run over all of them).
TABLE_PAGE = 500

#: No request may leave the page: scripts and styles only inline, images only data.
#: ('unsafe-eval': plotly's parallel coordinates compile their WebGL shaders with it.)
_CSP = (
    "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; style-src 'unsafe-inline'; "
    "img-src data: blob:; font-src data:"
)


@cache
def asset(name: str) -> str:
    """One of the page's scripts or its style sheet (``assets/``)."""
    return (resources.files(__package__) / "assets" / name).read_text(encoding="utf-8")


def plotly_js() -> str:
    try:
        from plotly.offline import get_plotlyjs
    except ImportError:
        raise ImportError("the schedy report needs plotly: pip install 'schedy[report]'") from None
    script: str = get_plotlyjs()
    return script


def json_for_script(value: Any) -> str:
    """JSON that is safe inside ``<script type="application/json">``: no ``<`` at all
    (``\\u003c`` reads the same to ``JSON.parse``), so no value can end the element."""
    return json.dumps(value, separators=(",", ":"), allow_nan=False).replace("<", "\\u003c")


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def _cards(view: View) -> str:
    """The summary at the top: jobs, the best score, members, generations, wall time."""
    counts = Counter(view.status)
    cards: list[tuple[str, str, str]] = [
        ("jobs", f"{len(view.ids):,}", ", ".join(f"{n:,} {s}" for s, n in sorted(counts.items())))
    ]
    index = None if view.best_id is None else view.row.get(view.best_id)
    if index is not None:
        where = (
            ""
            if view.member[index] is None
            else f" · member {view.member[index]}, generation {view.generation[index]}"
        )
        cards.append(
            (f"best {view.score_name}", number(view.score[index]), f"job {view.best_id}{where}")
        )
    elif view.scored():
        scores = [s for s in view.score if s is not None]
        cards.append(
            (view.score_name, f"{min(scores):.4g} to {max(scores):.4g}", f"{len(scores):,} scored")
        )
    if view.has_members:
        generations = [g for g in view.generation if g is not None]
        exploits = sum(1 for e in view.exploited if e is not None)
        cards.append(("members", str(len(view.members)), f"{exploits:,} exploits"))
        deepest = max(generations) + 1 if generations else 0
        cards.append(("generations", str(deepest), "behind the deepest model"))
    times = [t for t in (*view.created, *view.updated) if t]
    if times:
        start = datetime.fromtimestamp(min(times)).strftime("%Y-%m-%d %H:%M")
        cards.append(("wall time", _duration(max(times) - min(times)), f"from {start}"))
    return "".join(
        f'<div class="card"><div class="k">{html.escape(k)}</div><div class="v">{html.escape(v)}'
        f'</div><div class="s">{html.escape(s)}</div></div>'
        for k, v, s in cards
    )


def _best_section(view: View, name: str) -> str:
    """The best schedule as a table (runs of unchanged steps folded), and how to replay it."""
    if not view.best_lineage or not view.has_members:
        return ""
    steps = [
        {
            "job_id": view.ids[i],
            "member": view.member[i],
            "generation": view.generation[i],
            "hyperparameters": {hp: values[i] for hp, values in view.hp.items()},
            "score": view.score[i],
            "exploited_from": view.exploited[i],
        }
        for i in view.best_lineage
    ]
    rows = _lineage.changes(_lineage.fold(steps))
    names = list(view.hp)
    head = "".join(
        f"<th>{html.escape(h)}</th>"
        for h in ["generations", "member", "jobs", "from", *names, view.score_name]
    )
    lines = []
    previous: int | None = None
    for row in rows:
        first, last = row["generations"]
        span = str(first) if first == last else f"{first}–{last}"
        if row.get("exploited_from") is not None:
            source = f"← member {previous} (exploit)"
        else:
            source = "start" if previous is None else ""
        cells = [span, str(row["member"]), str(row["jobs"]), source]
        cells += [
            number(row["hyperparameters"][n]) if n in row["hyperparameters"] else "" for n in names
        ]
        cells.append(number(row["score"]))
        classes = ' class="exploit"' if row.get("exploited_from") is not None else ""
        lines.append(
            f"<tr{classes}>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"
        )
        previous = row["member"]
    command = (
        f"schedy replay {shlex.quote(name)} {view.best_id} --name {shlex.quote(name + ' replay')}"
    )
    return (
        '<section id="best"><h2>The best schedule</h2><p class="note">The chain of jobs that '
        f"trained the best model (job <code>{html.escape(view.best_id or '')}</code>), oldest "
        "first; runs of steps with unchanged hyperparameters are folded into one row, and a "
        "hyperparameter is shown only where it changed. Retrain it from scratch with "
        f"<code>{html.escape(command)}</code>.</p>"
        f'<div class="tablewrap short"><table><thead><tr>{head}</tr></thead>'
        f"<tbody>{''.join(lines)}</tbody></table></div></section>"
    )


def _table_spec(view: View) -> dict[str, Any]:
    """The job table as JSON for ``assets/table.js``: columns, rows, the first sort."""
    columns: list[tuple[str, list[Any], bool]] = [
        ("id", view.ids, False),
        ("status", view.status, False),
    ]
    if view.has_members:
        columns += [
            ("member", view.member, False),
            ("generation", view.generation, False),
            ("parent", view.parent, False),
            ("exploited_from", view.exploited, False),
        ]
    score_column = len(columns)
    columns.append((view.score_name, view.score, not view.lower_is_better))
    columns += [(name, values, False) for name, values in view.hp.items()]
    columns += [(name, values, False) for name, values in view.results.items()]
    created = [view.iso(t) for t in view.created]
    seconds = [
        round(end - start, 3) if start and end else None
        for start, end in zip(view.created, view.updated)
    ]
    columns += [
        ("created", created, False),
        ("seconds", seconds, True),
        ("error", view.error, False),
    ]
    return {
        "columns": [{"name": name, "desc": desc} for name, _, desc in columns],
        "rows": [list(row) for row in zip(*(values for _, values, _ in columns))],
        "page": TABLE_PAGE,
        "best": view.best_id,
        "sort": score_column if view.scored() else None,
        "desc": not view.lower_is_better,
    }


#: How the summary line words each objective.
_VERBS: dict[str, str] = {Objective.MAXIMIZE: "maximize ", Objective.MINIMIZE: "minimize "}


def _summary(data: Mapping[str, Any]) -> str:
    experiment = data["experiment"]
    config = experiment.get("config") or {}
    parts = [str(experiment["kind"]), f"status {experiment['status']}"]
    score = data["score"]
    if score["name"]:
        verb = _VERBS.get(score["objective"] or "", "score: ")
        parts.append(verb + score["name"])
    if config.get("population_size"):
        parts.append(f"population {config['population_size']}")
    if config.get("max_generations"):
        parts.append(f"at most {config['max_generations']} generations")
    source = config.get("source") if experiment["kind"] == "replay" else None
    if isinstance(source, Mapping):
        parts.append(f"replay of job {source.get('job_id')} of {source.get('experiment')!r}")
    generated = datetime.fromtimestamp(data["generated_at"]).strftime("%Y-%m-%d %H:%M")
    parts.append(f"report of {generated}")
    return " · ".join(parts)


def page_parts(data: Mapping[str, Any]) -> dict[str, Any]:
    """The page's pieces, so that :func:`render` and the server's dashboard (which
    swaps them in place as an experiment runs) lay out the same views.

    ``title`` and ``summary`` are text; ``nav``, ``body``, ``cards`` and ``best``
    are HTML with every stored string escaped (``cards`` and ``best`` are also
    inside ``body``: the summary cards' content and the best schedule's
    section, ``""`` when there is none); ``figures`` are the plotly specs,
    ``table`` the job table's spec for ``assets/table.js`` (None without
    jobs), ``jobs`` the number of jobs.
    """
    view = View(data)
    built = figures(data, view)
    name = data["experiment"]["name"]
    sections: list[str] = []
    nav: list[tuple[str, str]] = []
    unreadable = data["experiment"].get("unreadable")
    if unreadable:
        sections.append(f'<section><p class="muted">{html.escape(unreadable)}</p></section>')
    best = _best_section(view, name)
    if best:
        sections.append(best)
        nav.append(("best", "Best schedule"))
    for figure in built:
        nav.append((figure["id"], figure["title"]))
        sections.append(
            f'<section id="{figure["id"]}"><h2>{html.escape(figure["title"])}</h2>'
            f'<p class="note">{html.escape(figure["note"])}</p>'
            f'<div class="plot" id="plot-{figure["id"]}"></div></section>'
        )
    if not view.ids:
        sections.append('<section><p class="muted">This experiment has no job yet.</p></section>')
    spec = None
    if view.ids:
        spec = _table_spec(view)
        nav.append(("jobs-section", "Jobs"))
        head = "".join(f"<th>{html.escape(col['name'])}</th>" for col in spec["columns"])
        options = "".join(f'<option value="{s}">{s}</option>' for s in sorted(set(view.status)))
        sections.append(
            '<section id="jobs-section"><h2>Jobs</h2><div class="tools">'
            '<input id="jobs-filter" type="search" '
            'placeholder="filter: any text in a row (id, value, status…)">'
            f'<select id="jobs-status"><option value="">every status</option>{options}</select>'
            '<span id="jobs-count" class="muted"></span></div>'
            '<p class="note">Click a column to sort by it (again: the other way round); '
            "missing values go last. The best job is highlighted.</p>"
            f'<div class="tablewrap"><table id="jobs"><thead><tr>{head}</tr></thead>'
            "<tbody></tbody></table></div></section>"
        )
    cards = _cards(view)
    return {
        "title": name,
        "summary": _summary(data),
        "nav": "".join(f'<a href="#{key}">{html.escape(label)}</a>' for key, label in nav),
        "cards": cards,
        "best": best,
        "body": f'<div class="cards">{cards}</div>' + "".join(sections),
        "figures": built,
        "table": spec,
        "jobs": len(view.ids),
    }


def render(data: Mapping[str, Any]) -> str:
    """The report page for :func:`~schedy._report.report_data`'s ``data``: one
    self-contained HTML document (a string).

    Needs plotly (``pip install 'schedy[report]'``) for its JavaScript, which
    is inlined; the page makes no request (its Content-Security-Policy
    forbids it) and shows any script error at its top.
    """
    script = plotly_js()
    parts = page_parts(data)
    scripts = [
        f'<script type="application/json" id="figures-data">'
        f"{json_for_script(parts['figures'])}</script>",
        f"<script>{script}</script>",
        f"<script>{asset('plots.js')}</script>",
    ]
    if parts["table"] is not None:
        scripts.append(
            f'<script type="application/json" id="table-data">'
            f"{json_for_script(parts['table'])}</script>"
        )
        scripts.append(f"<script>{asset('table.js')}</script>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{html.escape(parts['title'])} · schedy report</title>"
        f"<style>{asset('report.css')}</style><script>{asset('errors.js')}</script></head>"
        f"<body><header><h1>{html.escape(parts['title'])}</h1>"
        f'<div class="sub">{html.escape(parts["summary"])}</div></header>'
        f"<nav>{parts['nav']}</nav>"
        f'<main><div id="report-errors"></div>{parts["body"]}'
        f"<footer>schedy report · {parts['jobs']:,} jobs · one file, works offline</footer>"
        "</main>" + "".join(scripts) + "</body></html>\n"
    )
