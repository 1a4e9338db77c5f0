"""The report's data step: an experiment read once into plain JSON data.

Kept apart from plotting so that anything can show the same numbers: the
HTML report renders this dict, a server dashboard can send it as it is.
Jobs come as columns (one list per field, a row per job in creation order):
that is what every figure iterates over, and it stays small in JSON.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any

from .._records import JobStatus
from .._values import canonical, is_number
from ..pbt import Objective

if TYPE_CHECKING:
    from ..experiments import Experiment
    from ..jobs import Job

__all__ = ["HISTORY_KEY", "finite", "report_data"]

#: The results key where the integrations keep per-epoch metric histories: too
#: big for a table cell, and already summed up by the per-job scores.
HISTORY_KEY = "history"
#: Distributions whose values are read on a log scale.
_LOG_DISTRIBUTIONS = frozenset({"loguniform", "lognormal", "intloguniform"})
#: At most this many result columns (the first ones seen).
_MAX_RESULT_COLUMNS = 16
#: A non-scalar value is kept as its JSON, cut to this many characters.
_MAX_TEXT = 80
#: Words that make a result read "lower is better" when the experiment has no objective.
_LOWER_IS_BETTER = ("loss", "error", "err", "mse", "mae", "rmse", "cost", "regret", "time")
#: The stored objectives that rank jobs (an experiment without one stores None).
_OBJECTIVES = tuple(Objective)

_FIELDS = (
    "id",
    "status",
    "member",
    "generation",
    "parent_id",
    "exploited_from",
    "created_at",
    "updated_at",
    "score",
    "error",
)


def finite(value: Any) -> float | None:
    """A number as a finite float for plotting; None for NaN, ±inf, bools and the rest."""
    if isinstance(value, bool) or not is_number(value):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _cell(value: Any) -> Any:
    """A value as the report keeps it: scalars as they are (NaN as None), the rest as cut JSON."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if is_number(value):
        return finite(value) if isinstance(value, float) else int(value)
    text = canonical(value)
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def _pick_score(experiment: Experiment, jobs: Sequence[Job], score: str | None) -> str | None:
    """The result that ranks jobs: the caller's, the experiment's own, or else the
    numeric result most DONE jobs reported (a manual or random search has none)."""
    if score is not None:
        return score
    own = experiment._result_name
    if own is not None:
        return own
    counts: Counter[str] = Counter()
    for job in jobs:
        if job.status == JobStatus.DONE:
            counts.update(
                name
                for name, value in job.results.items()
                if name != HISTORY_KEY and finite(value) is not None
            )
    return counts.most_common(1)[0][0] if counts else None


def _lineage(best: str, by_id: Mapping[str, int], parents: Sequence[str | None]) -> list[str]:
    """The ids from ``best``'s generation-0 ancestor to it, read from memory."""
    chain: list[str] = []
    at: str | None = best
    while at is not None and at in by_id and at not in chain:
        chain.append(at)
        at = parents[by_id[at]]
    chain.reverse()
    return chain


