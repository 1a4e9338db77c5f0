"""The report's figures: plotly specs built as plain dicts from the report's data.

No plotting library is imported here: a figure is ``{"id", "title", "note",
"data", "layout"}`` with plotly.js's own trace and layout fields, which the
page draws with ``Plotly.newPlot``. Building dicts directly (instead of
``plotly.graph_objects``, which validates every property) keeps 10,000 jobs
well inside the report's time budget, and lets a dashboard send the same
specs as JSON.

PBT-like experiments (jobs with members: PBT, replays) get the population's
story: scores by generation with exploits marked, the lineage tree, the best
schedule against the population, donors, diversity and a timeline. Searches
without members get the score distribution, each hyperparameter against the
score, parallel coordinates and the timeline.
"""

from __future__ import annotations

import html
import math
from collections import Counter, defaultdict
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from .._records import JobStatus
from .._values import canonical
from ._data import finite

__all__ = ["View", "figures", "number"]

#: Above this many jobs, dots give way to lines and bands (the browser stays quick).
MAX_DOTS = 3000

_PALETTE = (
    "#2E91E5", "#E15F99", "#1CA71C", "#FB0D0D", "#DA16FF", "#222A2A", "#B68100", "#750D86",
    "#EB663B", "#511CFB", "#00A08B", "#FB00D1", "#FC0080", "#B2828D", "#6C7C32", "#778AAE",
    "#862A16", "#A777F1", "#620042", "#1616A7", "#DA60CA", "#6C4516", "#0D2A63", "#AF0038",
)  # fmt: skip
#: A job's colour by status (keyed by the members, looked up with the stored strings).
STATUS_COLOURS: dict[str, str] = {
    JobStatus.DONE: "#2ca02c",
    JobStatus.RUNNING: "#1f77b4",
    JobStatus.QUEUED: "#bbbbbb",
    JobStatus.CRASHED: "#d62728",
    JobStatus.PRUNED: "#8c8c8c",
}
_BEST = "#f2a900"
_BEST_EDGE = "#7a5500"


def number(value: Any) -> str:
    """A value as the report prints it: floats to 4 significant digits, None as a dash."""
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return value if isinstance(value, str) else canonical(value)


def _esc(value: Any) -> str:
    """A value for hover text (plotly reads a little HTML there, so text is escaped)."""
    return html.escape(number(value))


def _label(value: Any) -> Any:
    """A categorical value as an axis category: strings as they are, the rest as JSON."""
    return value if value is None or isinstance(value, str) else canonical(value)


def _colour(member: int | None) -> str:
    return _PALETTE[(member or 0) % len(_PALETTE)]


def _axis(title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title},
        "gridcolor": "#eceff3",
        "zerolinecolor": "#d5dae1",
        "linecolor": "#c5ccd6",
        "automargin": True,
        **extra,
    }


def _log_axis(values: Sequence[Any]) -> dict[str, Any]:
    """A log axis with one tick per decade when the values span two or more."""
    numbers = [v for v in (finite(value) for value in values) if v is not None and v > 0]
    axis: dict[str, Any] = {"type": "log", "exponentformat": "power"}
    if numbers and math.log10(max(numbers) / min(numbers)) >= 2:
        axis["dtick"] = 1
    return axis


def _layout(title: str, height: int = 420, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "x": 0.01, "font": {"size": 15}},
        "height": height,
        "margin": {"l": 60, "r": 20, "t": 48, "b": 48},
        "paper_bgcolor": "#ffffff",
        "plot_bgcolor": "#ffffff",
        "font": {"family": "system-ui, -apple-system, 'Segoe UI', Roboto, sans-serif", "size": 12},
        "hoverlabel": {"align": "left"},
        "legend": {"font": {"size": 11}},
        **extra,
    }


def _figure(
    key: str, title: str, note: str, data: list[dict[str, Any]], layout: dict[str, Any]
) -> dict[str, Any]:
    return {"id": key, "title": title, "note": note, "data": data, "layout": layout}


