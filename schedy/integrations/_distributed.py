"""Members bigger than one GPU: one schedy job shared by every rank of a torch.distributed run.

Under DDP or torchrun one member trains in several processes (ranks) at
once. If each called ``experiment.next_job()`` it would claim a job of its
own, and one model would train with several jobs' hyperparameters. Here rank
0 alone claims the job and holds its lease (its heartbeat); the other ranks
receive a plain :class:`JobSnapshot` of it -- id, hyperparameters, results
(the checkpoint path among them), budget -- through torch.distributed's own
process group (``broadcast_object_list``; a :class:`~schedy.Job` is never
pickled) and train with a :class:`ReplicaJob`: the same values, no lease,
nothing ever stored. So every rank builds the same model and restores the same
checkpoint, and rank 0 alone reports, saves and ends the job. When rank 0
finds no job (the experiment is done) or fails to claim one, every rank
learns it from the same broadcast, so none waits in a collective forever.

Where the ranks come from decides how the first job reaches them:

- all ranks started together (``torchrun``, ``torch.multiprocessing.spawn``,
  Lightning under torchrun): the default process group, initialised by the
  user or here from torchrun's environment (Lightning then reuses it);
- Lightning's own launcher (``Trainer(strategy='ddp', devices=K)`` run as
  ``python train.py``): rank 0's ``trainer.fit`` starts the other ranks,
  after rank 0 built its model and before any process group exists, and
  Lightning's first collectives come before any callback hook. So for that
  first job rank 0 leaves the job's id in the environment its children
  inherit (:data:`HANDOFF_ENV`, honoured only by direct children of the
  process that wrote it), they read the job from the store, and
  ``SchedyCallback.setup`` broadcasts rank 0's snapshot to every rank
  (:func:`agree`), refusing ranks that hold another job. From the second job
  on the process group exists and the broadcast carries the job.
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeAlias

from .._records import JobStatus
from ..errors import NoJobError, SchedyError

if TYPE_CHECKING:
    from ..experiments import Experiment
    from ..jobs import Job

__all__ = [
    "HANDOFF_ENV",
    "WAIT_CHUNK_SECONDS",
    "JobSnapshot",
    "ReplicaJob",
    "agree",
    "is_replica",
    "jobs",
    "next_job",
]

logger = logging.getLogger(__name__)

#: Set by rank 0 for the ranks Lightning's launcher starts from its ``fit``.
HANDOFF_ENV = "SCHEDY_DISTRIBUTED_JOB"
#: Longest rank 0 waits for a busy population between two broadcasts: the
#: other ranks wait inside a collective, which the process group's timeout
#: (by default 30 min for gloo, 10 for NCCL) would otherwise cut short.
WAIT_CHUNK_SECONDS = 60.0

#: Rank 0 passes its value, the others None; each gets rank 0's value back.
Broadcast: TypeAlias = Callable[[Any], Any]


@dataclass(frozen=True)
class JobSnapshot:
    """What the other ranks need of rank 0's job, as plain picklable values."""

    experiment: str
    id: str
    status: str
    hyperparameters: dict[str, Any]
    results: dict[str, Any]
    budget: float | None = None
    member: int | None = None
    generation: int | None = None
    parent_id: str | None = None
    exploited_from: str | None = None

    @classmethod
    def of(cls, job: Any) -> JobSnapshot:
        """A deep copy of ``job``'s values (a :class:`~schedy.Job` or a look-alike)."""
        return cls(
            experiment=str(getattr(getattr(job, "experiment", None), "name", "")),
            id=str(job.id),
            status=str(getattr(job, "status", JobStatus.RUNNING)),
            hyperparameters=copy.deepcopy(dict(job.hyperparameters)),
            results=copy.deepcopy(dict(job.results)),
            budget=getattr(job, "budget", None),
            member=getattr(job, "member", None),
            generation=getattr(job, "generation", None),
            parent_id=getattr(job, "parent_id", None),
            exploited_from=getattr(job, "exploited_from", None),
        )


