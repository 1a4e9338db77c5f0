"""The protocol between the storage backends and the experiment kinds.

A backend runs :meth:`Scheduler.plan_claim` inside its claim transaction on a
compact :class:`SchedulingState` (the population summary, the oldest queued
job, a few jobs looked up by key) and writes the :class:`ClaimPlan` it gets
back; when a job ends, a lease expires or a job is deleted it asks the
scheduler for the member's next :class:`~schedy._records.MemberRecord` and
writes the columns that changed. The backend never decides anything itself,
so SQLite, PostgreSQL, MariaDB and the server schedule identically; and the
decision stays a pure function of that state and a seeded RNG, which keeps
``next_job`` cost flat however many jobs an experiment has run.

A kind is one module: a :class:`Scheduler` subclass (its configuration,
validated in ``__init__``, its JSON form and its decision) registered with
:func:`register` under the ``kind`` name stored with the experiment.
"""

from __future__ import annotations

import abc
import os
import random
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from .. import _values
from .._records import ExperimentRecord, JobRecord, JobStatus, MemberRecord
from ..random import Distribution, _distribution_from_json
from . import _history

__all__ = [
    "ClaimPlan",
    "CreateJob",
    "Decision",
    "EndMember",
    "Exhausted",
    "Scheduler",
    "SchedulingState",
    "TakeQueued",
    "UnknownKindError",
    "UnreadableScheduler",
    "Wait",
    "lease_expired_error",
    "register",
    "scheduler_for",
]

#: Shared by unseeded decisions: seeding a fresh Random from the OS costs more
#: than a whole decision, and runs inside the store's write lock.
_UNSEEDED = random.Random()
if hasattr(os, "register_at_fork"):  # a forked worker must not replay its parent's draws
    os.register_at_fork(after_in_child=_UNSEEDED.seed)


# -- what a decision reads ------------------------------------------------------
@dataclass
class SchedulingState:
    """What a decision may read.

    ``load_job`` fetches one job by id (a primary-key read); decisions call it
    only for the member they continue and the member they copy.
    ``start_results`` gives the results a job was *created* with (its
    parent's, or those it was queued with), which a crashed job's retry
    starts from — never what the crashed attempt wrote. ``new_job_id`` is
    the id a job created by this decision gets.
    """

    queued: JobRecord | None
    members: list[MemberRecord]
    load_job: Callable[[str], JobRecord]
    rng: random.Random
    start_results: Callable[[JobRecord], dict[str, Any]] = lambda job: {}
    new_job_id: str = ""
    #: The population's size when ``members`` is a sample of it (see
    #: :attr:`Scheduler.member_sample`); None when ``members`` is all of it.
    size: int | None = None

    @property
    def population(self) -> int:
        """How many members the experiment has (sampled or not)."""
        return len(self.members) if self.size is None else self.size

    @property
    def next_index(self) -> int:
        """The index a new member gets (members are numbered 0, 1, … as created)."""
        if self.size is not None:
            return self.size
        return max((m.index for m in self.members), default=-1) + 1


# -- what a decision says -------------------------------------------------------
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


@dataclass
class ClaimPlan:
    """Everything a claim writes, decided at once: the backend only applies it.

    ``decision`` is final (never :class:`EndMember`); ``members`` lists
    ``(before, after)`` records to write — ``before`` None for a new member
    — covering retired members and the member that got the job; ``job_id``
    is the id of the job handed out (None when there is none).
    """

    decision: TakeQueued | CreateJob | Wait | Exhausted
    job_id: str | None = None
    members: list[tuple[MemberRecord | None, MemberRecord]] = field(default_factory=list)
    retired: list[EndMember] = field(default_factory=list)


def lease_expired_error(late_seconds: float) -> str:
    """The error recorded on a job whose worker stopped renewing its lease."""
    return (
        f"lease expired {late_seconds:.1f}s ago: the worker stopped heartbeating "
        "(killed, hung or lost its machine)"
    )


# -- the protocol ---------------------------------------------------------------
_S = TypeVar("_S", bound="Scheduler")