class View:
    """A report's data with what several figures need: rows by id, parents, donors,
    hover texts (each built once), the best lineage as rows."""

    def __init__(self, data: Mapping[str, Any]) -> None:
        jobs = data["jobs"]
        self.data = data
        self.ids: list[str] = jobs["id"]
        self.status: list[str] = jobs["status"]
        self.member: list[int | None] = jobs["member"]
        self.generation: list[int | None] = jobs["generation"]
        self.parent: list[str | None] = jobs["parent_id"]
        self.exploited: list[str | None] = jobs["exploited_from"]
        self.created: list[float] = jobs["created_at"]
        self.updated: list[float] = jobs["updated_at"]
        self.score: list[float | None] = jobs["score"]
        self.error: list[str | None] = jobs["error"]
        self.hp: dict[str, list[Any]] = jobs["hyperparameters"]
        self.results: dict[str, list[Any]] = jobs["results"]
        self.hp_meta: list[dict[str, Any]] = data["hyperparameters"]
        self.row = {job_id: index for index, job_id in enumerate(self.ids)}
        score = data["score"]
        self.score_name: str = score["name"] or "score"
        self.has_score = score["name"] is not None
        self.objective: str | None = score["objective"]
        self.lower_is_better: bool = bool(score.get("lower_is_better"))
        best = data.get("best") or {}
        self.best_id: str | None = best.get("id")
        self.best_lineage: list[int] = [
            self.row[job_id] for job_id in best.get("lineage", []) if job_id in self.row
        ]
        self.members = sorted({m for m in self.member if m is not None})
        self.has_members = bool(self.members)
        self.many = len(self.ids) > MAX_DOTS
        self._hover: list[str | None] = [None] * len(self.ids)

    def parent_row(self, index: int) -> int | None:
        parent = self.parent[index]
        return None if parent is None else self.row.get(parent)

    def donor(self, index: int) -> int | None:
        """The member an exploit copied (the member of the job it copied)."""
        source = self.exploited[index]
        at = None if source is None else self.row.get(source)
        return None if at is None else self.member[at]

    def changed(self, index: int) -> list[tuple[str, Any, Any]]:
        """(name, before, after) for each hyperparameter that differs from the parent's."""
        parent = self.parent_row(index)
        if parent is None:
            return []
        return [
            (name, values[parent], values[index])
            for name, values in self.hp.items()
            if values[parent] != values[index]
            and canonical(values[parent]) != canonical(values[index])
        ]

    def scored(self) -> list[int]:
        """Rows of the jobs with a score."""
        return [i for i, score in enumerate(self.score) if score is not None]

    def hover(self, index: int) -> str:
        """The hover text of a job, built once: who, what it scored, what changed."""
        text = self._hover[index]
        if text is None:
            lines = [f"<b>job {html.escape(self.ids[index])}</b> · {self.status[index]}"]
            if self.member[index] is not None:
                lines.append(f"member {self.member[index]} · generation {self.generation[index]}")
            lines.append(f"{html.escape(self.score_name)} {_esc(self.score[index])}")
            if self.exploited[index] is not None:
                lines.append(
                    f"← member {self.donor(index)} (exploit of job "
                    f"{html.escape(self.exploited[index] or '')})"
                )
            for name, before, after in self.changed(index)[:6]:
                lines.append(f"{html.escape(name)} {_esc(before)} → {_esc(after)}")
            if self.error[index]:
                lines.append(html.escape(self.error[index] or "")[:120])
            text = self._hover[index] = "<br>".join(lines)
        return text

    @staticmethod
    def iso(seconds: float) -> str | None:
        """A time as plotly's date axis reads it (local time, to the millisecond)."""
        if not seconds:
            return None
        return datetime.fromtimestamp(seconds).isoformat(sep=" ", timespec="milliseconds")


def _member_axis(view: View, **extra: Any) -> dict[str, Any]:
    """Members top to bottom, one tick each (every fifth for big populations)."""
    low, high = view.members[0], view.members[-1]
    step = 1 if high - low < 40 else 5
    return _axis("member", dtick=step, range=[high + 0.6, low - 0.6], **extra)