@dataclass(frozen=True)
class _NoJob:
    """Rank 0 got no job: every rank raises, NoJobError when nothing can come."""

    message: str
    nothing_left: bool


@dataclass(frozen=True)
class _StillWaiting:
    """Rank 0 still waits for a busy population; the other ranks wait on."""


class ReplicaJob:
    """The job as a rank other than 0 sees it: rank 0's values, no lease, nothing stored.

    Code written for one process runs unchanged on every rank: ``with job:``,
    ``job.put()`` and the integrations' ``report`` and ``save`` store nothing
    here (rank 0 does), and ``job.results`` may be written but stays in this
    process. What could only change the stored job (``delete``,
    ``try_run``) is an error.
    """

    def __init__(self, snapshot: JobSnapshot, experiment: Experiment) -> None:
        self.experiment = experiment
        self.error: str | None = None
        self._adopt(snapshot)

    def _adopt(self, snapshot: JobSnapshot) -> None:
        """Take rank 0's values (its results may have moved on since this rank read them)."""
        self.id = snapshot.id
        self.status = snapshot.status
        self.hyperparameters = copy.deepcopy(snapshot.hyperparameters)
        self.results = copy.deepcopy(snapshot.results)
        self.budget = snapshot.budget
        self.member = snapshot.member
        self.generation = snapshot.generation
        self.parent_id = snapshot.parent_id
        self.exploited_from = snapshot.exploited_from

    @property
    def job_id(self) -> str:
        """Alias of ``id``, as on :class:`~schedy.Job`."""
        return self.id

    def put(self, safe: bool = True) -> None:
        """Store nothing: rank 0 reports the job."""

    def __enter__(self) -> ReplicaJob:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *exc_info: object) -> None:
        """Nothing to store: rank 0 ends the job; here its status only follows suit."""
        self.status = JobStatus.DONE if exc_type is None else JobStatus.CRASHED

    def delete(self, ensure: bool = True) -> None:
        raise SchedyError(self._rank_zero_only("delete()"))

    def try_run(self) -> None:
        raise SchedyError(self._rank_zero_only("try_run()"))

    def lineage(self) -> list[Job]:
        """The job's ancestry, read from the store (see :meth:`schedy.Job.lineage`)."""
        return self.experiment.get_job(self.id).lineage()

    def _rank_zero_only(self, call: str) -> str:
        return (
            f"job {self.id}: {call} on a rank other than 0 of a distributed run; rank 0 "
            "holds the job and its lease, so call it there (if torch.distributed.get_rank() "
            "== 0)"
        )

    def __repr__(self) -> str:
        return (
            f"ReplicaJob(id={self.id!r}, experiment={self.experiment.name!r}, "
            f"hyperparameters={self.hyperparameters!r})"
        )


def is_replica(job: Any) -> bool:
    """Whether ``job`` is another rank's view of rank 0's job (which stores nothing)."""
    return isinstance(job, ReplicaJob)


# -- one job for every rank ----------------------------------------------
def next_job(
    experiment: Experiment,
    timeout: float | None = None,
    lease: float | None = None,
    *,
    broadcast: Broadcast | None = None,
    rank: int | None = None,
) -> Job | ReplicaJob:
    """Rank 0 claims the next job and every rank gets it (see the module docstring).

    ``broadcast`` and ``rank`` replace the default process group (tests, or
    a group of the caller's own); otherwise it is found, or initialised from
    torchrun's environment, or this is one process alone (or the parent of
    Lightning's launcher), which claims as ``experiment.next_job`` does.
    """
    if broadcast is None or rank is None:
        group = _process_group()
        if group is None:
            handed = _handed_down(experiment)
            if handed is not None:
                return handed
            group = _join_from_environment()
        if group is None or group[1] == 1:
            job = experiment.next_job(timeout=timeout, lease=lease)
            # For the ranks Lightning's launcher may start from this process's fit.
            os.environ[HANDOFF_ENV] = json.dumps(
                {"pid": os.getpid(), "experiment": experiment.name, "job": job.id}
            )
            return job
        os.environ.pop(HANDOFF_ENV, None)  # the process group carries the jobs from now on
        rank, broadcast = group[0], _broadcast_over_default_group
    if rank == 0:
        return _claim_and_share(experiment, broadcast, timeout, lease)
    return _receive(experiment, broadcast)


