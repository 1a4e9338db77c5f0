"""What an experiment tracker is given for one finished job: pure data, no tracker imported.

Trackers such as TensorBoard and MLflow assume a run has fixed parameters
and one growing curve. PBT breaks both: a member's hyperparameters change
at every explore, and its model is replaced by a better member's at every
exploit. :mod:`schedy.integrations.trackers` gives them a shape that holds
(one run per member, hyperparameters as step-indexed *metrics*, exploits
marked), and this module computes that shape from a job and its parent, so
the TensorBoard and MLflow writers only write it:

- the *run* a job belongs to (:func:`run_name`: its member's, or its own
  root job's when it has no member, e.g. random search);
- its *points* (:func:`job_log`): per epoch the job trained -- the entries
  of ``results['history']`` past the parent's, since PBT copies the
  parent's results and the history spans the whole lineage -- the metrics,
  the numeric hyperparameters under ``hp/<name>`` and ``schedy/generation``;
  at its first step, ``schedy/exploited_from_member`` when it copied a
  better member;
- a one-paragraph *note* saying what the job did (hyperparameters changed,
  member copied), for a tracker's text or tags.

The step of a point is the lineage's epoch (or optimizer step) as the
integrations record it, so a member's curve continues across its jobs and
an exploit shows where the copied model stood.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeAlias

from .._records import JobStatus
from ._core import EPOCH_KEY, HISTORY_KEY, MODEL_PATH_KEY, RESERVED_RESULTS, STEP_KEY, is_count

if TYPE_CHECKING:
    from ..jobs import Job

__all__ = [
    "EXPLOITED_FROM_MEMBER",
    "GENERATION",
    "HYPERPARAMETER_PREFIX",
    "LOGGED_STATUSES",
    "JobLog",
    "Point",
    "StepAxis",
    "check_step_axis",
    "job_folder",
    "job_log",
    "run_name",
]

#: Prefix of the metrics that carry a job's numeric hyperparameters.
HYPERPARAMETER_PREFIX = "hp/"
#: Metric written at a job's first step when it copied a better member: that member's index.
EXPLOITED_FROM_MEMBER = "schedy/exploited_from_member"
#: Metric written at every step: the generation of the job that trained that epoch.
GENERATION = "schedy/generation"
#: Job statuses an export replays: a CRASHED job's epochs belong to no model
#: (its member resumes from its last DONE job), a RUNNING one has not finished.
LOGGED_STATUSES = frozenset({JobStatus.DONE, JobStatus.PRUNED})

#: What a point's step counts: the lineage's epochs or its optimizer steps.
StepAxis: TypeAlias = Literal["epoch", "step"]


def check_step_axis(axis: Any) -> StepAxis:
    """Validate a tracker's ``step`` argument."""
    if axis == EPOCH_KEY:
        return "epoch"
    if axis == STEP_KEY:
        return "step"
    raise ValueError(
        f"step must be 'epoch' (the lineage's epochs) or 'step' (its optimizer steps), not {axis!r}"
    )


@dataclass(frozen=True)
class Point:
    """The values a tracker records at one step of a run."""

    step: int
    values: dict[str, float]


@dataclass(frozen=True)
class JobLog:
    """Everything a tracker writes for one job."""

    job_id: str
    #: The schedy experiment's name.
    experiment: str
    #: The run (``member_003``, or ``job_<root id>`` without a member).
    run: str
    member: int | None
    generation: int | None
    #: One point per epoch the job trained, in order (never empty).
    points: list[Point]
    #: The job that was copied, when this job exploited a better member.
    exploited_from: str | None
    exploited_from_member: int | None
    #: The job's hyperparameters as text (every one, numbers included), for tags.
    hyperparameters: dict[str, str]
    #: What the job did, one markdown paragraph.
    note: str
    #: The job's end time (seconds since the epoch), for the points' wall time.
    wall_time: float

    @property
    def first_step(self) -> int:
        return self.points[0].step

    @property
    def last_step(self) -> int:
        return self.points[-1].step


def run_name(member: int | None, root_id: str) -> str:
    """A run's name: ``member_003`` (zero-padded, so runs sort by member), or
    ``job_<root id>`` for a job without a member (random search, manual)."""
    if member is not None:
        return f"member_{member:03d}"
    return f"job_{_safe(root_id)}"


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


def job_folder(job: Any) -> str:
    """``<experiment>/member_003/job_<id>``: where a framework's own logger writes one job.

    A member's jobs group under its run (named as :func:`run_name` names the
    trackers' runs), and each job stays apart, so a run ties to its job; a job
    without a member is ``<experiment>/job_<id>``.
    """
    parts = []
    experiment = getattr(getattr(job, "experiment", None), "name", None)
    if isinstance(experiment, str) and experiment:
        parts.append(_safe(experiment))
    member = getattr(job, "member", None)
    if isinstance(member, int) and not isinstance(member, bool):
        parts.append(run_name(member, job.id))
    parts.append(f"job_{_safe(str(job.id))}")
    return "/".join(parts)