class Scheduler(abc.ABC):
    """One experiment kind: its configuration, its decision, its member transitions.

    Subclasses validate every argument in ``__init__`` (the one validation,
    used by the Python constructors, the CLI and every backend before an
    experiment is stored), keep each argument as an attribute of the same
    name, and give their JSON form (:meth:`to_config`, :meth:`from_config`).
    The member transitions below are PBT's population state machine, shared
    by every kind with members; a kind changes them by overriding
    :meth:`score` and :meth:`is_final_generation`.
    """

    #: The name stored with the experiment (``ExperimentRecord.kind``).
    kind: ClassVar[str] = ""
    #: The names of ``__init__``'s arguments, each kept as an attribute.
    arguments: ClassVar[tuple[str, ...]] = ()
    #: Seed of the decision's RNG (kinds that draw at random accept one).
    seed: int | None = None
    #: A population larger than this is shown to a claim's decision as a
    #: sample (see :meth:`sample_members`) instead of whole, so a claim's cost
    #: does not grow with the population; None: always whole.
    member_sample: int | None = None

    # -- configuration --------------------------------------------------------
    @classmethod
    @abc.abstractmethod
    def from_config(cls: type[_S], config: Mapping[str, Any]) -> _S:
        """Rebuild from :meth:`to_config`'s output; ValueError/TypeError saying what is wrong."""

    @abc.abstractmethod
    def to_config(self) -> dict[str, Any]:
        """The JSON configuration the store keeps."""

    def replace(self: _S, **changes: Any) -> _S:
        """A copy with some arguments changed, validated like a new one."""
        values = {name: getattr(self, name) for name in self.arguments}
        values.update(changes)
        return type(self)(**values)

    # -- the decision ----------------------------------------------------------
    @abc.abstractmethod
    def decide(self, state: SchedulingState) -> Decision:
        """The next job to hand out, from ``state`` only (a pure function)."""

    def check_new_job(self, hyperparameters: Mapping[str, Any]) -> None:  # noqa: B027
        """Reject a hand-added job this kind could not schedule from (ValueError)."""

    def score(self, results: Mapping[str, Any]) -> float | None:
        """A finished job's ranking value, higher is better (None: unranked)."""
        return None

    def is_final_generation(self, generation: int | None) -> bool:
        """Whether a member whose head is at ``generation`` has trained its last job."""
        return False

    def rng(self, claims: int) -> random.Random:
        """The decision's RNG: drawn from ``seed`` and the claim count when seeded,
        so a single-worker run replays exactly."""
        return _UNSEEDED if self.seed is None else random.Random(f"{self.seed}:{claims}")

    def sample_members(self, population: int, rng: random.Random) -> list[int] | None:
        """The members (by index) a claim reads besides the ready member that
        waited longest, which the backend always adds (and, when none is ready,
        a member still running, if any): None for the whole population.

        A uniform sample of :attr:`member_sample` members drawn with the
        decision's RNG, so a seeded run replays exactly; populations up to
        that size are read whole, unchanged.
        """
        k = self.member_sample
        if k is None or population <= k:
            return None
        return sorted(rng.sample(range(population), k))

    def plan_claim(self, state: SchedulingState) -> ClaimPlan:
        """Decide, retiring hopeless members on the way, and say what to write."""
        retired: list[EndMember] = []
        written: dict[int, tuple[MemberRecord | None, MemberRecord]] = {}
        decision = self.decide(state)
        # Retiring a member changes the state: decide again (bounded).
        for _ in range(len(state.members) + 1):
            if not isinstance(decision, EndMember):
                break
            retired.append(decision)
            for position, member in enumerate(state.members):
                if member.index == decision.member:
                    state.members[position] = after = self.member_retired(member, decision.reason)
                    written[member.index] = (written.get(member.index, (member,))[0], after)
            decision = self.decide(state)
        if isinstance(decision, EndMember):  # pragma: no cover - each retirement ends one member
            raise AssertionError(f"scheduler {self.kind!r} keeps retiring members")
        plan = ClaimPlan(decision, retired=retired)
        if isinstance(decision, (TakeQueued, CreateJob)):
            plan.job_id = decision.job_id if isinstance(decision, TakeQueued) else state.new_job_id
            if decision.member is not None:
                before = source = None
                source_index = decision.source_member if isinstance(decision, CreateJob) else None
                for member in state.members:  # a plain loop: this runs inside the write lock
                    if member.index == decision.member:
                        before = member
                    elif member.index == source_index:
                        source = member
                after = self.member_claimed(before, decision.member, plan.job_id, source)
                written[decision.member] = (written.get(decision.member, (before,))[0], after)
        plan.members = list(written.values())
        return plan

    # -- member transitions ----------------------------------------------------
    def member_claimed(
        self,
        member: MemberRecord | None,
        index: int,
        job_id: str,
        source: MemberRecord | None = None,
    ) -> MemberRecord:
        """The member once ``job_id`` is handed out for it; an exploit of
        ``source`` carries over the source's score history, so the copy is
        compared at equal progress like the model it continues."""
        if member is None:
            member = MemberRecord(index)
        changes: dict[str, Any] = {"busy_id": job_id, "last_id": job_id}
        if source is not None:
            changes["history"] = source.history
        return member._replace(**changes)

    def job_ended(
        self,
        member: MemberRecord,
        job: JobRecord,
        status: str,
        results: Mapping[str, Any],
        now: float,
    ) -> MemberRecord:
        """The member once its job ``job`` ended with ``status`` (DONE, CRASHED or PRUNED).

        DONE makes the job the member's resume point (score, history, crash
        count reset; the member ends at its final generation, with no reason:
        that is the normal end); CRASHED counts a crash (the member resumes
        from its head, and is replaced by a copy after too many); PRUNED ends
        the member, saying so. A job the member no longer waits for (a stale
        one) changes nothing.
        """
        if member.busy_id != job.id:
            return member
        changes: dict[str, Any] = {"busy_id": None, "ready_since": now}
        if status == JobStatus.DONE:
            score = self.score(results)
            changes.update(
                head_id=job.id,
                head_generation=job.generation,
                score=score,
                crashes=0,
                ended=self.is_final_generation(job.generation),
                history=_history.extend(member.history, job.generation, score),
            )
        elif status == JobStatus.CRASHED:
            changes["crashes"] = member.crashes + 1
        elif status == JobStatus.PRUNED:  # abandoned on purpose
            changes.update(ended=True, ended_reason=f"its job {job.id} was pruned")
        else:
            raise ValueError(f"a job does not end with status {status!r}")
        return member._replace(**changes)

    def member_retired(self, member: MemberRecord, reason: str) -> MemberRecord:
        """The member once it is retired for ``reason`` (it keeps crashing and
        nothing can replace it, a straggler): the reason is kept with it, so
        users see why a member stopped before its schedule's end."""
        return member._replace(ended=True, ended_reason=reason)

    def job_deleted(self, member: MemberRecord, job_id: str) -> MemberRecord:
        """The member once job ``job_id`` is deleted: it is no longer its resume
        point, its busy marker or the job a crashed first job is retried from."""
        changes: dict[str, Any] = {}
        if member.busy_id == job_id:
            changes["busy_id"] = None
        if member.head_id == job_id:
            changes.update(head_id=None, head_generation=None, score=None)
        if member.last_id == job_id:
            changes["last_id"] = None
        return member._replace(**changes) if changes else member