def jobs(
    experiment: Experiment,
    timeout: float | None = None,
    lease: float | None = None,
    *,
    broadcast: Broadcast | None = None,
    rank: int | None = None,
) -> Iterator[Job | ReplicaJob]:
    """:func:`next_job` until nothing can come, on every rank alike (like ``experiment.jobs()``)."""
    while True:
        try:
            job = next_job(experiment, timeout, lease, broadcast=broadcast, rank=rank)
        except NoJobError:
            return
        yield job


def _claim_and_share(
    experiment: Experiment, broadcast: Broadcast, timeout: float | None, lease: float | None
) -> Job:
    """Rank 0: claim, then broadcast the job -- or that there is none, or why it failed."""
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        chunk = WAIT_CHUNK_SECONDS if left is None else min(WAIT_CHUNK_SECONDS, left)
        started = time.monotonic()
        try:
            job = experiment.next_job(timeout=chunk, lease=lease)
        except NoJobError as error:
            # A wait cut at `chunk` takes the whole chunk; "nothing can come" may come sooner.
            waited_out = time.monotonic() - started >= chunk
            if waited_out and (deadline is None or time.monotonic() < deadline):
                broadcast(_StillWaiting())
                continue
            broadcast(_NoJob(str(error), nothing_left=True))
            raise
        except BaseException as error:
            with contextlib.suppress(Exception):  # the others must not wait forever
                broadcast(_NoJob(f"{type(error).__name__}: {error}", nothing_left=False))
            raise
        try:
            broadcast(JobSnapshot.of(job))
        except BaseException as error:
            job.__exit__(type(error), error, error.__traceback__)  # CRASHED, not left RUNNING
            raise
        return job


def _receive(experiment: Experiment, broadcast: Broadcast) -> ReplicaJob:
    """Another rank: wait for rank 0's job (or its news that there is none)."""
    while True:
        value = broadcast(None)
        if isinstance(value, _StillWaiting):
            continue
        if isinstance(value, _NoJob):
            if value.nothing_left:
                raise NoJobError(value.message)
            raise SchedyError(
                f"rank 0 could not claim a job, so this rank stops too: {value.message}"
            )
        if isinstance(value, JobSnapshot):
            if value.experiment != experiment.name:
                raise SchedyError(
                    f"rank 0 handed out job {value.id} of experiment {value.experiment!r}, but "
                    f"this rank asked for one of {experiment.name!r}: every rank must ask "
                    "for the same experiment"
                )
            return ReplicaJob(value, experiment)
        raise SchedyError(
            f"rank 0 sent {type(value).__name__} where this rank expected a schedy job: every "
            "rank must ask for its jobs (distributed_jobs / distributed_next_job) at the same "
            "point of the script, with no other broadcast in between"
        )


# -- where the ranks come from -------------------------------------------
def _process_group() -> tuple[int, int] | None:
    """``(rank, world size)`` of the initialised default process group; None without one."""
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - the torch integration needs torch anyway
        return None
    if not (dist.is_available() and dist.is_initialized()):
        return None
    return dist.get_rank(), dist.get_world_size()