def _number(value: Any) -> float | None:
    """A JSON number (a bool as 0/1) as a float, else None (strings are not numbers)."""
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    return None


def _flat(values: Mapping[str, Any], prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Nested dicts flattened with dots: ``{'opt': {'lr': 1}}`` -> ``('opt.lr', 1)``."""
    for name, value in values.items():
        if isinstance(value, Mapping) and value:
            yield from _flat(value, f"{prefix}{name}.")
        else:
            yield f"{prefix}{name}", value


def _text(value: Any) -> str:
    if isinstance(value, str):
        return value
    try:
        return json.dumps(value, sort_keys=True, allow_nan=True)
    except (TypeError, ValueError):
        return repr(value)


def _history(results: Mapping[str, Any]) -> dict[str, list[Any]] | None:
    """``results['history']`` when it has the shape :func:`record_epoch` writes, else None."""
    history = results.get(HISTORY_KEY)
    if not isinstance(history, Mapping) or not all(
        isinstance(column, list) for column in history.values()
    ):
        return None
    return {str(name): column for name, column in history.items()}


def _length(history: Mapping[str, list[Any]] | None) -> int:
    return max((len(column) for column in (history or {}).values()), default=0)


def _metric_points(
    job: Job, parent: Job | None, axis: StepAxis
) -> list[tuple[int, dict[str, float]]]:
    """``(step, metrics)`` per epoch ``job`` trained (see the module docstring)."""
    history = _history(job.results)
    if history is None:
        # No per-epoch history (results written by hand): one point, the latest values.
        values = {
            name: number
            for name, value in job.results.items()
            if name not in RESERVED_RESULTS
            and name != MODEL_PATH_KEY
            and (number := _number(value)) is not None
        }
        counter = job.results.get(axis)
        step = counter if is_count(counter) else (job.generation or 0)
        return [(step, values)]
    length = _length(history)
    inherited = 0 if parent is None else _length(_history(parent.results))
    if inherited > length:  # the job's history is not the parent's continued
        inherited = 0
    counters = history.get(axis, [])
    points = []
    for index in range(inherited, length):
        counter = counters[index] if index < len(counters) else None
        values = {
            name: number
            for name, column in history.items()
            if name not in (EPOCH_KEY, STEP_KEY)
            and index < len(column)
            and (number := _number(column[index])) is not None
        }
        points.append((counter if is_count(counter) else index + 1, values))
    return points


def _note(
    job: Job, parent: Job | None, donor_member: int | None, first: int, last: int, axis: StepAxis
) -> str:
    span = f"{axis} {first}" if first == last else f"{axis}s {first}-{last}"
    lines = [f"**generation {job.generation}**, job `{job.id}` ({span})"]
    if job.exploited_from is not None:
        lines.append(f"exploited member {donor_member} (copied job `{job.exploited_from}`)")
    before = {} if parent is None else dict(_flat(parent.hyperparameters))
    changes = []
    for name, value in _flat(job.hyperparameters):
        if parent is None:
            changes.append(f"{name} = {_text(value)}")
        elif name not in before:
            changes.append(f"{name} = {_text(value)} (new)")
        elif _text(before[name]) != _text(value):
            changes.append(f"{name}: {_text(before[name])} -> {_text(value)}")
    if changes:
        lines.append("hyperparameters: " + ", ".join(changes))
    return "  \n".join(lines)


def job_log(job: Job, parent: Job | None, axis: StepAxis, root_id: str | None = None) -> JobLog:
    """What a tracker writes for ``job``, whose parent (the job it continued, None
    for a first job) is ``parent``. ``root_id`` names the run of a job without a
    member (default: the job itself)."""
    metric_points = _metric_points(job, parent, axis)
    if not metric_points:  # trained no epoch: its hyperparameters at the parent's last step
        counter = job.results.get(axis)
        metric_points = [(counter if is_count(counter) else (job.generation or 0), {})]
    hyperparameters: dict[str, float] = {}
    for name, value in _flat(job.hyperparameters):
        number = _number(value)
        if number is not None:
            hyperparameters[HYPERPARAMETER_PREFIX + name] = number
    donor = parent.member if job.exploited_from is not None and parent is not None else None
    points = []
    for index, (step, metrics) in enumerate(metric_points):
        values = {**metrics, **hyperparameters}
        if job.generation is not None:
            values[GENERATION] = float(job.generation)
        if index == 0 and job.exploited_from is not None:
            values[EXPLOITED_FROM_MEMBER] = math.nan if donor is None else float(donor)
        points.append(Point(step, values))
    return JobLog(
        job_id=job.id,
        experiment=job.experiment.name,
        run=run_name(job.member, root_id or job.id),
        member=job.member,
        generation=job.generation,
        points=points,
        exploited_from=job.exploited_from,
        exploited_from_member=donor,
        hyperparameters={name: _text(value) for name, value in _flat(job.hyperparameters)},
        note=_note(job, parent, donor, points[0].step, points[-1].step, axis),
        wall_time=job.updated_at or 0.0,
    )
