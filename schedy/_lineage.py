"""Lineages: the chain of jobs that trained a model, as plain JSON data.

PBT's product is a hyperparameter *schedule* and the model it trained; the
schedule is read back by following ``parent_id`` from a job to its
generation-0 ancestor, through exploits. Steps are dicts (JSON as they are:
``json.dumps`` works, the CLI prints them, the report plots them) so every
view shows the same thing, and :func:`fold` gives the compact form for
display: a run of steps with unchanged hyperparameters on one member becomes
one row.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ._values import canonical

__all__ = ["fold", "step"]


def step(job: Any, result_name: str | None) -> dict[str, Any]:
    """One lineage step of ``job`` (a :class:`schedy.Job` or a record): who trained
    it, with which hyperparameters, what it scored and whether it was a copy."""
    score = job.results.get(result_name) if result_name else None
    return {
        "job_id": job.id,
        "member": job.member,
        "generation": job.generation,
        "status": str(job.status),
        "hyperparameters": dict(job.hyperparameters),
        "score": score,
        "parent_id": job.parent_id,
        "exploited_from": job.exploited_from,
    }


def fold(steps: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Runs of steps on one member with unchanged hyperparameters, one row each.

    A row keeps the first step's fields and adds ``generations`` (first,
    last), ``jobs`` (how many steps it folds), ``last_job_id`` and the last
    step's ``score``; an exploit always starts a new row (it changes whose
    model is trained even when the explored values happen to be equal).
    """
    rows: list[dict[str, Any]] = []
    previous: Mapping[str, Any] | None = None
    for current in steps:
        same = (
            previous is not None
            and current.get("exploited_from") is None
            and current.get("member") == previous.get("member")
            and canonical(current.get("hyperparameters"))
            == canonical(previous.get("hyperparameters"))
        )
        if same:
            row = rows[-1]
            row["generations"] = (row["generations"][0], current.get("generation"))
            row["jobs"] += 1
            row["last_job_id"] = current.get("job_id")
            row["score"] = current.get("score")
        else:
            row = dict(current)
            row["generations"] = (current.get("generation"), current.get("generation"))
            row["jobs"] = 1
            row["last_job_id"] = current.get("job_id")
            rows.append(row)
        previous = current
    return rows


def changes(steps: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Per step, only the hyperparameters that differ from the step before
    (the first step shows them all): what a schedule *did*."""
    out: list[dict[str, Any]] = []
    before: Mapping[str, Any] = {}
    for current in steps:
        values = current.get("hyperparameters") or {}
        changed = {
            name: value
            for name, value in values.items()
            if name not in before or canonical(before[name]) != canonical(value)
        }
        out.append(dict(current, hyperparameters=changed))
        before = values
    return out