def _join_from_environment() -> tuple[int, int] | None:
    """Initialise the default process group when torchrun's environment names several ranks.

    ``cpu:gloo,cuda:nccl`` where CUDA is there, so the group serves CPU
    objects (this handoff) and CUDA tensors (DDP) alike; Lightning finds it
    initialised and uses it.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return None
    try:
        world_size = int(os.environ["WORLD_SIZE"])
        int(os.environ["RANK"])
    except ValueError:
        raise SchedyError(
            f"RANK={os.environ['RANK']!r} and WORLD_SIZE={os.environ['WORLD_SIZE']!r} are not "
            "ranks: start the processes with torchrun, or initialise "
            "torch.distributed.init_process_group() before asking for a job"
        ) from None
    if world_size <= 1:
        return None
    import torch
    import torch.distributed as dist

    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), dist.get_world_size()


def _handed_down(experiment: Experiment) -> ReplicaJob | None:
    """The job rank 0 left for the ranks its Lightning launcher started (None: not for us)."""
    raw = os.environ.get(HANDOFF_ENV)
    if not raw or os.environ.get("LOCAL_RANK", "0") == "0":
        return None
    try:
        note = json.loads(raw)
        pid, name, job_id = int(note["pid"]), str(note["experiment"]), str(note["job"])
    except (ValueError, TypeError, KeyError):
        return None
    if pid != os.getppid():
        return None  # inherited from further up: not this run's rank 0
    if name != experiment.name:
        raise SchedyError(
            f"rank 0 holds job {job_id} of experiment {name!r}, but this rank asked for one of "
            f"{experiment.name!r}: every rank must ask for the same experiment"
        )
    logger.debug("job %s handed down by rank 0 (pid %d)", job_id, pid)
    return ReplicaJob(JobSnapshot.of(experiment.get_job(job_id)), experiment)


def _broadcast_over_default_group(value: Any) -> Any:
    import torch.distributed as dist

    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


# -- checked where the framework's process group exists ---------------------
class Collectives(Protocol):
    """What :func:`agree` needs of a framework's strategy (Lightning's has both)."""

    def broadcast(self, obj: Any, src: int = 0) -> Any: ...

    def reduce_boolean_decision(self, decision: bool, all: bool = True) -> bool: ...


def agree(job: Any, collectives: Collectives, rank: int, world_size: int) -> None:
    """Every rank must train rank 0's job: give them rank 0's values, or refuse on all ranks.

    Rank 0 broadcasts its snapshot; a rank holding the same job (a
    :class:`ReplicaJob`) takes rank 0's results, in case they moved on since
    it read them. A rank holding another job claimed it itself
    (``experiment.next_job()`` in every process): that cannot be made
    consistent, so every rank raises -- after all agreed, so none hangs in
    a collective.
    """
    first = collectives.broadcast(JobSnapshot.of(job) if rank == 0 else None, src=0)
    if not isinstance(first, JobSnapshot):
        first = JobSnapshot("?", "?", "?", {}, {})  # not schedy's broadcast: refused below
    same_job = first.id == job.id
    same_values = same_job and _same(first.hyperparameters, job.hyperparameters)
    if collectives.reduce_boolean_decision(same_values, all=True):
        if isinstance(job, ReplicaJob):
            job._adopt(first)
        return
    if not same_job:
        problem = (
            f"hold different jobs (this one, rank {rank}, job {job.id}; rank 0 job {first.id}): "
            "each process ran experiment.next_job() and claimed its own"
        )
    elif not same_values:
        problem = (
            f"hold job {job.id} with different hyperparameters (this one, rank {rank}: "
            f"{job.hyperparameters}; rank 0: {first.hyperparameters})"
        )
    else:
        problem = (
            f"hold different jobs (this one, rank {rank}, holds rank 0's job {job.id}; another "
            "rank holds another job, or other hyperparameters): each process ran "
            "experiment.next_job() and claimed its own"
        )
    raise RuntimeError(
        f"the {world_size} DDP processes of this run {problem}. Get the job on every rank "
        "with schedy.integrations.torch.distributed_jobs(experiment) (or "
        "distributed_next_job): rank 0 claims it and the other ranks train the same one. "
        "Or train one job per process: Trainer(devices=1) and one worker per GPU "
        "(`schedy worker NAME --workers N -- python train.py`, or schedy.run_workers)."
    )


def _same(first: Mapping[str, Any], other: Mapping[str, Any]) -> bool:
    """Equal values, NaN included (JSON values: a NaN equals no NaN under ``==``)."""
    if first == other:
        return True
    try:
        return json.dumps(first, sort_keys=True, default=repr) == json.dumps(
            other, sort_keys=True, default=repr
        )
    except (TypeError, ValueError):
        return False
