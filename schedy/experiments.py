"""Experiment kinds: their configuration and their scheduling decision.

Each kind turns a compact :class:`~schedy._scheduling.SchedulingState` into a
decision (``_decide``) — a pure function, run by the storage backend inside
its claim transaction. The public methods (``next_job``, ``add_job``…) talk
to the store through the experiment's :class:`~schedy.SchedyDB`.
"""

from __future__ import annotations

import operator
import os
import random
import time
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar

from . import _history, _values
from ._records import ExperimentRecord, ExperimentStatus, MemberRecord
from ._scheduling import (
    CreateJob,
    Decision,
    EndMember,
    Exhausted,
    SchedulingState,
    TakeQueued,
    Wait,
)
from .errors import NoJobError
from .jobs import Job
from .pbt import (
    MAXIMIZE,
    MINIMIZE,
    ExploreStrategy,
    Truncate,
    _exploit_from_json,
    _explore_from_json,
)
from .random import Distribution, _distribution_from_json

EXPERIMENT_STATUSES = tuple(ExperimentStatus)

if TYPE_CHECKING:
    from .db import SchedyDB
    from .storage._base import Storage

__all__ = ["Experiment", "ManualSearch", "PopulationBasedTraining", "RandomSearch"]

_RANK_KEY = operator.itemgetter(0, 1, 2)

#: Shared by unseeded decisions: seeding a fresh Random from the OS costs more
#: than a whole decision, and runs inside the store's write lock.
_UNSEEDED = random.Random()
if hasattr(os, "register_at_fork"):  # a forked worker must not replay its parent's draws
    os.register_at_fork(after_in_child=_UNSEEDED.seed)

#: Polling interval bounds while next_job waits for a busy population.
_POLL_MIN_S = 0.02
_POLL_MAX_S = 1.0


def _check_name(name: Any) -> str:
    if not isinstance(name, str) or not name.strip():
        raise ValueError(f"an experiment name must be a non-empty string, not {name!r}")
    return name


def _check_status(status: Any) -> str:
    if status not in EXPERIMENT_STATUSES:
        raise ValueError(
            f"experiment status must be Experiment.RUNNING or Experiment.DONE, not {status!r}"
        )
    return str(status)


def _check_distributions(distributions: Any, what: str) -> dict[str, Distribution]:
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


def _sample(distributions: Mapping[str, Distribution], rng: random.Random) -> dict[str, Any]:
    return {key: dist.sample(rng) for key, dist in distributions.items()}