def _score_over_generations(view: View) -> dict[str, Any]:
    traces: list[dict[str, Any]] = []
    by_member: dict[int, list[int]] = defaultdict(list)
    for index, member in enumerate(view.member):
        if None not in (member, view.score[index], view.generation[index]):
            by_member[member].append(index)  # type: ignore[index]
    for member in sorted(by_member):
        # A solid line is one model trained on: it breaks where the member copied another.
        xs: list[Any] = []
        ys: list[Any] = []
        texts: list[Any] = []
        for index in by_member[member]:
            if xs and view.exploited[index] is not None:
                xs.append(None)
                ys.append(None)
                texts.append(None)
            xs.append(view.generation[index])
            ys.append(view.score[index])
            texts.append(view.hover(index))
        traces.append(
            {
                "type": "scatter",
                "mode": "lines" if view.many else "lines+markers",
                "name": f"member {member}",
                "legendgroup": f"member {member}",
                "x": xs,
                "y": ys,
                "text": texts,
                "hovertemplate": "%{text}<extra></extra>",
                "line": {"color": _colour(member), "width": 1.3},
                "marker": {"size": 4},
                "opacity": 0.85,
            }
        )
    # Exploits: a dotted segment from the copied job to the copy, marked at the copy.
    seg_x: list[Any] = []
    seg_y: list[Any] = []
    points: list[int] = []
    for index, source in enumerate(view.exploited):
        if source is None or view.score[index] is None:
            continue
        points.append(index)
        at = view.row.get(source)
        if at is not None and view.score[at] is not None:
            seg_x += [view.generation[at], view.generation[index], None]
            seg_y += [view.score[at], view.score[index], None]
    if points:
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "exploit",
                "legendgroup": "exploit",
                "showlegend": False,
                "x": seg_x,
                "y": seg_y,
                "hoverinfo": "skip",
                "line": {"color": "rgba(90,90,90,0.45)", "width": 1, "dash": "dot"},
            }
        )
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "exploit (donor's colour)",
                "legendgroup": "exploit",
                "x": [view.generation[i] for i in points],
                "y": [view.score[i] for i in points],
                "text": [view.hover(i) for i in points],
                "hovertemplate": "%{text}<extra></extra>",
                "marker": {
                    "symbol": "triangle-up",
                    "size": 6 if view.many else 9,
                    "color": [_colour(view.donor(i)) for i in points],
                    "line": {"color": "#333", "width": 0.7},
                },
            }
        )
    if view.best_lineage:
        rows = [i for i in view.best_lineage if view.score[i] is not None]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines+markers",
                "name": "best schedule",
                "x": [view.generation[i] for i in rows],
                "y": [view.score[i] for i in rows],
                "text": [view.hover(i) for i in rows],
                "hovertemplate": "%{text}<extra></extra>",
                "line": {"color": _BEST, "width": 4},
                "marker": {"size": 7, "color": _BEST, "line": {"color": _BEST_EDGE, "width": 1}},
            }
        )
    note = (
        "One line per population member: its finished jobs' scores by generation, broken "
        "where the member copied a better one. A triangle is such an exploit (it takes the "
        "donor's colour; a dotted line joins the copied job to the copy). "
        "The thick gold line is the schedule that trained the best model."
    )
    layout = _layout(
        f"{html.escape(view.score_name)} over generations",
        height=460,
        xaxis=_axis("generation"),
        yaxis=_axis(html.escape(view.score_name)),
        hovermode="closest",
    )
    return _figure("score", "Score over generations", note, traces, layout)


