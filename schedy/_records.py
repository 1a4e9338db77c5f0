"""Records and status enums shared by every layer: scheduling, storage, the wire, the API.

They sit below the scheduling layer and the storage backends so that both
can speak of jobs and members without importing each other or the
user-facing objects (``experiments``, ``jobs``, ``db``). Statuses are
``str``-valued enums: a status *is* its string (``JobStatus.DONE ==
"DONE"``), so stored data, JSON on the wire and user code comparing with
plain strings keep working unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, NamedTuple

from ._values import StrEnum

__all__ = [
    "Claim",
    "ExperimentRecord",
    "ExperimentStatus",
    "JobRecord",
    "JobStatus",
    "JobUpdate",
    "MemberRecord",
    "TokenRecord",
    "TokenRole",
    "check_lease_seconds",
    "check_name",
]

#: Longest experiment (and token) name every database stores (its column's size).
MAX_NAME_LENGTH = 255


class JobStatus(StrEnum):
    """Where a job stands."""

    #: Waiting in the queue to be handed out by ``next_job``.
    QUEUED = "QUEUED"
    #: Handed out to a worker, which holds its lease.
    RUNNING = "RUNNING"
    #: Failed: an exception in the worker, or the worker was lost (lease expired).
    CRASHED = "CRASHED"
    #: Abandoned on purpose because it was not worth going on.
    PRUNED = "PRUNED"
    #: Finished successfully.
    DONE = "DONE"


class ExperimentStatus(StrEnum):
    """Whether an experiment still hands out jobs."""

    RUNNING = "RUNNING"
    DONE = "DONE"


class TokenRole(StrEnum):
    """What a server token may do (each role may do what the roles after it may)."""

    #: Everything: create and delete experiments, manage tokens.
    ADMIN = "admin"
    #: What a worker does: read, claim jobs, renew leases and report results.
    WORKER = "worker"
    #: Read only (a dashboard, a report).
    READ = "read"


def check_name(
    name: object, what: str = "an experiment name", max_length: int = MAX_NAME_LENGTH
) -> str:
    """A name every backend can store alike: a non-empty string of at most
    ``max_length`` characters, without NUL (PostgreSQL refuses it; SQLite
    would keep it) and with a UTF-8 form (a lone surrogate, which JSON's
    ``"\\ud800"`` escape decodes to, has none: every driver would fail)."""
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"{what} must be a non-empty string, not {name!r}")
    if len(name) > max_length:
        raise ValueError(
            f"{what} may have at most {max_length} characters, not {len(name)}: {name[:40]!r}…"
        )
    if "\x00" in name:
        raise ValueError(f"{what} may not contain a NUL character: {name!r}")
    if not _encodable(name):
        raise ValueError(f"{what} must be valid Unicode text (it holds a lone surrogate): {name!r}")
    return name


def is_valid_name(name: object, max_length: int = MAX_NAME_LENGTH) -> bool:
    """Whether ``name`` could name something stored (else a lookup finds nothing
    without asking the database, which might refuse the text itself)."""
    return (
        isinstance(name, str)
        and 0 < len(name) <= max_length
        and "\x00" not in name
        and _encodable(name)
    )


def _encodable(text: str) -> bool:
    # Plain ASCII (every id and token schedy makes) needs no encoding attempt.
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


#: The longest lease a job may hold: a lost worker's member waits at most this long.
MAX_LEASE_SECONDS = 7 * 24 * 3600.0


def check_lease_seconds(value: object, what: str = "lease_seconds") -> float:
    """A lease duration: a finite number of seconds in (0, a week]; ValueError otherwise.

    An infinite lease would keep a SIGKILLed worker's job RUNNING forever and
    its population member with it.
    """
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number of seconds, not {value!r}") from None
    if isinstance(value, bool) or not 0 < seconds <= MAX_LEASE_SECONDS:
        raise ValueError(
            f"{what} must be a finite number of seconds > 0 and at most "
            f"{MAX_LEASE_SECONDS:.0f} (a week), not {value!r}"
        )
    return seconds


#: Plain string -> member: turning a stored status into its enum is one dict lookup.
_JOB_STATUS = {status.value: status for status in JobStatus}
_EXPERIMENT_STATUS = {status.value: status for status in ExperimentStatus}


def job_status(value: Any) -> JobStatus:
    """``value`` (a string or a member) as a :class:`JobStatus`; ValueError naming them all."""
    found = _JOB_STATUS.get(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError(f"job status must be one of {', '.join(_JOB_STATUS)}, not {value!r}")
    return found


def experiment_status(value: Any) -> ExperimentStatus:
    """``value`` as an :class:`ExperimentStatus`; ValueError naming both otherwise."""
    found = _EXPERIMENT_STATUS.get(value) if isinstance(value, str) else None
    if found is None:
        raise ValueError(
            f"experiment status must be Experiment.RUNNING or Experiment.DONE, not {value!r}"
        )
    return found


@dataclass
class ExperimentRecord:
    """An experiment as stored: its kind (scheduler) and JSON configuration."""

    name: str
    kind: str
    status: str
    config: dict[str, Any]


@dataclass
class JobRecord:
    """A job as stored, with its PBT lineage.

    ``parent_id`` is the job whose checkpoint/results this job continues from
    (for an exploited job: the better member's job); ``exploited_from`` is set
    only when the job was created by exploitation. ``lease_token`` is only
    filled in for the worker that claimed the job.
    """

    id: str
    experiment: str
    status: str
    hyperparameters: dict[str, Any]
    results: dict[str, Any]
    member: int | None = None
    generation: int | None = None
    parent_id: str | None = None
    exploited_from: str | None = None
    error: str | None = None
    lease_token: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


class MemberRecord(NamedTuple):
    """One population member: the compact state scheduling reads and writes.

    ``head_id`` is the member's last good (DONE) job — where it resumes from;
    ``busy_id`` the job now queued or running for it; ``last_id`` the last
    job handed out for it (a crashed first job is retried from it). ``score``
    is the head's ranking value, already oriented so that higher is better
    (``None`` = missing or NaN, ranked worst). ``ready_since`` (when its last
    job ended) orders ready members so the one that waited longest goes
    first. ``history`` holds recent ``(generation, score)`` pairs (see
    ``schedy._scheduling._history``) for comparing members at equal progress.
    ``ended_reason`` says why an ended member was ended before its schedule's
    normal end (a straggler, a member that kept crashing, a pruned job), so a
    user sees it in ``population()`` and ``schedy show`` rather than in a log
    line; None for the normal end, a live member, or a store from before
    schema 5.

    A named tuple whose fields are the storage's member columns: a claim
    builds one per member straight from the database row (the scheduling hot
    path); the scheduling layer returns changed copies (``_replace``) and the
    storage writes the columns that differ.
    """

    index: int  # type: ignore[assignment]  # the member number; shadows tuple.index
    head_id: str | None = None
    head_generation: int | None = None
    score: float | None = None
    busy_id: str | None = None
    last_id: str | None = None
    crashes: int = 0
    ended: bool = False
    ready_since: float = 0.0
    history: str | None = None
    ended_reason: str | None = None

    @property
    def ready(self) -> bool:
        return self.busy_id is None and not self.ended


@dataclass
class Claim:
    """What ``claim_job`` gives: a job, or why there is none.

    ``wait`` is True when nothing is available now but something may come
    (every member busy); False with no job means nothing can ever come.
    """

    job: JobRecord | None
    wait: bool = False
    reason: str = ""


@dataclass
class TokenRecord:
    """A server token as stored: its name and role; the secret itself is never kept."""

    name: str
    role: str
    created_at: float
    revoked_at: float | None = None


@dataclass
class JobUpdate:
    """Fields a worker writes back with ``put``; ``None`` leaves a field as is."""

    status: str | None = None
    hyperparameters: Mapping[str, Any] | None = None
    results: Mapping[str, Any] | None = None
    error: str | None = None
