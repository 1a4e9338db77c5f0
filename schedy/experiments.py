"""Experiment kinds as users build them: a name, a status and a scheduler.

Each public class is a thin, typed front of one scheduler of
``schedy._scheduling`` (which validates the configuration and makes every
decision); its settings (``objective``, ``population_size``…) read from and
write through that scheduler, so a changed setting is validated like a new
one. The methods (``next_job``, ``add_job``…) talk to the store through the
experiment's :class:`~schedy.SchedyDB`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, Generic, Protocol, TypeVar

from . import _lineage
from ._backoff import Backoff
from ._records import (
    ExperimentRecord,
    ExperimentStatus,
    JobStatus,
    MemberRecord,
    check_lease_seconds,
    check_name,
    experiment_status,
)
from ._scheduling import (
    HyperbandScheduler,
    ManualScheduler,
    PB2Scheduler,
    PBTScheduler,
    RandomScheduler,
    ReplayScheduler,
    Scheduler,
    SuccessiveHalvingScheduler,
    UnreadableScheduler,
    scheduler_for,
)
from .errors import NoJobError, NotFoundError
from .jobs import Job
from .pbt import ExploreStrategy, Truncate
from .random import Distribution

if TYPE_CHECKING:
    from .storage._base import Storage

__all__ = [
    "PB2",
    "Experiment",
    "Hyperband",
    "ManualSearch",
    "PopulationBasedTraining",
    "RandomSearch",
    "Replay",
    "SuccessiveHalving",
]

#: Polling interval bounds while next_job waits for a busy population.
_POLL_MIN_S = 0.02
_POLL_MAX_S = 1.0

_T = TypeVar("_T")


class _Store(Protocol):
    """What an experiment needs of its ``SchedyDB``, named without importing it:
    the db builds experiments, so experiments sit below it."""

    _storage: Storage
    _lease_seconds: float


class _Setting(Generic[_T]):
    """An experiment setting kept by its scheduler: assigning one re-validates
    the whole configuration (the scheduler is rebuilt), as building would."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, experiment: Experiment | None, owner: type | None = None) -> _T:
        if experiment is None:
            return self  # type: ignore[return-value]
        value: _T = getattr(experiment._scheduler, self.name)
        return value

    def __set__(self, experiment: Experiment, value: _T) -> None:
        experiment._scheduler = experiment._scheduler.replace(**{self.name: value})


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

    #: The scheduler kind (``schedy._scheduling``) this class fronts.
    _SCHEDULER: ClassVar[type[Scheduler]]
    #: Scheduler kind -> the public class rebuilt from a stored experiment.
    _KINDS: ClassVar[dict[str, type[Experiment]]] = {}

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        scheduler = cls.__dict__.get("_SCHEDULER")
        if scheduler is not None:
            Experiment._KINDS[scheduler.kind] = cls

    def __init__(self, name: str, status: str = ExperimentStatus.RUNNING) -> None:
        self.name = check_name(name)
        self.status: str = experiment_status(status)
        self._db: _Store | None = None
        self._scheduler: Scheduler

    @property
    def _KIND(self) -> str:
        """The kind stored with the experiment (``manual``, ``random``, ``pbt``…)."""
        return self._scheduler.kind

    def _config(self) -> dict[str, Any]:
        return self._scheduler.to_config()

    def _record(self) -> ExperimentRecord:
        return ExperimentRecord(self.name, self._KIND, self.status, self._config())

    @classmethod
    def _from_record(cls, record: ExperimentRecord) -> Experiment:
        """Rebuild the right public class from what the store holds.

        An experiment that cannot be read (an unknown kind, a broken
        configuration or status) comes back as a plain :class:`Experiment`
        whose :attr:`unreadable` says why: it is listed, shown and removed
        like the others, and ``next_job`` raises that reason.
        """
        scheduler: Scheduler
        try:
            scheduler = scheduler_for(record)
            status = experiment_status(record.status)
        except (ValueError, TypeError) as error:
            experiment = Experiment.__new__(Experiment)
            experiment.name, experiment.status, experiment._db = record.name, record.status, None
            experiment._scheduler = UnreadableScheduler(
                str(record.kind),
                record.config,
                f"experiment {record.name!r} cannot be read: {error}",
            )
            return experiment
        kind = Experiment._KINDS.get(scheduler.kind, Experiment)
        experiment = kind.__new__(kind)
        Experiment.__init__(experiment, record.name, status)
        experiment._scheduler = scheduler
        return experiment

    @property
    def unreadable(self) -> str | None:
        """Why this stored experiment cannot be read (None when it can)."""
        scheduler = self._scheduler
        return scheduler.reason if isinstance(scheduler, UnreadableScheduler) else None

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
        status: str = JobStatus.QUEUED,
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
        if self.unreadable is not None:
            raise NoJobError(
                f"{self.unreadable}. Remove it (`schedy rm {self.name!r}`) or upgrade schedy."
            )
        storage = self._storage
        assert self._db is not None
        lease_seconds = (
            self._db._lease_seconds if lease is None else check_lease_seconds(lease, "lease")
        )
        backoff = Backoff(_POLL_MIN_S, _POLL_MAX_S, factor=1.5, budget=timeout)
        while True:
            claim = storage.claim_job(self.name, lease_seconds)
            if claim.job is not None:
                job = Job._from_record(claim.job, self, lease_seconds=lease_seconds)
                return job
            if not claim.wait:
                # Nothing can come: the experiment may just have become DONE.
                self.status = storage.get_experiment(self.name).status
                raise NoJobError(f"No job left for experiment {self.name!r}: {claim.reason}.")
            if not backoff.wait():
                raise NoJobError(
                    f"No job for experiment {self.name!r} within {timeout}s: {claim.reason}. "
                    "Call next_job() again, or pass a longer timeout."
                )

    def jobs(self, timeout: float | None = None) -> Iterator[Job]:
        """The worker loop: each next job until nothing can come (the experiment
        is DONE, the queue is empty), waiting while every member is busy::

            for job in experiment.jobs():
                with job:
                    train(job)

        ``timeout`` bounds each wait (then the loop ends). A failure inside
        ``with job:`` marks that job CRASHED and propagates as usual; catch it
        in the loop body to go on with the next job.
        """
        while True:
            try:
                job = self.next_job(timeout=timeout)
            except NoJobError:
                return
            yield job

    def get_job(self, job_id: str) -> Job:
        """The job with this id; ``NotFoundError`` if there is none."""
        return Job._from_record(self._storage.get_job(self.name, job_id), self)

    def all_jobs(self) -> Iterator[Job]:
        """Every job of the experiment, oldest first, fetched page by page."""
        for record in self._storage.iter_jobs(self.name):
            yield Job._from_record(record, self)

    def delete(self, ensure: bool = True) -> None:
        """Delete the experiment and all its jobs; with ``ensure=False`` (the
        original client's flag) an experiment already gone is not an error."""
        try:
            self._storage.delete_experiment(self.name)
        except NotFoundError:
            if ensure:
                raise

    def push_updates(self) -> None:
        """Store changes made to this object (e.g. ``status = Experiment.DONE``)."""
        self.status = experiment_status(self.status)
        self._storage.update_experiment(self.name, self.status, self._config())

    def best_jobs(self, k: int = 1) -> list[Job]:
        """The ``k`` best DONE jobs by the experiment's objective, best first.

        Only experiments with an objective (PBT, replays) rank jobs; others
        return []. This is the one definition of "best" everywhere: ``best()``,
        ``schedy show``, checkpoint retention's top-k and the report.
        """
        return [Job._from_record(record, self) for record in self._storage.top_jobs(self.name, k)]

    def best(self) -> Job | None:
        """The best DONE job by ``result_name`` (objective-aware; a NaN or
        missing result is never best; exact ties: the oldest), or None."""
        found = self.best_jobs(1)
        return found[0] if found else None

    @property
    def _result_name(self) -> str | None:
        name = getattr(self._scheduler, "result_name", None)
        return name if isinstance(name, str) else None

    def lineage(self, job_id: str | None = None, *, compact: bool = False) -> list[dict[str, Any]]:
        """The chain of jobs that trained job ``job_id``'s model (default: the best
        job), from its generation-0 ancestor to it, through exploits.

        Each step is a JSON-serialisable dict: ``job_id``, ``member``,
        ``generation``, ``status``, ``hyperparameters``, ``score`` (the job's
        ``result_name``), ``parent_id`` and ``exploited_from``. With
        ``compact``, runs of unchanged steps on one member are folded into
        one row (with ``generations``: first and last, and ``jobs``).
        """
        if job_id is None:
            best = self.best()
            if best is None:
                raise NoJobError(
                    f"experiment {self.name!r} has no scored DONE job yet: give a job id"
                )
            job = best
        else:
            job = self.get_job(job_id)
        steps = [_lineage.step(step, self._result_name) for step in job.lineage()]
        return _lineage.fold(steps) if compact else steps

    def best_schedule(self, *, compact: bool = False) -> list[dict[str, Any]]:
        """The hyperparameter schedule that trained the best model: ``lineage()``
        of :meth:`best`."""
        return self.lineage(None, compact=compact)

    def to_dataframe(self) -> Any:
        """Every job as one row of a pandas DataFrame (like Optuna's
        ``trials_dataframe()``): the job's fields, then ``hyperparameters.<name>``
        and ``results.<name>`` columns, nested dicts flattened with dots.
        Needs pandas (``pip install 'schedy[pandas]'``)."""
        try:
            import pandas
        except ImportError:
            raise ImportError(
                "experiment.to_dataframe() needs pandas: pip install 'schedy[pandas]'"
            ) from None
        rows = []
        for job in self.all_jobs():
            row: dict[str, Any] = {
                "id": job.id,
                "status": str(job.status),
                "member": job.member,
                "generation": job.generation,
                "parent_id": job.parent_id,
                "exploited_from": job.exploited_from,
                "created_at": job.created_at,
                "updated_at": job.updated_at,
                "error": job.error,
            }
            row.update(_flatten(job.hyperparameters, "hyperparameters."))
            row.update(_flatten(job.results, "results."))
            rows.append(row)
        return pandas.DataFrame(rows)

    def replay(self, name: str, job_id: str | None = None) -> Replay:
        """A new experiment that retrains the schedule of job ``job_id`` (default:
        the best) from scratch: one job per step, each continuing its own
        previous job, with the step's hyperparameters. Store it with
        ``db.add_experiment(...)`` and run the same worker code on it."""
        steps = self.lineage(job_id)
        source = {"experiment": self.name, "job_id": steps[-1]["job_id"]}
        objective = getattr(self._scheduler, "objective", None)
        return Replay(
            name,
            [{"hyperparameters": step["hyperparameters"]} for step in steps],
            source=source,
            objective=None if self._result_name is None else objective,
            result_name=self._result_name,
        )

    def population(self) -> list[MemberRecord]:
        """The current population summary (PBT members; empty for other kinds)."""
        return self._storage.get_members(self.name)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, status={self.status!r})"