def _lineage_tree(view: View) -> dict[str, Any]:
    cont_x: list[Any] = []
    cont_y: list[Any] = []
    expl_x: list[Any] = []
    expl_y: list[Any] = []
    nodes = [i for i, m in enumerate(view.member) if m is not None]
    for index in nodes:
        parent = view.parent_row(index)
        if parent is None or view.member[parent] is None:
            continue
        xs, ys = (expl_x, expl_y) if view.exploited[index] is not None else (cont_x, cont_y)
        xs += [view.generation[parent], view.generation[index], None]
        ys += [view.member[parent], view.member[index], None]
    scored = [i for i in nodes if view.score[i] is not None]
    unscored = [i for i in nodes if view.score[i] is None]
    traces: list[dict[str, Any]] = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": "continue",
            "x": cont_x,
            "y": cont_y,
            "hoverinfo": "skip",
            "line": {"color": "rgba(120,130,145,0.55)", "width": 1},
        },
        {
            "type": "scatter",
            "mode": "lines",
            "name": "exploit (copy)",
            "x": expl_x,
            "y": expl_y,
            "hoverinfo": "skip",
            "line": {"color": f"rgba(235,102,59,{0.35 if view.many else 0.8})", "width": 1.2},
        },
    ]
    if view.best_lineage:
        rows = view.best_lineage
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "best schedule",
                "x": [view.generation[i] for i in rows],
                "y": [view.member[i] for i in rows],
                "hoverinfo": "skip",
                "line": {"color": _BEST, "width": 5},
            }
        )
    traces.append(
        {
            "type": "scatter",
            "mode": "markers",
            "name": f"job ({html.escape(view.score_name)})",
            "x": [view.generation[i] for i in scored],
            "y": [view.member[i] for i in scored],
            "text": [view.hover(i) for i in scored],
            "hovertemplate": "%{text}<extra></extra>",
            "marker": {
                "size": 4 if view.many else 8,
                "color": [view.score[i] for i in scored],
                "colorscale": "Viridis",
                "reversescale": view.lower_is_better,
                "showscale": bool(scored),
                "colorbar": {"title": {"text": html.escape(view.score_name)}, "thickness": 12},
                "line": {"color": "rgba(40,40,40,0.4)", "width": 0.5},
            },
        }
    )
    if unscored:
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "name": "job without a score",
                "x": [view.generation[i] for i in unscored],
                "y": [view.member[i] for i in unscored],
                "text": [view.hover(i) for i in unscored],
                "hovertemplate": "%{text}<extra></extra>",
                "marker": {
                    "size": 8,
                    "symbol": "x-thin-open",
                    "color": [STATUS_COLOURS.get(view.status[i], "#999") for i in unscored],
                    "line": {"width": 1.5},
                },
            }
        )
    note = (
        "Every job is a dot at (generation, member), coloured by its score; a cross is a job "
        "without one (running, crashed). A grey edge is a member continuing its own model, an "
        "orange edge an exploit, from the copied job to the copy. Gold: the lineage of the "
        "best model."
    )
    layout = _layout(
        "Lineage tree",
        height=max(360, min(900, 26 * len(view.members) + 140)),
        xaxis=_axis("generation"),
        yaxis=_member_axis(view),
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        hovermode="closest",
    )
    return _figure("lineage", "Lineage tree", note, traces, layout)


def _quantile(values: Sequence[float], q: float) -> float:
    """The q-quantile of sorted ``values`` (linear interpolation)."""
    position = q * (len(values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def _by_generation(view: View, name: str, log: bool) -> dict[int, list[float]]:
    """Numeric values of ``name`` per generation, sorted (as log10 when ``log``)."""
    groups: dict[int, list[float]] = defaultdict(list)
    for index, value in enumerate(view.hp.get(name, ())):
        generation = view.generation[index]
        number = finite(value)
        if generation is None or number is None or (log and number <= 0):
            continue
        groups[generation].append(math.log10(number) if log else number)
    for values in groups.values():
        values.sort()
    return groups


def _population_band(
    view: View, name: str, log: bool, axes: dict[str, str], first: bool
) -> list[dict[str, Any]]:
    """A numeric hyperparameter's population by generation: min–max and middle-half
    bands and the median (dots of every job too, when there are few)."""
    groups = _by_generation(view, name, log)
    generations = sorted(groups)
    unlog: Callable[[float], float] = (lambda v: 10**v) if log else (lambda v: v)
    band = {
        q: [unlog(_quantile(groups[g], q)) for g in generations] for q in (0, 0.25, 0.5, 0.75, 1)
    }
    traces: list[dict[str, Any]] = []
    for low, high, fill, label in (
        (0, 1, "rgba(46,145,229,0.12)", "population min–max"),
        (0.25, 0.75, "rgba(46,145,229,0.28)", "population middle half"),
    ):
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "x": generations + generations[::-1],
                "y": band[high] + band[low][::-1],
                "fill": "toself",
                "fillcolor": fill,
                "line": {"width": 0},
                "name": label,
                "legendgroup": label,
                "showlegend": first,
                "hoverinfo": "skip",
                **axes,
            }
        )
    traces.append(
        {
            "type": "scatter",
            "mode": "lines",
            "x": generations,
            "y": band[0.5],
            "line": {"color": "rgba(46,145,229,0.9)", "width": 1.2, "dash": "dash"},
            "name": "population median",
            "legendgroup": "median",
            "showlegend": first,
            "hovertemplate": "generation %{x}: median %{y:.4g}<extra></extra>",
            **axes,
        }
    )
    if not view.many:
        values = view.hp[name]
        rows = [
            i
            for i, v in enumerate(values)
            if finite(v) is not None and view.generation[i] is not None
        ]
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "x": [view.generation[i] for i in rows],
                "y": [values[i] for i in rows],
                "text": [view.hover(i) for i in rows],
                "hovertemplate": "%{text}<extra></extra>",
                "marker": {"size": 4, "color": "rgba(60,70,90,0.35)"},
                "name": "a job",
                "legendgroup": "jobs",
                "showlegend": first,
                **axes,
            }
        )
    return traces


