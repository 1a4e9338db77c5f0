"""Jobs: one trial of an experiment, its lifecycle, lease heartbeat and results."""

from __future__ import annotations

import logging
import math
import os
import signal
import threading
import time
import traceback
from types import TracebackType
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from . import _values
from ._records import JobRecord, JobStatus, JobUpdate
from .errors import NotFoundError, UnsafeUpdateError

if TYPE_CHECKING:
    from .storage._base import Storage

__all__ = ["Job"]

logger = logging.getLogger(__name__)


class Experiment(Protocol):
    """What a job needs of its experiment (``schedy.Experiment``), named without
    importing it: experiments build jobs, so jobs sit below them."""

    name: str

    @property
    def _storage(self) -> Storage: ...

    def get_job(self, job_id: str) -> Job: ...


class Preempted(SystemExit):
    """SIGTERM arrived inside ``with job:`` (a cluster preempting the worker).

    A ``SystemExit(0)``: the job ends CRASHED at once, saying so, so its
    member resumes on another worker without waiting for the lease; and the
    worker exits with status 0, as schedulers expect of a preempted task.
    """

    def __init__(self) -> None:
        super().__init__(0)

    def __str__(self) -> str:
        return (
            "preempted: the worker received SIGTERM (a cluster scheduler reclaiming its "
            "machine) and ended this job; its population member resumes on another worker"
        )


def _raise_preempted(signum: int, frame: Any) -> None:
    raise Preempted()


def _catch_preemption() -> Any:
    """While a job runs in the main thread, SIGTERM ends it cleanly (see
    :class:`Preempted`) instead of killing the process with the job RUNNING.
    Only when SIGTERM still has its default action: a handler of the user's
    or a framework's is left alone. Returns what to restore (None: nothing)."""
    if threading.current_thread() is not threading.main_thread():
        return None
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return None
        return signal.signal(signal.SIGTERM, _raise_preempted)
    except (ValueError, OSError):  # no signals here (embedded interpreter)
        return None


def _restore_sigterm(previous: Any) -> None:
    if previous is None or threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is _raise_preempted:
            signal.signal(signal.SIGTERM, previous)
    except (ValueError, OSError):
        pass