# -- helpers for kinds ----------------------------------------------------------
def check_distributions(distributions: Any, what: str) -> dict[str, Distribution]:
    """``distributions`` as a dict of schedy.random distributions; TypeError otherwise."""
    if distributions is None:
        return {}
    if not isinstance(distributions, Mapping):
        raise TypeError(
            f"{what} must be a dict mapping hyperparameter names to schedy.random "
            f"distributions, not {type(distributions).__name__}"
        )
    checked: dict[str, Distribution] = {}
    for key, dist in distributions.items():
        if not isinstance(key, str):
            raise TypeError(f"{what} keys must be hyperparameter names (str), not {key!r}")
        if not isinstance(dist, Distribution):
            raise TypeError(
                f"{what}[{key!r}] = {dist!r} is not a distribution: use one of schedy.random "
                "(Uniform, LogUniform, Normal, LogNormal, Choice, Constant, IntUniform…)"
            )
        checked[key] = dist
    return checked


def check_seed(seed: Any) -> int | None:
    if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
        raise TypeError(f"seed must be an int or None, not {seed!r}")
    return seed


def check_max_member_crashes(value: Any) -> int:
    """Crashes in a row after which a member is replaced or retired: an int >= 1."""
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"max_member_crashes must be an int >= 1, not {value!r}")
    return value