def _population_shares(view: View, name: str, axes: dict[str, str]) -> list[dict[str, Any]]:
    """A categorical hyperparameter's population: a dot per (generation, value),
    its size the share of that generation's jobs."""
    counts: Counter[tuple[int, str]] = Counter()
    totals: Counter[int] = Counter()
    for index, value in enumerate(view.hp[name]):
        generation = view.generation[index]
        if generation is None or value is None:
            continue
        counts[(generation, _label(value))] += 1
        totals[generation] += 1
    keys = sorted(counts)
    return [
        {
            "type": "scatter",
            "mode": "markers",
            "x": [g for g, _ in keys],
            "y": [label for _, label in keys],
            "text": [f"{counts[k]} of {totals[k[0]]} jobs" for k in keys],
            "hovertemplate": "generation %{x}: %{y}, %{text}<extra></extra>",
            "marker": {
                "size": [4 + 14 * counts[k] / totals[k[0]] for k in keys],
                "color": "rgba(46,145,229,0.45)",
            },
            "name": "population share",
            "showlegend": False,
            **axes,
        }
    ]


def _schedule(view: View) -> dict[str, Any] | None:
    metas = view.hp_meta
    if not metas:
        return None
    # Panels share the height: a numeric one counts 1, a categorical one by its values.
    weights = [
        1.0
        if meta["numeric"]
        else min(1.0, max(0.4, 0.15 * len({_label(v) for v in view.hp[meta["name"]]})))
        for meta in metas
    ]
    gap = 0.05 if len(metas) > 1 else 0.0
    usable = 1 - gap * (len(metas) - 1)
    height = int(max(300, 220 * sum(weights) + 90))
    layout = _layout(
        "Hyperparameters over generations: the best schedule and the population",
        height=height,
        hovermode="closest",
        showlegend=True,
        legend={"orientation": "h", "y": 1.0, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    traces: list[dict[str, Any]] = []
    top = 1.0
    for number_, (meta, weight) in enumerate(zip(metas, weights)):
        name = meta["name"]
        suffix = "" if number_ == 0 else str(number_ + 1)
        axes = {"xaxis": f"x{suffix}", "yaxis": f"y{suffix}"}
        bottom = max(0.0, top - usable * weight / sum(weights))
        log = bool(meta["log"])
        last = number_ == len(metas) - 1
        kind = (
            _log_axis(view.hp[name])
            if log
            else {"type": "linear" if meta["numeric"] else "category"}
        )
        layout[f"yaxis{suffix}"] = _axis(
            html.escape(name) + ("<br>(explored)" if meta["explored"] else ""),
            domain=[bottom, top],
            anchor=axes["xaxis"],
            **kind,
        )
        layout[f"xaxis{suffix}"] = _axis(
            "generation" if last else "",
            anchor=axes["yaxis"],
            showticklabels=last,
            **({} if number_ == 0 else {"matches": "x"}),
        )
        top = bottom - gap
        if meta["numeric"]:
            traces += _population_band(view, name, log, axes, number_ == 0)
        else:
            traces += _population_shares(view, name, axes)
        values = view.hp[name]
        rows = [
            i for i in view.best_lineage if values[i] is not None and view.generation[i] is not None
        ]
        if rows:
            traces.append(
                {
                    "type": "scatter",
                    "mode": "lines+markers",
                    "line": {"color": _BEST, "width": 3, "shape": "hv"},
                    "marker": {
                        "size": 6,
                        "color": _BEST,
                        "line": {"color": _BEST_EDGE, "width": 1},
                    },
                    "x": [view.generation[i] for i in rows],
                    "y": [values[i] if meta["numeric"] else _label(values[i]) for i in rows],
                    "text": [view.hover(i) for i in rows],
                    "hovertemplate": "%{text}<extra></extra>",
                    "name": "best schedule",
                    "legendgroup": "best",
                    "showlegend": number_ == 0,
                    **axes,
                }
            )
    note = (
        "Per hyperparameter (explored ones first): the population by generation (light: "
        "min–max, darker: middle half, dashed: median; for a categorical one, a dot per "
        "value sized by its share) and, in gold, the values of the schedule that trained "
        "the best model, step by step."
    )
    return _figure("schedule", "Best schedule and population", note, traces, layout)


def _donors(view: View) -> dict[str, Any]:
    copied: Counter[int] = Counter()
    replaced: Counter[int] = Counter()
    for index, source in enumerate(view.exploited):
        if source is None:
            continue
        donor = view.donor(index)
        if donor is not None:
            copied[donor] += 1
        member = view.member[index]
        if member is not None:
            replaced[member] += 1
    members = view.members
    traces = [
        {
            "type": "bar",
            "name": "was copied (donor)",
            "x": members,
            "y": [copied[m] for m in members],
            "marker": {"color": [_colour(m) for m in members]},
            "hovertemplate": "member %{x} was copied %{y} times<extra></extra>",
        },
        {
            "type": "bar",
            "name": "copied another (replaced)",
            "x": members,
            "y": [replaced[m] for m in members],
            "marker": {"color": "rgba(120,130,145,0.55)"},
            "hovertemplate": "member %{x} copied another %{y} times<extra></extra>",
        },
    ]
    note = (
        f"{sum(copied.values()):,} exploits in all. Coloured: how often each member's model "
        "was copied by another; grey: how often the member itself was replaced by a copy."
    )
    layout = _layout(
        "Donors: who was copied",
        height=360,
        barmode="group",
        xaxis=_axis("member", type="category"),
        yaxis=_axis("exploits"),
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
    )
    return _figure("donors", "Donors", note, traces, layout)


def _founders(view: View) -> dict[int, int]:
    """Generation -> how many generation-0 ancestors its jobs descend from."""
    root: list[int] = []
    for index in range(len(view.ids)):
        parent = view.parent_row(index)
        # Jobs come in creation order, so a parent's root is known before its children's.
        root.append(index if parent is None or parent >= index else root[parent])
    founders: dict[int, set[int]] = defaultdict(set)
    for index, generation in enumerate(view.generation):
        if generation is not None and view.member[index] is not None:
            founders[generation].add(root[index])
    return {generation: len(roots) for generation, roots in sorted(founders.items())}


def _diversity(view: View) -> dict[str, Any] | None:
    traces: list[dict[str, Any]] = []
    for meta in view.hp_meta:
        name = meta["name"]
        if meta["numeric"]:
            groups = _by_generation(view, name, bool(meta["log"]))
            generations = sorted(groups)
            spread = [_quantile(groups[g], 0.9) - _quantile(groups[g], 0.1) for g in generations]
            what = "10–90% range" + (" in decades" if meta["log"] else "")
        else:
            distinct: dict[int, set[str]] = defaultdict(set)
            for index, value in enumerate(view.hp[name]):
                generation = view.generation[index]
                if generation is not None and value is not None:
                    distinct[generation].add(_label(value))
            generations = sorted(distinct)
            spread = [float(len(distinct[g])) for g in generations]
            what = "distinct values"
        if not generations or not spread[0]:
            continue  # nothing to compare with: one value at generation 0
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": html.escape(name),
                "x": generations,
                "y": [value / spread[0] for value in spread],
                "text": [f"{what}: {value:.3g}" for value in spread],
                "hovertemplate": f"{html.escape(name)}, generation %{{x}}: "
                "%{y:.2f} of generation 0's (%{text})<extra></extra>",
                "line": {"width": 2},
            }
        )
    founders = _founders(view)
    if founders:
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": "founding lineages alive (right axis)",
                "x": list(founders),
                "y": list(founders.values()),
                "yaxis": "y2",
                "line": {"color": "#222A2A", "width": 2.5, "dash": "dot"},
                "hovertemplate": "generation %{x}: %{y} founding lineages<extra></extra>",
            }
        )
    if not traces:
        return None
    note = (
        "How the population's diversity evolves. Solid lines (left axis): each "
        "hyperparameter's spread at a generation (the 10–90% range of its values, in "
        "decades for log-scaled ones, or its number of distinct values) as a fraction of "
        "generation 0's. Dotted (right axis): how many generation-0 jobs still have "
        "descendants at that generation; exploits make lineages die out."
    )
    layout = _layout(
        "Diversity: spread of each hyperparameter per generation",
        height=400,
        xaxis=_axis("generation"),
        yaxis=_axis("spread (fraction of generation 0's)", rangemode="tozero"),
        yaxis2=_axis(
            "founding lineages alive",
            overlaying="y",
            side="right",
            rangemode="tozero",
            showgrid=False,
            dtick=max(1, math.ceil(max(founders.values(), default=1) / 6)),
        ),
        legend={"orientation": "h", "y": -0.2},
        hovermode="closest",
    )
    return _figure("diversity", "Diversity", note, traces, layout)