class _LeaseKeeper:
    """One daemon thread per process that renews the leases of running jobs.

    A single shared thread (rather than one per job) keeps ``with job:`` cheap
    — starting a thread costs more than a whole scheduling cycle. It renews
    each lease every third of its duration, so a worker survives two missed
    renewals before its job is declared lost.

    A renewal waits out a store that is away (the HTTP client retries it for
    ``retry_seconds``) and lands when it is back, so an outage shorter than
    the lease costs nothing. Renewals that fail even so are logged once per
    outage, not every third of a lease: the first failure is a warning, the
    next ones stay quiet until a renewal reaches the store again.
    """

    def __init__(self) -> None:
        self._jobs: dict[int, tuple[Job, float]] = {}
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self._pid = os.getpid()
        # When the thread will next wake up by itself: an added job due later
        # needs no wake-up call, so a short job costs no thread switch.
        self._wake_at = math.inf
        # Since when renewals fail (None: they reach the store).
        self._failing_since: float | None = None

    def add(self, job: Job) -> None:
        with self._cond:
            if self._pid != os.getpid():  # forked: the parent's thread is not ours
                self._jobs, self._thread, self._pid = {}, None, os.getpid()
                self._wake_at = math.inf
            due = time.monotonic() + job._lease_seconds / 3
            self._jobs[id(job)] = (job, due)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._loop, name="schedy-lease-keeper", daemon=True
                )
                self._thread.start()
            if due < self._wake_at:
                self._cond.notify()

    def remove(self, job: Job) -> None:
        with self._cond:
            self._jobs.pop(id(job), None)

    def _loop(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                due = [job for job, at in self._jobs.values() if at <= now]
                for job in due:
                    self._jobs[id(job)] = (job, now + job._lease_seconds / 3)
                if not due:
                    self._wake_at = min((at for _, at in self._jobs.values()), default=math.inf)
                    timeout = None if self._wake_at == math.inf else max(self._wake_at - now, 0.001)
                    self._cond.wait(timeout=timeout)
                    self._wake_at = 0.0  # awake: adds need not notify, the loop rescans
                    continue
            for job in due:
                job._renew_lease()

    def renewal_failed(self, job: Job, error: Exception) -> None:
        """A renewal did not reach the store: said once per outage."""
        if self._failing_since is not None:
            logger.debug("could not renew the lease of job %s either: %s", job.id, error)
            return
        self._failing_since = time.monotonic()
        logger.warning(
            "could not renew the lease of job %s (%s); renewals go on every third of a "
            "lease, and say nothing more until one reaches the store",
            job.id,
            error,
        )

    def renewal_reached(self) -> None:
        since, self._failing_since = self._failing_since, None
        if since is not None:
            logger.info(
                "lease renewals reach the store again, after %.0f s", time.monotonic() - since
            )


_keeper = _LeaseKeeper()


class Job:
    """One trial: hyperparameters to try and the results it reported.

    Use it as a context manager around the work: the lease is renewed by a
    heartbeat while inside, and on exit the job is marked DONE (or CRASHED if
    an exception escaped, with the error recorded) and its results are pushed
    either way::

        with experiment.next_job() as job:
            job.results['accuracy'] = train(**job.hyperparameters)

    PBT lineage: ``member`` (population slot), ``generation`` (how many jobs
    trained the model state before this one: the parent's generation + 1,
    across exploits), ``parent_id`` (the job whose results and
    checkpoint this one continues) and ``exploited_from`` (set when the
    parent belonged to a better member that was copied).
    """

    #: Waiting in the queue to be handed out by ``next_job``.
    QUEUED: ClassVar[JobStatus] = JobStatus.QUEUED
    #: Handed out to a worker, which holds its lease.
    RUNNING: ClassVar[JobStatus] = JobStatus.RUNNING
    #: Failed: an exception in the worker, or the worker was lost (lease expired).
    CRASHED: ClassVar[JobStatus] = JobStatus.CRASHED
    #: Abandoned on purpose because it was not worth going on.
    PRUNED: ClassVar[JobStatus] = JobStatus.PRUNED
    #: Finished successfully.
    DONE: ClassVar[JobStatus] = JobStatus.DONE

    def __init__(
        self,
        job_id: str,
        experiment: Experiment,
        hyperparameters: dict[str, Any],
        status: str = JobStatus.QUEUED,
        results: dict[str, Any] | None = None,
    ) -> None:
        self.id = job_id
        self.experiment = experiment
        self.status = status
        self.hyperparameters = hyperparameters
        self.results: dict[str, Any] = {} if results is None else results
        self.member: int | None = None
        self.generation: int | None = None
        self.parent_id: str | None = None
        self.exploited_from: str | None = None
        self.error: str | None = None
        self.created_at = 0.0
        self.updated_at = 0.0
        self._lease_token: str | None = None
        self._lease_seconds = 60.0
        self._lease_lost = False
        # When a renewal (or the claim) last reached the store, and whether
        # this job left `with` (a renewal answered after that says nothing).
        self._renewed_at = time.monotonic()
        self._stopped = False

    @classmethod
    def _from_record(
        cls, record: JobRecord, experiment: Experiment, lease_seconds: float | None = None
    ) -> Job:
        job = cls(record.id, experiment, record.hyperparameters, record.status, record.results)
        job.member = record.member
        job.generation = record.generation
        job.parent_id = record.parent_id
        job.exploited_from = record.exploited_from
        job.error = record.error
        job.created_at = record.created_at
        job.updated_at = record.updated_at
        job._lease_token = record.lease_token
        if lease_seconds is not None:
            job._lease_seconds = lease_seconds
        return job

    @property
    def job_id(self) -> str:
        """Alias of ``id`` (the original client's name)."""
        return self.id

    def __reduce__(self) -> Any:
        # A copy in another process would hold this process's lease without
        # its heartbeat, and the results it pushed would be overwritten when
        # this process leaves `with`. Say so, instead of "cannot pickle lock".
        raise TypeError(
            f"schedy job {self.id} cannot be pickled or sent to another process: its lease "
            "and results belong to the process that claimed it. Pass the job id (job.id) "
            "and read it there with experiment.get_job(); for several GPUs run one worker "
            "process per GPU (`schedy worker NAME --workers N -- CMD`, schedy.run_workers) "
            "rather than ddp_spawn / multiprocessing inside one job, or train one job on "
            "several with DDP/torchrun and schedy.integrations.torch.distributed_jobs (rank 0 "
            "claims it, the other ranks get a copy of its values)."
        )

    @property
    def _storage(self) -> Storage:
        return self.experiment._storage

    def put(self, safe: bool = True) -> None:
        """Store status, hyperparameters and results now.

        A worker that lost its lease (its job expired and was marked CRASHED)
        gets :class:`~schedy.errors.UnsafeUpdateError` and writes nothing.
        ``safe=False`` (the original client's flag) writes without checking
        the lease, as an administrator fixing a job by hand would.
        """
        update = JobUpdate(
            status=self.status,
            hyperparameters=self.hyperparameters,
            results=self.results,
            error=self.error,
        )
        record = self._storage.update_job(
            self.experiment.name, self.id, update, lease_token=self._lease_token if safe else None
        )
        self.updated_at = record.updated_at
        if record.status != Job.RUNNING:
            self._lease_token = None
        elif record.lease_token is not None:  # run by hand: the store granted a lease
            self._lease_token = record.lease_token

    def delete(self, ensure: bool = True) -> None:
        """Delete this job from the store; with ``ensure=False`` (the original
        client's flag) a job that is already gone is not an error."""
        self._stop_heartbeat()
        try:
            self._storage.delete_job(self.experiment.name, self.id)
        except NotFoundError:
            if ensure:
                raise

    def try_run(self) -> None:
        """Mark this job RUNNING under a lease of this worker's, or raise
        :class:`~schedy.errors.UnsafeUpdateError` if another worker runs it
        already (the original client's call before ``with job:``)."""
        if self._lease_token is not None:
            return
        current = self.experiment.get_job(self.id)
        if current.status == Job.RUNNING:
            raise UnsafeUpdateError(
                f"job {self.id} of {self.experiment.name!r} is RUNNING already: another "
                "worker took it; ask experiment.next_job() for another"
            )
        self.status = Job.RUNNING
        self.put()
        if self._lease_token is not None:
            self._renew_lease()

    def lineage(self) -> list[Job]:
        """This job's ancestry, root first: the hyperparameter schedule it followed.

        Follows ``parent_id`` through exploits, so the list is exactly the
        sequence of jobs whose checkpoints led to this one. A parent deleted
        by an older schedy (which allowed it) ends the chain there.
        """
        chain = [self]
        seen = {self.id}
        while chain[-1].parent_id is not None and chain[-1].parent_id not in seen:
            try:
                parent = self.experiment.get_job(chain[-1].parent_id)
            except NotFoundError:
                break
            seen.add(parent.id)
            chain.append(parent)
        chain.reverse()
        return chain

    # -- lease -------------------------------------------------------------
    def _renew_lease(self) -> None:
        token = self._lease_token
        if token is None or self._lease_lost:
            return
        sent = time.monotonic()
        try:
            held = self._storage.renew_lease(
                self.experiment.name, self.id, token, self._lease_seconds
            )
        except Exception as error:  # an outage longer than the retries: try again later
            _keeper.renewal_failed(self, error)
            return
        _keeper.renewal_reached()
        if held:
            self._renewed_at = sent
            return
        if self._stopped or self._lease_token != token:
            return  # the job ended meanwhile: its last put tells what happened
        self._lease_lost = True
        logger.error(
            "job %s of %r lost its lease: %s; it was marked CRASHED and its population "
            "member goes on in another worker, so its results will be refused",
            self.id,
            self.experiment.name,
            self._silence() or "another writer took the job over",
        )

    def _silence(self) -> str | None:
        """How the lease came to be lost, when this worker can tell: no renewal
        reached the store for longer than the lease (else None)."""
        silent = time.monotonic() - self._renewed_at
        if silent <= self._lease_seconds:
            return None
        return (
            f"no lease renewal reached the store for {silent:.0f} s, longer than its "
            f"{self._lease_seconds:g} s lease (the store was away, or this process stalled, "
            "that long)"
        )

    def _stop_heartbeat(self) -> None:
        self._stopped = True
        _keeper.remove(self)

    # -- context manager ---------------------------------------------------
    def __enter__(self) -> Job:
        if self.status != Job.RUNNING:
            self.status = Job.RUNNING
            self.put()
            if self._lease_token is not None:
                self._renew_lease()  # from the store's first lease to this job's own length
        if self._lease_token is not None:
            self._stopped = False
            _keeper.add(self)
        self._previous_sigterm = _catch_preemption()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._stop_heartbeat()
        _restore_sigterm(getattr(self, "_previous_sigterm", None))
        if exc_type is None:
            self.status = Job.DONE
        elif isinstance(exc_value, Preempted):
            self.status = Job.CRASHED
            self.error = str(exc_value)
        else:
            self.status = Job.CRASHED
            lines = traceback.format_exception(exc_type, exc_value, tb)
            self.error = "".join(lines)[-4000:]
        try:
            self.put()
        except UnsafeUpdateError as error:
            if exc_type is None:
                silence = self._silence()
                if silence is None:
                    raise
                raise UnsafeUpdateError(
                    f"{error} Here {silence}: keep lease_seconds (SchedyDB(lease_seconds=...), "
                    "$SCHEDY_LEASE_SECONDS) above the longest outage of the store you expect."
                ) from None
            if not self._lease_lost:  # else it was said when the heartbeat found out
                logger.error("could not record the crash of job %s: its lease was lost", self.id)
        except TypeError:
            self._end_with_what_can_be_stored(exc_type is None)

    def _end_with_what_can_be_stored(self, raise_error: bool) -> None:
        """A value cannot be stored as the job ends: store everything else,
        CRASHED with the values left out named, rather than lose a finished
        training's results or leave the job RUNNING; then tell the user."""
        hyperparameters, left_out = _values.storable_part(self.hyperparameters, "hyperparameters")
        results, more = _values.storable_part(self.results, "results")
        left_out += more
        message = (
            "job results that cannot be stored were left out: "
            + "; ".join(left_out)
            + ". Use JSON values (numbers, strings, booleans, None, lists and dicts of them, "
            "numpy arrays)"
        )
        if self.status == Job.CRASHED and self.error:
            message = f"{message}\n{self.error}"
        self.status = Job.CRASHED
        self.error = message[-4000:]
        self._storage.update_job(
            self.experiment.name,
            self.id,
            JobUpdate(
                status=Job.CRASHED,
                hyperparameters=hyperparameters,
                results=results,
                error=self.error,
            ),
            lease_token=self._lease_token,
        )
        self._lease_token = None
        if raise_error:
            raise TypeError(message) from None

    def __repr__(self) -> str:
        return (
            f"Job(id={self.id!r}, experiment={self.experiment.name!r}, status={self.status!r}, "
            f"hyperparameters={self.hyperparameters!r})"
        )

    @property
    def budget(self) -> float | None:
        """The total resource (e.g. epochs, counted along the lineage) the model
        must have reached when this job ends, for kinds that set one
        (successive halving and Hyperband: the rung's resource); None otherwise.
        The Lightning and Keras callbacks train until it when it is set."""
        budget = getattr(getattr(self.experiment, "_scheduler", None), "budget", None)
        if budget is None:
            return None
        value: float | None = budget(self.member, self.generation)
        return value