def report_data(experiment: Experiment, *, score: str | None = None) -> dict[str, Any]:
    """Everything the report shows, read from the store in one pass, as JSON data.

    ``score`` names the result that ranks jobs (default: the experiment's
    ``result_name``; for a manual or random search, the numeric result most
    finished jobs reported). The dict holds ``experiment`` (name, kind,
    status, configuration), ``score`` (``name``, ``objective``: ``max``,
    ``min`` or None, and ``lower_is_better``, a display hint), ``hyperparameters``
    (per name: whether numeric, log-scaled, explored), ``jobs`` (one list per
    field, a row per job in creation order: ``id``, ``status``, ``member``,
    ``generation``, ``parent_id``, ``exploited_from``, ``created_at``,
    ``updated_at``, ``score`` (a DONE job's, else None), ``error`` (its last line), then
    ``hyperparameters`` and ``results`` as ``{name: [value per job]}``; the
    results' ``history`` is left out, NaN is None) and ``best`` (the id of
    :meth:`~schedy.Experiment.best` and its lineage's ids, or None).
    ``json.dumps`` takes it as it is.
    """
    jobs = list(experiment.all_jobs())
    score_name = _pick_score(experiment, jobs, score)
    config = experiment._config() if experiment.unreadable is None else {}
    objective = config.get("objective")
    columns: dict[str, list[Any]] = {field: [] for field in _FIELDS}
    hyperparameters: dict[str, list[Any]] = {}
    results: dict[str, list[Any]] = {}
    for row, job in enumerate(jobs):
        columns["id"].append(job.id)
        columns["status"].append(str(job.status))
        columns["member"].append(job.member)
        columns["generation"].append(job.generation)
        columns["parent_id"].append(job.parent_id)
        columns["exploited_from"].append(job.exploited_from)
        columns["created_at"].append(job.created_at)
        columns["updated_at"].append(job.updated_at)
        # Only a finished job has a score of its own: a running or crashed one still
        # holds the results it started from (its parent's, for PBT).
        done = job.status == JobStatus.DONE and score_name is not None
        scored = done and score_name is not None
        columns["score"].append(finite(job.results.get(score_name or "")) if scored else None)
        lines = job.error.strip().splitlines() if job.error else []
        columns["error"].append(lines[-1][:200] if lines else None)
        for name, value in job.hyperparameters.items():
            hyperparameters.setdefault(name, [None] * row).append(_cell(value))
        for name, value in job.results.items():
            if name in (HISTORY_KEY, score_name):
                continue
            if name not in results and len(results) >= _MAX_RESULT_COLUMNS:
                continue
            results.setdefault(name, [None] * row).append(_cell(value))
        for values in (*hyperparameters.values(), *results.values()):
            if len(values) <= row:  # this job has no such value
                values.append(None)
    best = experiment.best() if objective in _OBJECTIVES else None
    by_id = {job_id: index for index, job_id in enumerate(columns["id"])}
    lower = (
        objective == Objective.MINIMIZE
        if objective in _OBJECTIVES
        else any(word in (score_name or "").lower() for word in _LOWER_IS_BETTER)
    )
    return {
        "schedy_report": 1,
        "generated_at": datetime.now(timezone.utc).timestamp(),
        "experiment": {
            "name": experiment.name,
            "kind": experiment._KIND,
            "status": str(experiment.status),
            "config": config,
            "unreadable": experiment.unreadable,
        },
        "score": {"name": score_name, "objective": objective, "lower_is_better": lower},
        "hyperparameters": _describe_hyperparameters(config, hyperparameters),
        "jobs": {**columns, "hyperparameters": hyperparameters, "results": results},
        "best": None
        if best is None or best.id not in by_id
        else {"id": best.id, "lineage": _lineage(best.id, by_id, columns["parent_id"])},
    }


def _describe_hyperparameters(
    config: Mapping[str, Any], values: Mapping[str, Sequence[Any]]
) -> list[dict[str, Any]]:
    """Per hyperparameter: numeric or not, log-scaled or not, explored or not;
    explored ones first (they are what PBT changes)."""
    distributions = {
        **(config.get("initial_distributions") or {}),
        **(config.get("distributions") or {}),
    }
    explored = set(config.get("explore") or {})
    described = []
    for name, column in values.items():
        present = [value for value in column if value is not None]
        numbers = [finite(value) for value in present]
        numeric = bool(present) and all(number is not None for number in numbers)
        kind = next(iter(distributions.get(name) or {}), None)
        log = numeric and kind in _LOG_DISTRIBUTIONS
        if numeric and kind is None:
            low, high = min(present), max(present)
            log = low > 0 and high / low >= 100
        if log and min(present) <= 0:
            log = False
        described.append(
            {"name": name, "numeric": numeric, "log": bool(log), "explored": name in explored}
        )
    described.sort(key=lambda entry: not entry["explored"])
    return described