def _lanes(view: View, rows: Sequence[int]) -> dict[int, int]:
    """Jobs packed into as few lanes as never overlap (first free lane, by start)."""
    lane: dict[int, int] = {}
    ends: list[float] = []
    for index in sorted(rows, key=lambda i: view.created[i]):
        free = next((k for k, end in enumerate(ends) if end <= view.created[index]), None)
        if free is None:
            free = len(ends)
            ends.append(0.0)
        ends[free] = view.updated[index]
        lane[index] = free
    return lane


def _timeline(view: View) -> dict[str, Any] | None:
    rows = [i for i in range(len(view.ids)) if view.created[i] and view.updated[i]]
    if not rows:
        return None
    if view.has_members:
        lane = {i: view.member[i] or 0 for i in rows}
        title = "member"
        where = "Lanes are population members"
    else:
        lane = _lanes(view, rows)
        title = "lane"
        where = "Jobs are packed into as few lanes as never overlap (about one per worker)"
    traces = []
    for status, colour in STATUS_COLOURS.items():
        chosen = [i for i in rows if view.status[i] == status]
        if not chosen:
            continue
        xs: list[Any] = []
        ys: list[Any] = []
        texts: list[Any] = []
        for index in chosen:
            start, end = view.iso(view.created[index]), view.iso(view.updated[index])
            hover = (
                f"{view.hover(index)}<br>{(start or '')[11:19]} → {(end or '')[11:19]} "
                f"({view.updated[index] - view.created[index]:.3g} s)"
            )
            xs += [start, end, None]
            ys += [lane[index], lane[index], None]
            texts += [hover, hover, None]
        traces.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": str(status),
                "x": xs,
                "y": ys,
                "text": texts,
                "hovertemplate": "%{text}<extra></extra>",
                "line": {"color": colour, "width": 5 if view.many else 10},
            }
        )
    used = sorted(set(lane.values()))
    layout = _layout(
        "Timeline: which job ran when",
        height=max(260, min(900, 24 * len(used) + 150)),
        xaxis=_axis("time (created → last update)", type="date"),
        yaxis=_axis(
            title,
            dtick=1 if used[-1] - used[0] < 40 else 5,
            range=[used[-1] + 0.6, used[0] - 0.6],
        ),
        legend={"orientation": "h", "y": 1.02, "yanchor": "bottom", "x": 1, "xanchor": "right"},
        hovermode="closest",
    )
    note = (
        "Each bar is a job, from its creation to its last update (its end, for a finished "
        f"one). {where}: schedy does not store which worker or host ran a job."
    )
    return _figure("timeline", "Timeline", note, traces, layout)