class ManualSearch(Experiment):
    """Hands out only jobs queued beforehand (``add_job`` / ``schedy push``)."""

    _SCHEDULER = ManualScheduler

    def __init__(self, name: str, status: str = ExperimentStatus.RUNNING) -> None:
        super().__init__(name, status)
        self._scheduler = ManualScheduler()


class RandomSearch(Experiment):
    """Hands out queued jobs first, then fresh random configurations forever."""

    _SCHEDULER = RandomScheduler
    distributions: _Setting[dict[str, Distribution]] = _Setting()
    seed: _Setting[int | None] = _Setting()

    def __init__(
        self,
        name: str,
        distributions: Mapping[str, Distribution],
        status: str = ExperimentStatus.RUNNING,
        seed: int | None = None,
    ) -> None:
        super().__init__(name, status)
        self._scheduler = RandomScheduler(distributions, seed=seed)

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
    longer copied), then the experiment is DONE. A member whose job crashes
    resumes from its last DONE job; after ``max_member_crashes`` crashes in a
    row it is replaced by a copy of a top member. ``seed`` makes a
    single-worker run reproducible.

    With ``synchronous=True`` (Ray's ``synch``), a member's decision at
    generation ``g`` waits until every live member has finished ``g``: the
    population moves in generations, ranked at equal progress. A crashed or
    lost member (its lease expires) is ready again and goes first; one that
    keeps crashing is replaced or retired and no longer waited for, so the
    barrier never deadlocks and ``next_job(timeout=...)`` still returns.

    A bottom member that cannot copy anyone because every better member has
    finished its schedule (``max_generations``) is a *straggler*: it is
    retired (logged with the reason) instead of training on with a schedule
    known to be behind. (The decision: ``schedy._scheduling._pbt``.)
    """

    _SCHEDULER: ClassVar[type[Scheduler]] = PBTScheduler
    objective: _Setting[str] = _Setting()
    result_name: _Setting[str] = _Setting()
    exploit: _Setting[Truncate] = _Setting()
    explore: _Setting[dict[str, ExploreStrategy]] = _Setting()
    initial_distributions: _Setting[dict[str, Distribution]] = _Setting()
    population_size: _Setting[int | None] = _Setting()
    max_generations: _Setting[int | None] = _Setting()
    seed: _Setting[int | None] = _Setting()
    max_member_crashes: _Setting[int] = _Setting()
    synchronous: _Setting[bool] = _Setting()

    def __init__(
        self,
        name: str,
        objective: str,
        result_name: str,
        exploit: Truncate,
        explore: Mapping[str, ExploreStrategy] | None = None,
        initial_distributions: Mapping[str, Distribution] | None = None,
        population_size: int | None = None,
        status: str = ExperimentStatus.RUNNING,
        max_generations: int | None = None,
        seed: int | None = None,
        max_member_crashes: int = 3,
        synchronous: bool = False,
    ) -> None:
        super().__init__(name, status)
        self._scheduler = PBTScheduler(
            objective,
            result_name,
            exploit,
            explore=explore,
            initial_distributions=initial_distributions,
            population_size=population_size,
            max_generations=max_generations,
            seed=seed,
            max_member_crashes=max_member_crashes,
            synchronous=synchronous,
        )

    def __repr__(self) -> str:
        return (
            f"PopulationBasedTraining(name={self.name!r}, objective={self.objective!r}, "
            f"result_name={self.result_name!r}, population_size={self.population_size!r})"
        )


class PB2(PopulationBasedTraining):
    """Population Based Bandits (Parker-Holder et al., NeurIPS 2020, arXiv 2002.02518).

    PBT (exploit as :class:`PopulationBasedTraining`: a bottom member copies
    a top one, checkpoint included) whose explore step picks the numeric
    hyperparameters by maximising a UCB acquisition of a Gaussian process
    fitted to recent ``(generation, hyperparameters) -> score improvement``
    data, with a kernel that forgets old generations; members still
    running count against the acquisition, so concurrent explores differ.
    ``bounds`` maps each searched hyperparameter to ``(low, high)`` (ints:
    integer), or a ``LogUniform``/``IntLogUniform`` (log scale) or a
    ``Choice`` (categorical: explored as PBT, resampled with probability
    0.25 unless ``explore`` says otherwise). ``initial_distributions``
    defaults to ``bounds``. ``window`` bounds the generations of data the GP
    sees. Needs numpy and scipy (``pip install 'schedy[pb2]'``). (The
    decision: ``schedy._scheduling._pb2``.)
    """

    _SCHEDULER = PB2Scheduler
    bounds: _Setting[dict[str, Distribution]] = _Setting()
    window: _Setting[int] = _Setting()

    def __init__(
        self,
        name: str,
        objective: str,
        result_name: str,
        bounds: Mapping[str, Any],
        exploit: Truncate | None = None,
        explore: Mapping[str, ExploreStrategy] | None = None,
        initial_distributions: Mapping[str, Distribution] | None = None,
        population_size: int | None = None,
        status: str = ExperimentStatus.RUNNING,
        max_generations: int | None = None,
        seed: int | None = None,
        max_member_crashes: int = 3,
        window: int = 8,
        synchronous: bool = False,
    ) -> None:
        Experiment.__init__(self, name, status)
        self._scheduler = PB2Scheduler(
            objective,
            result_name,
            bounds,
            exploit=exploit,
            explore=explore,
            initial_distributions=initial_distributions,
            population_size=population_size,
            max_generations=max_generations,
            seed=seed,
            max_member_crashes=max_member_crashes,
            window=window,
            synchronous=synchronous,
        )

    def __repr__(self) -> str:
        return (
            f"PB2(name={self.name!r}, objective={self.objective!r}, "
            f"result_name={self.result_name!r}, bounds={self.bounds!r})"
        )


class SuccessiveHalving(Experiment):
    """Asynchronous successive halving (ASHA, Li et al. 2020, arXiv 1810.05934).

    Random configurations from ``distributions`` are trained rung by rung:
    rung ``k`` trains a model to ``min_budget * reduction_factor**k`` units
    of resource in total (epochs...), the top rung to ``max_budget``. Each
    ``next_job`` promotes the best configuration of the highest rung that
    has one among the top ``1/reduction_factor`` of that rung not yet
    promoted, else starts a new configuration at the bottom rung, so no
    worker waits for a rung to fill. A promotion continues the
    configuration's previous job (same member, generation = rung,
    ``job.results['model_path']`` its checkpoint), so PBT's worker code and
    callbacks work unchanged; ``job.budget`` is the total resource the model
    must have reached when the job ends (the Lightning and Keras callbacks
    train until it). After ``max_configurations`` configurations (None:
    endless, like :class:`RandomSearch`) and nothing left to promote the
    experiment is DONE. (The decision: ``schedy._scheduling._halving``.)
    """

    _SCHEDULER: ClassVar[type[Scheduler]] = SuccessiveHalvingScheduler
    objective: _Setting[str] = _Setting()
    result_name: _Setting[str] = _Setting()
    distributions: _Setting[dict[str, Distribution]] = _Setting()
    min_budget: _Setting[float] = _Setting()
    max_budget: _Setting[float] = _Setting()
    reduction_factor: _Setting[int] = _Setting()
    max_configurations: _Setting[int | None] = _Setting()
    seed: _Setting[int | None] = _Setting()
    max_member_crashes: _Setting[int] = _Setting()

    def __init__(
        self,
        name: str,
        objective: str,
        result_name: str,
        distributions: Mapping[str, Distribution],
        min_budget: float = 1,
        max_budget: float | None = None,
        reduction_factor: int = 3,
        *,
        max_configurations: int | None = None,
        seed: int | None = None,
        max_member_crashes: int = 3,
        status: str = ExperimentStatus.RUNNING,
    ) -> None:
        super().__init__(name, status)
        self._scheduler = SuccessiveHalvingScheduler(
            objective,
            result_name,
            distributions,
            min_budget=min_budget,
            max_budget=max_budget,
            reduction_factor=reduction_factor,
            max_configurations=max_configurations,
            seed=seed,
            max_member_crashes=max_member_crashes,
        )

    @property
    def budgets(self) -> list[float]:
        """The total resource of each rung, bottom first."""
        budgets: list[float] = getattr(self._scheduler, "budgets")  # noqa: B009
        return list(budgets)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(name={self.name!r}, objective={self.objective!r}, "
            f"result_name={self.result_name!r}, budgets={self.budgets!r})"
        )


class Hyperband(SuccessiveHalving):
    """Asynchronous Hyperband: :class:`SuccessiveHalving` in several brackets.

    Bracket ``b`` starts its configurations at rung ``b`` (trading early
    stopping for robustness when early scores mislead); configurations are
    dealt to brackets by their member index in a fixed interleaved cycle
    weighted like Hyperband's ``n_s``, so every bracket spends about the
    same resource. ``brackets`` (default: one per rung) keeps the first few.
    """

    _SCHEDULER: ClassVar[type[Scheduler]] = HyperbandScheduler
    brackets: _Setting[int] = _Setting()

    def __init__(
        self,
        name: str,
        objective: str,
        result_name: str,
        distributions: Mapping[str, Distribution],
        min_budget: float = 1,
        max_budget: float | None = None,
        reduction_factor: int = 3,
        *,
        brackets: int | None = None,
        max_configurations: int | None = None,
        seed: int | None = None,
        max_member_crashes: int = 3,
        status: str = ExperimentStatus.RUNNING,
    ) -> None:
        Experiment.__init__(self, name, status)
        self._scheduler = HyperbandScheduler(
            objective,
            result_name,
            distributions,
            min_budget=min_budget,
            max_budget=max_budget,
            reduction_factor=reduction_factor,
            max_configurations=max_configurations,
            seed=seed,
            max_member_crashes=max_member_crashes,
            brackets=brackets,
        )


class Replay(Experiment):
    """Retrains a schedule (``experiment.replay(name)``): one job per step, in order.

    Each job has the step's hyperparameters and continues the replay's own
    previous job (``job.results['model_path']`` is the checkpoint *this*
    replay saved), so the usual worker code trains one model from scratch
    along the schedule. ``source`` records where the schedule came from.
    """

    _SCHEDULER = ReplayScheduler
    steps: _Setting[list[dict[str, Any]]] = _Setting()
    source: _Setting[dict[str, Any]] = _Setting()
    objective: _Setting[str | None] = _Setting()
    result_name: _Setting[str | None] = _Setting()

    def __init__(
        self,
        name: str,
        steps: list[dict[str, Any]],
        *,
        source: Mapping[str, Any] | None = None,
        objective: str | None = None,
        result_name: str | None = None,
        status: str = ExperimentStatus.RUNNING,
    ) -> None:
        super().__init__(name, status)
        self._scheduler = ReplayScheduler(
            steps, source=source, objective=objective, result_name=result_name
        )

    def __repr__(self) -> str:
        return f"Replay(name={self.name!r}, steps={len(self.steps)}, source={self.source!r})"


def _flatten(values: Mapping[str, Any], prefix: str) -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in values.items():
        if isinstance(value, Mapping) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _experiment_from_record(record: ExperimentRecord) -> Experiment:
    """Rebuild the right experiment subclass from what the store holds."""
    return Experiment._from_record(record)