class Experiment:
    """Base class of every experiment kind.

    An experiment is identified by its name within a store. Create one, then
    ``db.add_experiment(experiment)``; later ``db.get_experiment(name)``
    returns an object of the right subclass bound to the store.
    """

    #: Status of an experiment that hands out jobs.
    RUNNING: ClassVar[ExperimentStatus] = ExperimentStatus.RUNNING
    #: Status of a finished (or paused) experiment: ``next_job`` raises NoJobError.
    DONE: ClassVar[ExperimentStatus] = ExperimentStatus.DONE

    _KIND: ClassVar[str] = ""
    #: Seed of the scheduling RNG (kinds that draw at random accept one).
    seed: int | None = None
    _KINDS: ClassVar[dict[str, type[Experiment]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls._KIND:
            Experiment._KINDS[cls._KIND] = cls

    def __init__(self, name: str, status: str = "RUNNING") -> None:
        self.name = _check_name(name)
        self.status = _check_status(status)
        self._db: SchedyDB | None = None

    # -- configuration (overridden by kinds) -------------------------------
    def _config(self) -> dict[str, Any]:
        return {}

    @classmethod
    def _from_config(cls, name: str, status: str, config: dict[str, Any]) -> Experiment:
        return cls(name, status=status)

    def _record(self) -> ExperimentRecord:
        return ExperimentRecord(self.name, self._KIND, self.status, self._config())

    # -- scheduling hooks (pure; run inside the store's transaction) ------
    def _decide(self, state: SchedulingState) -> Decision:
        raise NotImplementedError

    def _check_new_job(self, hyperparameters: Mapping[str, Any]) -> None:
        """Reject a hand-added job this experiment could not schedule from."""

    def _score(self, results: Mapping[str, Any]) -> float | None:
        """A finished job's ranking value, higher is better (None: unranked)."""
        return None

    def _is_final_generation(self, generation: int | None) -> bool:
        return False

    def _rng(self, claims: int) -> random.Random:
        """The decision's RNG: drawn from ``seed`` and the claim count when seeded,
        so a single-worker run replays exactly."""
        return _UNSEEDED if self.seed is None else random.Random(f"{self.seed}:{claims}")

    # -- public API --------------------------------------------------------
    @property
    def _storage(self) -> Storage:
        if self._db is None:
            raise RuntimeError(
                f"experiment {self.name!r} is not stored yet: call db.add_experiment(experiment) "
                "or use db.get_experiment(name)"
            )
        return self._db._storage

    def add_job(
        self,
        hyperparameters: Mapping[str, Any] | None = None,
        status: str = "QUEUED",
        results: Mapping[str, Any] | None = None,
    ) -> Job:
        """Add a job by hand; a QUEUED job is handed out by ``next_job`` first."""
        record = self._storage.add_job(
            self.name, status, dict(hyperparameters or {}), dict(results or {})
        )
        return Job._from_record(record, self)

    def next_job(self, timeout: float | None = None, lease: float | None = None) -> Job:
        """Claim the next job (RUNNING, leased to this worker) atomically.

        When every population member is busy this waits — at most ``timeout``
        seconds when given (``0``: do not wait) — and raises
        :class:`~schedy.errors.NoJobError` at once when nothing can come
        (empty manual queue, finished experiment). ``lease`` is how long the
        job stays ours without a heartbeat (default: the db's
        ``lease_seconds``); inside ``with job:`` a heartbeat renews it.
        """
        if timeout is not None and timeout < 0:
            raise ValueError(f"timeout must be >= 0 seconds or None, got {timeout!r}")
        storage = self._storage
        assert self._db is not None
        lease_seconds = self._db._lease_seconds if lease is None else float(lease)
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = _POLL_MIN_S
        while True:
            claim = storage.claim_job(self.name, lease_seconds)
            if claim.job is not None:
                job = Job._from_record(claim.job, self, lease_seconds=lease_seconds)
                return job
            if not claim.wait:
                # Nothing can come: the experiment may just have become DONE.
                self.status = storage.get_experiment(self.name).status
                raise NoJobError(f"No job left for experiment {self.name!r}: {claim.reason}.")
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise NoJobError(
                    f"No job for experiment {self.name!r} within {timeout}s: {claim.reason}. "
                    "Call next_job() again, or pass a longer timeout."
                )
            pause = delay if remaining is None else min(delay, remaining)
            time.sleep(pause)
            delay = min(delay * 1.5, _POLL_MAX_S)

    def get_job(self, job_id: str) -> Job:
        """The job with this id; ``NotFoundError`` if there is none."""
        return Job._from_record(self._storage.get_job(self.name, job_id), self)

    def all_jobs(self) -> Iterator[Job]:
        """Every job of the experiment, oldest first, fetched page by page."""
        for record in self._storage.iter_jobs(self.name):
            yield Job._from_record(record, self)

    def delete(self) -> None:
        """Delete the experiment and all its jobs."""
        self._storage.delete_experiment(self.name)

    def push_updates(self) -> None:
        """Store changes made to this object (e.g. ``status = Experiment.DONE``)."""
        _check_status(self.status)
        self._storage.update_experiment(self.name, self.status, self._config())

    def best_jobs(self, k: int = 1) -> list[Job]:
        """The ``k`` best DONE jobs by the experiment's objective, best first.

        Only experiments with an objective (PBT) rank jobs; others return [].
        """
        return [Job._from_record(record, self) for record in self._storage.top_jobs(self.name, k)]

    def population(self) -> list[MemberRecord]:
        """The current population summary (PBT members; empty for other kinds)."""
        return self._storage.get_members(self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, status={self.status!r})"


class ManualSearch(Experiment):
    """Hands out only jobs queued beforehand (``add_job`` / ``schedy push``)."""

    _KIND = "manual"

    def _decide(self, state: SchedulingState) -> Decision:
        if state.queued is not None:
            return TakeQueued(state.queued.id)
        return Exhausted("the queue is empty; push jobs with experiment.add_job() or `schedy push`")


class RandomSearch(Experiment):
    """Hands out queued jobs first, then fresh random configurations forever."""

    _KIND = "random"

    def __init__(
        self,
        name: str,
        distributions: Mapping[str, Distribution],
        status: str = "RUNNING",
        seed: int | None = None,
    ) -> None:
        super().__init__(name, status)
        self.distributions = _check_distributions(distributions, "distributions")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int or None, not {seed!r}")
        self.seed = seed

    def _config(self) -> dict[str, Any]:
        return {
            "distributions": {k: d._to_json() for k, d in self.distributions.items()},
            "seed": self.seed,
        }

    @classmethod
    def _from_config(cls, name: str, status: str, config: dict[str, Any]) -> Experiment:
        distributions = {
            k: _distribution_from_json(v) for k, v in config.get("distributions", {}).items()
        }
        return cls(name, distributions, status=status, seed=config.get("seed"))

    def _decide(self, state: SchedulingState) -> Decision:
        if state.queued is not None:
            return TakeQueued(state.queued.id)
        return CreateJob(_sample(self.distributions, state.rng))

    def __repr__(self) -> str:
        return f"RandomSearch(name={self.name!r}, distributions={self.distributions!r})"


class PopulationBasedTraining(Experiment):
    """Population Based Training (Jaderberg et al. 2017, arXiv 1711.09846).

    The population holds ``population_size`` members, created from
    ``initial_distributions`` (jobs queued by hand come first and become
    members too). Each ``next_job`` then takes the ready member that waited
    longest, ranks every evaluated member by the latest ``result_name`` (NaN
    or missing ranks worst, ties broken at random) and, if the member is in
    the bottom of ``exploit`` (e.g. ``Truncate(0.2)``), copies a random top
    member — hyperparameters explored by ``explore``, and results, so
    ``job.results['model_path']`` points at the better checkpoint. Otherwise
    it continues with its own. A job's generation is its parent's plus one
    (a copy continues its source's count), so ``max_generations`` bounds how
    many jobs train any model; members whose head reached it end (and are no
    longer copied), then the experiment is DONE. A member whose job crashes resumes
    from its last DONE job; after ``max_member_crashes`` crashes in a row it
    is replaced by a copy of a top member. ``seed`` makes a single-worker
    run reproducible.
    """

    _KIND = "pbt"

    def __init__(
        self,
        name: str,
        objective: str,
        result_name: str,
        exploit: Truncate,
        explore: Mapping[str, ExploreStrategy] | None = None,
        initial_distributions: Mapping[str, Distribution] | None = None,
        population_size: int | None = None,
        status: str = "RUNNING",
        max_generations: int | None = None,
        seed: int | None = None,
        max_member_crashes: int = 3,
    ) -> None:
        super().__init__(name, status)
        if objective not in (MINIMIZE, MAXIMIZE):
            raise ValueError(
                f"objective must be schedy.pbt.MINIMIZE or schedy.pbt.MAXIMIZE, not {objective!r}"
            )
        if not isinstance(result_name, str) or not result_name:
            raise ValueError(
                "result_name must name the result to rank by (e.g. 'accuracy'), "
                f"not {result_name!r}"
            )
        if not isinstance(exploit, Truncate):
            raise TypeError(
                f"exploit must be a schedy.pbt exploit strategy such as Truncate(), not {exploit!r}"
            )
        if explore is None:
            explore = {}
        if not isinstance(explore, Mapping):
            raise TypeError(
                f"explore must be a dict of hyperparameter name -> strategy, not {explore!r}"
            )
        for key, strategy in explore.items():
            if not isinstance(strategy, ExploreStrategy):
                raise TypeError(
                    f"explore[{key!r}] = {strategy!r} is not an explore strategy: use "
                    "schedy.pbt.Perturb(), Resample(...) or Shift(...)"
                )
        self.objective = objective
        self.result_name = result_name
        self.exploit = exploit
        self.explore: dict[str, ExploreStrategy] = dict(explore)
        self.initial_distributions = _check_distributions(
            initial_distributions, "initial_distributions"
        )
        for what, value, minimum in (
            ("population_size", population_size, 1),
            ("max_generations", max_generations, 1),
        ):
            if value is not None and (
                not isinstance(value, int) or isinstance(value, bool) or value < minimum
            ):
                raise ValueError(f"{what} must be an int >= {minimum} or None, not {value!r}")
        if self.initial_distributions and population_size is None:
            raise ValueError(
                "initial_distributions needs population_size: how many members to create "
                "from it (e.g. population_size=20)"
            )
        if population_size is not None and not self.initial_distributions:
            pass  # members come from jobs queued by hand
        for key, strategy in self.explore.items():
            if self.initial_distributions and key not in self.initial_distributions:
                raise ValueError(
                    f"explore names {key!r}, which initial_distributions does not define; "
                    f"known hyperparameters: {sorted(self.initial_distributions)}"
                )
            strategy._check_distribution(self.initial_distributions.get(key), key)
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise TypeError(f"seed must be an int or None, not {seed!r}")
        if not isinstance(max_member_crashes, int) or max_member_crashes < 1:
            raise ValueError(f"max_member_crashes must be an int >= 1, not {max_member_crashes!r}")
        self.population_size = population_size
        self.max_generations = max_generations
        self.seed = seed
        self.max_member_crashes = max_member_crashes

    # -- configuration -----------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {
            "objective": self.objective,
            "result_name": self.result_name,
            "exploit": self.exploit._to_json(),
            "explore": {k: s._to_json() for k, s in self.explore.items()},
            "initial_distributions": {
                k: d._to_json() for k, d in self.initial_distributions.items()
            },
            "population_size": self.population_size,
            "max_generations": self.max_generations,
            "seed": self.seed,
            "max_member_crashes": self.max_member_crashes,
        }

    @classmethod
    def _from_config(cls, name: str, status: str, config: dict[str, Any]) -> Experiment:
        return cls(
            name,
            config["objective"],
            config["result_name"],
            exploit=_exploit_from_json(config["exploit"]),
            explore={k: _explore_from_json(v) for k, v in config.get("explore", {}).items()},
            initial_distributions={
                k: _distribution_from_json(v)
                for k, v in config.get("initial_distributions", {}).items()
            },
            population_size=config.get("population_size"),
            status=status,
            max_generations=config.get("max_generations"),
            seed=config.get("seed"),
            max_member_crashes=config.get("max_member_crashes", 3),
        )

    # -- scheduling --------------------------------------------------------
    def _check_new_job(self, hyperparameters: Mapping[str, Any]) -> None:
        rng = random.Random(0)
        for key, strategy in self.explore.items():
            if key not in hyperparameters:
                raise ValueError(
                    f"PBT experiment {self.name!r} explores {key!r}, so every job needs that "
                    f"hyperparameter; got {sorted(hyperparameters)}"
                )
            try:
                strategy.explore(hyperparameters[key], rng)
            except (TypeError, ValueError) as error:
                raise ValueError(
                    f"hyperparameter {key!r} = {hyperparameters[key]!r} cannot be explored "
                    f"by {strategy!r}: {error}"
                ) from None

    def _score(self, results: Mapping[str, Any]) -> float | None:
        score = _values.as_score(results.get(self.result_name))
        if score is None:
            return None
        return score if self.objective == MAXIMIZE else -score

    def _is_final_generation(self, generation: int | None) -> bool:
        if self.max_generations is None or generation is None:
            return False
        return generation + 1 >= self.max_generations

    def _can_follow(self, member: MemberRecord) -> bool:
        """Whether a job may continue ``member``'s head (it is below the last generation)."""
        return member.head_id is not None and not self._is_final_generation(member.head_generation)

    def _rank(
        self, members: list[MemberRecord], rng: random.Random, generation: int | None = None
    ) -> list[MemberRecord]:
        """Evaluated members, best first; unscored last; exact ties in random order.

        A member ahead of ``generation`` (the generation of the member being
        decided) is judged by its score at that generation when it still has
        it: with fewer workers than members, comparing against models trained
        longer would push the member that waited longest to the bottom for
        being behind, not for being worse.
        """
        keyed = []
        for member in members:
            if member.head_id is None:
                continue
            score = member.score
            if generation is not None and (member.head_generation or 0) > generation:
                found, earlier = _history.score_at(member.history, generation)
                if found:
                    score = earlier
            keyed.append((score is None, -(score or 0.0), rng.random(), member))
        keyed.sort(key=_RANK_KEY)
        return [item[3] for item in keyed]

    def _decide(self, state: SchedulingState) -> Decision:
        members = state.members
        next_index = max((m.index for m in members), default=-1) + 1
        if state.queued is not None:
            return TakeQueued(state.queued.id, member=next_index, generation=0)
        size = self.population_size
        if size is not None and len(members) < size and self.initial_distributions:
            return CreateJob(
                _sample(self.initial_distributions, state.rng), member=next_index, generation=0
            )
        if not members:
            return Exhausted(
                "the population is empty: give initial_distributions and population_size, "
                "or add the initial jobs with experiment.add_job() / `schedy push`"
            )
        ready = [m for m in members if m.ready]
        if not ready:
            if all(m.ended for m in members):
                done = "max_generations reached" if self.max_generations else "all members ended"
                return Exhausted(f"the experiment is finished ({done})", finish=True)
            return Wait("every population member is busy")
        member = min(ready, key=lambda m: (m.ready_since, m.index))
        ranked = self._rank(members, state.rng, member.head_generation)
        cutoff = self.exploit._cutoff(len(ranked))
        # A member at its final generation cannot be copied: its copy would
        # have to train past max_generations.
        top = [m for m in ranked[:cutoff] if m.index != member.index and self._can_follow(m)]
        keeps_crashing = member.crashes >= self.max_member_crashes
        if keeps_crashing and not top:
            # The crashing member is itself the top one: copy the best other.
            top = [m for m in ranked if m.index != member.index and self._can_follow(m)][:1]
        in_bottom = (
            any(m.index == member.index for m in ranked[len(ranked) - cutoff :])
            if cutoff
            else False
        )
        if (in_bottom or keeps_crashing) and top:
            chosen = state.rng.choice(top)
            source = state.load_job(chosen.head_id or "")
            hyperparameters = dict(source.hyperparameters)
            for key, strategy in self.explore.items():
                if key in hyperparameters:
                    hyperparameters[key] = strategy.explore(hyperparameters[key], state.rng)
            return CreateJob(
                hyperparameters,
                source.results,  # unchanged: the store writes its stored text back
                member=member.index,
                # The copy continues the source's training: its generation counts
                # the jobs behind the model state, whoever ran them.
                generation=(chosen.head_generation or 0) + 1,
                parent_id=source.id,
                exploited_from=source.id,
                source_member=chosen.index,
            )
        generation = 0 if member.head_generation is None else member.head_generation + 1
        if member.head_id is not None:
            head = state.load_job(member.head_id)
            return CreateJob(
                head.hyperparameters,
                head.results,
                member=member.index,
                generation=generation,
                parent_id=head.id,
            )
        # The member never finished a job: retry its first configuration,
        # unless it keeps crashing (then start it afresh, or retire it).
        if keeps_crashing or member.last_id is None:
            if self.initial_distributions:
                return CreateJob(
                    _sample(self.initial_distributions, state.rng),
                    member=member.index,
                    generation=0,
                )
            return EndMember(member.index, "its first job kept crashing and nothing can replace it")
        last = state.load_job(member.last_id)
        return CreateJob(
            last.hyperparameters,
            last.results,
            member=member.index,
            generation=last.generation or 0,
            parent_id=last.parent_id,
            exploited_from=last.exploited_from,
        )

    def __repr__(self) -> str:
        return (
            f"PopulationBasedTraining(name={self.name!r}, objective={self.objective!r}, "
            f"result_name={self.result_name!r}, population_size={self.population_size!r})"
        )


def _experiment_from_record(record: ExperimentRecord) -> Experiment:
    """Rebuild the right experiment subclass from what the store holds."""
    kind = Experiment._KINDS.get(record.kind)
    if kind is None:
        raise ValueError(
            f"experiment {record.name!r} has unknown kind {record.kind!r}; it was probably "
            "created by a newer schedy — upgrade schedy"
        )
    return kind._from_config(record.name, record.status, record.config)