def _distribution(view: View) -> dict[str, Any] | None:
    rows = view.scored()
    if not rows:
        return None
    name = html.escape(view.score_name)
    trace = {
        "type": "histogram",
        "x": [view.score[i] for i in rows],
        "marker": {"color": "#2E91E5", "line": {"color": "#fff", "width": 1}},
        "hovertemplate": f"{name} %{{x}}: %{{y}} jobs<extra></extra>",
        "name": name,
    }
    layout = _layout(
        f"Distribution of {name}",
        height=340,
        xaxis=_axis(name),
        yaxis=_axis("jobs"),
        bargap=0.04,
    )
    note = f"{len(rows):,} jobs reported a numeric {name}."
    return _figure("distribution", "Score distribution", note, [trace], layout)


def _hp_vs_score(view: View) -> dict[str, Any] | None:
    rows = view.scored()
    metas = view.hp_meta
    if not rows or not metas:
        return None
    columns = min(3, len(metas))
    lines = math.ceil(len(metas) / columns)
    gap_x, gap_y = 0.07, 0.16 / lines
    width = (1 - gap_x * (columns - 1)) / columns
    height = (1 - gap_y * (lines - 1)) / lines
    layout = _layout(
        f"Hyperparameters against {html.escape(view.score_name)}",
        height=max(320, 280 * lines + 40),
        showlegend=False,
        hovermode="closest",
    )
    traces = []
    for number_, meta in enumerate(metas):
        suffix = "" if number_ == 0 else str(number_ + 1)
        column, line = number_ % columns, number_ // columns
        left = column * (width + gap_x)
        top = 1 - line * (height + gap_y)
        values = view.hp[meta["name"]]
        chosen = [i for i in rows if values[i] is not None]
        kind = (
            _log_axis(values)
            if meta["log"]
            else {"type": "linear" if meta["numeric"] else "category"}
        )
        layout[f"xaxis{suffix}"] = _axis(
            html.escape(meta["name"]), domain=[left, left + width], anchor=f"y{suffix}", **kind
        )
        layout[f"yaxis{suffix}"] = _axis(
            html.escape(view.score_name) if column == 0 else "",
            domain=[max(0.0, top - height), top],
            anchor=f"x{suffix}",
            **({} if number_ == 0 else {"matches": "y"}),
        )
        traces.append(
            {
                "type": "scatter",
                "mode": "markers",
                "x": [values[i] if meta["numeric"] else _label(values[i]) for i in chosen],
                "y": [view.score[i] for i in chosen],
                "text": [view.hover(i) for i in chosen],
                "hovertemplate": "%{text}<extra></extra>",
                "marker": {
                    "size": 4 if view.many else 7,
                    "color": [view.score[i] for i in chosen],
                    "colorscale": "Viridis",
                    "reversescale": view.lower_is_better,
                    "opacity": 0.8,
                },
                "xaxis": f"x{suffix}",
                "yaxis": f"y{suffix}",
            }
        )
    note = "Each dot is a job with a score; one panel per hyperparameter."
    return _figure("hp-vs-score", "Hyperparameters against the score", note, traces, layout)


