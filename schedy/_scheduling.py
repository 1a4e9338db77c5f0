"""Types shared by the scheduling decision and the storage backends.

A backend builds a :class:`SchedulingState` inside its claim transaction and
asks the experiment for a decision; the experiment returns one of the
decision classes below and the backend applies it. Keeping the decision a
pure function of this compact state (the population summary, the oldest
queued job, at most two looked-up jobs) is what keeps ``next_job`` cost flat
however many jobs the experiment has run.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ._records import JobRecord, MemberRecord


@dataclass
class SchedulingState:
    """What the decision may read.

    ``load_job`` fetches one job by id (a primary-key read); decisions call it
    only for the member they continue and the member they copy.
    """

    queued: JobRecord | None
    members: list[MemberRecord]
    load_job: Callable[[str], JobRecord]
    rng: random.Random


@dataclass
class TakeQueued:
    """Hand out the oldest hand-queued job, optionally as a new member."""

    job_id: str
    member: int | None = None
    generation: int | None = None


@dataclass
class CreateJob:
    """Create a new RUNNING job (a fresh member, a continuation or an exploit)."""

    hyperparameters: dict[str, Any]
    results: dict[str, Any] = field(default_factory=dict)
    member: int | None = None
    generation: int | None = None
    parent_id: str | None = None
    exploited_from: str | None = None
    #: The member copied by an exploit (its score history follows the copy).
    source_member: int | None = None


@dataclass
class Wait:
    """Nothing now; something may come (every member busy)."""

    reason: str


@dataclass
class Exhausted:
    """Nothing can come any more; ``finish`` marks the experiment DONE."""

    reason: str
    finish: bool = False


@dataclass
class EndMember:
    """Retire a member that cannot go on (keeps crashing, nothing to copy)."""

    member: int
    reason: str


Decision = TakeQueued | CreateJob | Wait | Exhausted | EndMember