def oriented_score(
    results: Mapping[str, Any], result_name: str | None, maximize: bool
) -> float | None:
    """``results[result_name]`` as a ranking value, higher is better (None:
    missing, NaN or no result to rank by) -- every kind with an objective."""
    if result_name is None:
        return None
    score = _values.as_score(results.get(result_name))
    if score is None:
        return None
    return score if maximize else -score


def distributions_to_json(distributions: Mapping[str, Distribution]) -> dict[str, Any]:
    return {key: dist._to_json() for key, dist in distributions.items()}


def distributions_from_json(obj: Any, what: str) -> dict[str, Distribution]:
    if obj is None:
        return {}
    if not isinstance(obj, Mapping):
        raise ValueError(f"{what} must be an object of name: distribution, not {obj!r}")
    return {key: _distribution_from_json(value) for key, value in obj.items()}


def sample(distributions: Mapping[str, Distribution], rng: random.Random) -> dict[str, Any]:
    return {key: dist.sample(rng) for key, dist in distributions.items()}


def config_object(config: Any, kind: str) -> Mapping[str, Any]:
    """``config`` if it is a JSON object; ValueError naming the kind otherwise."""
    if not isinstance(config, Mapping):
        raise ValueError(f"the configuration of a {kind!r} experiment must be an object")
    return config


# -- registry -------------------------------------------------------------------
_KINDS: dict[str, type[Scheduler]] = {}


def register(cls: type[_S]) -> type[_S]:
    """Make ``cls`` the scheduler of experiments of kind ``cls.kind`` (a class decorator)."""
    if not cls.kind or cls.kind in _KINDS:
        raise ValueError(f"scheduler kind {cls.kind!r} is empty or taken")
    _KINDS[cls.kind] = cls
    return cls


class UnknownKindError(ValueError):
    """A stored experiment names a kind this schedy does not know."""


class UnreadableScheduler(Scheduler):
    """Stands for a stored experiment whose kind or configuration cannot be read
    (written by a newer schedy, or by hand): it can be listed, shown and
    removed, and says why it cannot hand out jobs. Never registered."""

    def __init__(self, kind: str, config: Any, reason: str) -> None:
        self.kind = kind  # type: ignore[misc]  # per instance: the kind as stored
        self.config = config
        self.reason = reason

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> UnreadableScheduler:
        raise ValueError("an unreadable experiment cannot be rebuilt")

    def to_config(self) -> dict[str, Any]:
        return dict(self.config) if isinstance(self.config, Mapping) else {}

    def decide(self, state: SchedulingState) -> Decision:
        raise ValueError(self.reason)


def scheduler_for(record: ExperimentRecord) -> Scheduler:
    """The scheduler of a stored experiment, its configuration validated."""
    cls = _KINDS.get(record.kind)
    if cls is None:
        raise UnknownKindError(
            f"experiment {record.name!r} has unknown kind {record.kind!r} (known: "
            f"{', '.join(sorted(_KINDS))}); it was probably created by a newer schedy — "
            "upgrade schedy"
        )
    if not isinstance(record.config, Mapping):
        text = record.config if isinstance(record.config, str) else _values.dumps(record.config)
        raise ValueError(
            f"experiment {record.name!r}: its configuration must be an object (in JSON), "
            f"not {text[:80]!r}; remove it (schedy rm) or write it again"
        )
    return cls.from_config(record.config)