def _parallel(view: View) -> dict[str, Any] | None:
    rows = view.scored()
    if not rows or not view.hp_meta:
        return None
    dimensions: list[dict[str, Any]] = []
    for meta in view.hp_meta[:11]:
        values = view.hp[meta["name"]]
        label = html.escape(meta["name"])
        if meta["numeric"] and meta["log"]:
            logs = [
                None if v is None or v <= 0 else math.log10(v)
                for v in (finite(values[i]) for i in rows)
            ]
            present = [v for v in logs if v is not None]
            if not present:
                continue
            ticks = list(range(math.floor(min(present)), math.ceil(max(present)) + 1))
            dimensions.append(
                {
                    "label": f"{label} (log)",
                    "values": logs,
                    "tickvals": ticks,
                    "ticktext": [f"1e{t}" for t in ticks],
                }
            )
        elif meta["numeric"]:
            dimensions.append({"label": label, "values": [finite(values[i]) for i in rows]})
        else:
            texts = [_label(values[i]) for i in rows]
            categories = sorted({t for t in texts if t is not None})
            code = {text: at for at, text in enumerate(categories)}
            dimensions.append(
                {
                    "label": label,
                    "values": [None if t is None else code[t] for t in texts],
                    "tickvals": list(range(len(categories))),
                    "ticktext": [html.escape(c) for c in categories],
                }
            )
    if not dimensions:
        return None
    scores = [view.score[i] for i in rows]
    dimensions.append({"label": html.escape(view.score_name), "values": scores})
    trace = {
        "type": "parcoords",
        "dimensions": dimensions,
        "line": {
            "color": scores,
            "colorscale": "Viridis",
            "reversescale": view.lower_is_better,
            "showscale": True,
            "colorbar": {"title": {"text": html.escape(view.score_name)}, "thickness": 12},
        },
    }
    layout = _layout(
        "Parallel coordinates", height=460, margin={"l": 70, "r": 90, "t": 80, "b": 30}
    )
    note = "One line per job with a score. Drag along an axis to keep only the jobs in a range."
    return _figure("parallel", "Parallel coordinates", note, [trace], layout)


def figures(data: Mapping[str, Any], view: View | None = None) -> list[dict[str, Any]]:
    """The report's plotly figures (``{"id", "title", "note", "data", "layout"}``) for
    :func:`~schedy._report.report_data`'s ``data``: PBT-like experiments (jobs with
    members) get the population's views, searches the score and hyperparameter views."""
    view = View(data) if view is None else view
    if not view.ids:
        return []
    built: list[dict[str, Any] | None]
    if view.has_members:
        several = len(view.members) > 1
        built = [
            _score_over_generations(view) if view.scored() else None,
            _lineage_tree(view),
            _schedule(view),
            _donors(view) if several and any(view.exploited) else None,
            _diversity(view) if several else None,
            _timeline(view),
        ]
    else:
        built = [_distribution(view), _hp_vs_score(view), _parallel(view), _timeline(view)]
    return [figure for figure in built if figure is not None]
