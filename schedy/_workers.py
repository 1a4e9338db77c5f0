"""Run N local workers in one call: ``schedy.run_workers`` and ``schedy worker``.

Each worker is a process of its own (a Python function looping on
``next_job``, or any command that does), so workers never share a GIL or a
CUDA context. On a machine with GPUs each worker sees one through
``CUDA_VISIBLE_DEVICES`` -- or, with ``gpus_per_job=K``, a group of K of its
own, for a member that trains on several (DDP, torchrun). Ctrl-C (or
SIGTERM) stops them all: workers get SIGINT, which ends the current job as
CRASHED through ``with job:``, so no job is left RUNNING; stragglers are
ended after a grace period. That supervision is :mod:`schedy._processes`,
shared with ``schedy run``.

While they run, the launcher prints one line per finished job, read from
the store every second (:mod:`schedy._progress`) -- e.g. ``member 3 gen 5 ←
member 1 (exploit)  lr 0.012→0.014  val_acc 0.971`` -- and nothing else of
its own, so a run of hours reads as a short log of what PBT did;
``progress="quiet"`` prints nothing, ``"verbose"`` also says when each
worker starts and ends and lets workers say everything they have to say.
"""

from __future__ import annotations

import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal

from ._processes import GRACE_SECONDS, Child, alive, describe_exit, exit_code, stop, wait
from ._records import ExperimentStatus
from .errors import NoJobError, SchedyError

if TYPE_CHECKING:
    from ._progress import FinishedJobs
    from .db import SchedyDB

logger = logging.getLogger(__name__)

__all__ = ["run_workers"]

#: A worker whose function crashes this many jobs in a row stops (a bug, not bad luck).
MAX_CONSECUTIVE_CRASHES = 3
#: How often the launcher reads the store for newly finished jobs.
POLL_SECONDS = 1.0
#: What the launcher prints: a line per finished job, nothing, or that and more.
Progress = Literal["lines", "quiet", "verbose"]
_PROGRESS = ("lines", "quiet", "verbose")


def detect_gpus() -> list[str]:
    """GPU ids this machine offers: ``$CUDA_VISIBLE_DEVICES``, else ``nvidia-smi -L``."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return [gpu.strip() for gpu in visible.split(",") if gpu.strip() and gpu.strip() != "-1"]
    if shutil.which("nvidia-smi") is None:
        return []
    try:
        listing = subprocess.run(
            ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return []
    return [str(i) for i, line in enumerate(listing.splitlines()) if line.startswith("GPU ")]


#: Thread pools of the numeric libraries a worker may use: each worker gets its
#: share of the cores, or N workers of C threads each fight over C cores
#: (measured: Keras on torch, 2 workers on 2 cores, 87-185 ms/step instead of 2).
THREAD_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


def threads_per_worker(workers: int) -> int:
    """max(1, cores // workers): the cores this process may use, shared out."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, workers))


def gpu_groups(gpus: Sequence[str], per_job: int) -> list[str]:
    """``gpus`` cut into groups of ``per_job``, each a ``CUDA_VISIBLE_DEVICES`` value.

    A GPU left over, or two workers on one group, would make DDP members
    share devices they each think are theirs: refused, saying what would fit.
    """
    if not isinstance(per_job, int) or isinstance(per_job, bool) or per_job < 1:
        raise ValueError(f"gpus_per_job must be an int >= 1, not {per_job!r}")
    if not gpus:
        raise ValueError(
            f"gpus_per_job={per_job} needs GPUs, and none were found: name them "
            "(--gpus 0,1,2,3 / gpus=[...]) or set CUDA_VISIBLE_DEVICES"
        )
    if per_job > len(gpus):
        raise ValueError(
            f"gpus_per_job={per_job} is more than the {len(gpus)} GPU(s) there are "
            f"({','.join(gpus)}): ask for at most {len(gpus)}"
        )
    if len(gpus) % per_job:
        raise ValueError(
            f"{len(gpus)} GPUs ({','.join(gpus)}) do not split into groups of {per_job}: "
            f"use a gpus_per_job that divides {len(gpus)}, or name "
            f"{len(gpus) - len(gpus) % per_job} of them with --gpus / gpus=[...]"
        )
    return [",".join(gpus[i : i + per_job]) for i in range(0, len(gpus), per_job)]


def _worker_env(
    index: int,
    gpus: Sequence[str],
    url: str | None,
    experiment: str,
    verbose: bool = False,
    threads: int | None = None,
) -> dict[str, str]:
    env = dict(os.environ)
    if threads is not None:
        for variable in THREAD_VARIABLES:
            env.setdefault(variable, str(threads))  # the user's own setting wins
    env["SCHEDY_EXPERIMENT"] = experiment
    env["SCHEDY_WORKER_INDEX"] = str(index)
    if verbose:
        env["SCHEDY_VERBOSE"] = "1"
    if url is not None:
        env["SCHEDY_URL"] = url
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def _function_worker(
    index: int,
    env: dict[str, str],
    url: str | None,
    experiment: str,
    train: Callable[[Any], Any],
    verbose: bool = False,
) -> None:
    """Body of one function worker process: loop on next_job until nothing can come.

    A crashed job's traceback is stored with the job (and its line printed by
    the launcher); it is logged here too only when ``verbose``. Stopping
    after crashes in a row is always said.
    """
    os.environ.update(env)
    if not verbose:
        # schedy's own log records (e.g. a member retired) stay out of the run's output.
        logging.getLogger("schedy").addHandler(logging.NullHandler())
    # Own process group: a terminal's Ctrl-C reaches only the launcher, which
    # forwards exactly one SIGINT (a second one could cut short the put that
    # records the job as CRASHED).
    os.setpgrp()
    # SIGTERM (a preemption) is the job's to handle: inside `with job:` it ends
    # the job CRASHED ("preempted") and the process exits 0 (schedy.jobs).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    from .db import SchedyDB

    handle = SchedyDB(url).get_experiment(experiment)
    crashes = 0
    while True:
        try:
            with handle.next_job() as job:
                train(job)
            crashes = 0
        except NoJobError:
            return
        except KeyboardInterrupt:
            sys.exit(130)
        except Exception:
            crashes += 1
            if verbose:
                logger.exception("worker %d: job crashed (%d in a row)", index, crashes)
            if crashes >= MAX_CONSECUTIVE_CRASHES:
                print(
                    f"schedy: worker {index} stops after {crashes} crashed jobs in a row "
                    "(their errors are stored with the jobs: schedy show NAME JOB)",
                    file=sys.stderr,
                    flush=True,
                )
                sys.exit(1)


class _Progress:
    """The launcher's view of the run: a line per finished job, read from the store.

    Reading never stops the run: a store that cannot be read right now (or
    an experiment that is gone) just means no line this time.
    """

    def __init__(self, url: str | None, experiment: str, progress: Progress) -> None:
        self.progress = progress
        self._db: SchedyDB | None = None
        self._watcher: FinishedJobs | None = None
        self._next = 0.0
        self._failed = False
        if progress == "quiet":
            return
        try:
            from ._progress import FinishedJobs
            from .db import SchedyDB

            self._db = SchedyDB(url)
            # The history is read on the first look, once the workers run; what ended
            # before now is not this run's (a second's slack for another clock).
            self._watcher = FinishedJobs(
                self._db.get_experiment(experiment), since=time.time() - 1.0
            )
            self._watcher.retired()  # the members that had ended before this run
        except (SchedyError, OSError) as error:
            self._note(f"no progress lines: {error}")
            self.close()

    def _note(self, message: str) -> None:
        if self.progress == "verbose":
            print(f"schedy: {message}", file=sys.stderr, flush=True)

    def say(self, message: str) -> None:
        """A line about the workers themselves (verbose only)."""
        self._note(message)

    def tick(self, force: bool = False) -> None:
        """Print the lines of the jobs that finished since the last look (at most
        one look per :data:`POLL_SECONDS` unless ``force``)."""
        if self._watcher is None or (not force and time.monotonic() < self._next):
            return
        self._next = time.monotonic() + POLL_SECONDS
        from ._progress import describe

        try:
            for job in self._watcher.poll():
                print(describe(self._watcher, job), flush=True)
            for line in self._watcher.retired():
                print(line, flush=True)
        except (SchedyError, OSError) as error:
            if not self._failed:
                self._note(f"cannot read the store for progress lines now: {error}")
            self._failed = True

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
        self._db = self._watcher = None


def run_workers(
    train: Callable[[Any], Any] | Sequence[str],
    experiment: str,
    *,
    workers: int | None = None,
    db: str | None = None,
    gpus: Sequence[str] | None = None,
    gpus_per_job: int | None = None,
    grace: float = GRACE_SECONDS,
    progress: Progress = "lines",
) -> int:
    """Run ``workers`` local worker processes on ``experiment`` until it is done.

    ``train`` is either a picklable function called as ``train(job)`` inside
    ``with experiment.next_job() as job`` (a module-level function), or a
    command (a list of arguments) whose process pulls jobs itself; it gets
    ``SCHEDY_URL``, ``SCHEDY_EXPERIMENT``, ``SCHEDY_WORKER_INDEX`` and, with
    GPUs (``gpus``, default: detected), ``CUDA_VISIBLE_DEVICES``. Returns 0
    when every worker ended cleanly, else the first non-zero exit code
    (130 after Ctrl-C).

    ``workers`` defaults to 2, each seeing one GPU (round robin). With
    ``gpus_per_job=K`` each worker sees K GPUs of its own instead (a member
    trained with DDP or torchrun over them; see
    :func:`schedy.integrations.torch.distributed_jobs`), and ``workers``
    defaults to GPUs // K; GPUs that do not split into groups of K, or more
    workers than groups, are a ``ValueError``.

    ``progress``: ``"lines"`` prints one line per finished job on stdout
    (read from the store every second), ``"quiet"`` nothing, ``"verbose"``
    also when each worker starts and ends, and sets ``SCHEDY_VERBOSE=1`` for
    the workers (function workers then log a crashed job's traceback; the
    examples' workers let their framework talk).
    """
    gpu_ids = list(detect_gpus() if gpus is None else gpus)
    if gpus_per_job is not None:
        gpu_ids = gpu_groups(gpu_ids, gpus_per_job)
        if workers is None:
            workers = len(gpu_ids)
        elif isinstance(workers, int) and workers > len(gpu_ids):
            raise ValueError(
                f"{workers} workers of {gpus_per_job} GPUs each need {workers * gpus_per_job} "
                f"GPUs; there are {len(gpu_ids) * gpus_per_job}: run at most {len(gpu_ids)} "
                "workers"
            )
    elif workers is None:
        workers = 2
    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, not {workers!r}")
    if progress not in _PROGRESS:
        raise ValueError(f"progress must be one of {', '.join(_PROGRESS)}, not {progress!r}")
    if isinstance(train, str):
        raise TypeError("give the command as a list of arguments, e.g. ['python', 'train.py']")
    if not callable(train) and not list(train):
        raise ValueError("the worker command is empty")
    verbose = progress == "verbose"
    threads = threads_per_worker(workers)
    envs = [_worker_env(i, gpu_ids, db, experiment, verbose, threads) for i in range(workers)]
    processes: list[Child] = []
    # Opened before the workers start, so only the jobs of this run are reported.
    lines = _Progress(db, experiment, progress)
    # SIGTERM (a cluster preempting this machine) goes on to the workers, whose
    # jobs end CRASHED "preempted" at once; the launcher waits, then exits 0.
    previous = signal.signal(signal.SIGTERM, _raise_preempted)
    restarts = None
    try:
        if callable(train):
            context = multiprocessing.get_context("spawn")
            for index, env in enumerate(envs):
                spawned = context.Process(
                    target=_function_worker,
                    args=(index, env, db, experiment, train, verbose),
                    name=f"schedy-worker-{index}",
                )
                spawned.start()
                processes.append(spawned)
                lines.say(f"worker {index} started (pid {spawned.pid})")
        else:
            command = list(train)
            for env in envs:
                try:
                    child = subprocess.Popen(command, env=env, start_new_session=True)
                except OSError as error:
                    stop(processes, grace)
                    raise ValueError(
                        f"cannot start worker command {command[0]!r}: {error}"
                    ) from None
                processes.append(child)
                lines.say(f"worker {len(processes) - 1} started (pid {child.pid})")
            restarts = _Restarts(command, envs, db, experiment, lines)
        _wait_all(processes, lines, restarts)
    except _Preempted:
        for process in processes:
            if alive(process) and process.pid is not None:
                with contextlib.suppress(OSError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for process in processes:
            wait(process, max(deadline - time.monotonic(), 0.0))
        stop([p for p in processes if alive(p)], 5.0)
        with contextlib.suppress(Exception):
            lines.tick(force=True)
        codes = [exit_code(process) for process in processes]
        return next((code for code in codes if code not in (0, -signal.SIGTERM)), 0)
    except KeyboardInterrupt:
        stop(processes, grace)
        with contextlib.suppress(KeyboardInterrupt):
            lines.tick(force=True)  # the jobs Ctrl-C ended, CRASHED
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
        lines.close()
        if restarts is not None:
            restarts.close()
    forgiven = set() if restarts is None else restarts.finished_on
    codes = [exit_code(p) for index, p in enumerate(processes) if index not in forgiven]
    return next((code for code in codes if code != 0), 0)


class _Preempted(Exception):
    """The launcher received SIGTERM."""


def _raise_preempted(signum: int, frame: Any) -> None:
    raise _Preempted()


class _Restarts:
    """Starts a worker command again while the experiment has work.

    A script written like the README's one-job snippet runs one job and exits
    0: started again, it runs a whole experiment. A slot is started again
    when its process ended and the experiment is still RUNNING and gained a
    job while that process ran (so a worker that found nothing to do, e.g. an
    empty manual queue, is not restarted in a loop); after
    :data:`MAX_CONSECUTIVE_CRASHES` failed exits in a row the slot stops.
    """

    def __init__(
        self,
        command: list[str],
        envs: Sequence[dict[str, str]],
        url: str | None,
        experiment: str,
        lines: _Progress,
    ) -> None:
        from .db import SchedyDB

        self.command, self.envs, self.lines = command, envs, lines
        self._db = SchedyDB(url)
        self._name = experiment
        self._last: str | None = None
        self._jobs = 0
        self._count()
        self.started_at = [self._jobs] * len(envs)
        self.crashes = [0] * len(envs)
        #: Slots whose last process failed only because the experiment had finished.
        self.finished_on: set[int] = set()

    def _count(self) -> int:
        """Jobs of the experiment so far, read incrementally (what is new only)."""
        storage = self._db._storage
        while True:
            page = storage.list_jobs(self._name, after=self._last, limit=1000)
            self._jobs += len(page)
            if page:
                self._last = page[-1].id
            if len(page) < 1000:
                return self._jobs

    def again(self, index: int, code: int) -> Child | None:
        """A new process for slot ``index`` whose last one exited with ``code``, or None."""
        try:
            jobs = self._count()
            running = self._db.get_experiment(self._name).status == ExperimentStatus.RUNNING
        except (SchedyError, OSError):
            return None
        self.crashes[index] = 0 if code == 0 else self.crashes[index] + 1
        if not running:
            # Found the experiment finished: a one-job script then exits with
            # NoJobError, which is how it ends, not a failure of the run.
            if code != 0 and self.crashes[index] < MAX_CONSECUTIVE_CRASHES:
                self.finished_on.add(index)
            return None
        if jobs == self.started_at[index]:
            return None
        if self.crashes[index] >= MAX_CONSECUTIVE_CRASHES:
            print(
                f"schedy: worker {index} stops: its command failed {self.crashes[index]} times "
                "in a row",
                file=sys.stderr,
                flush=True,
            )
            return None
        self.started_at[index] = jobs
        child = subprocess.Popen(self.command, env=self.envs[index], start_new_session=True)
        self.lines.say(f"worker {index} started again (pid {child.pid})")
        return child

    def close(self) -> None:
        self._db.close()


def _wait_all(processes: list[Child], lines: _Progress, restarts: _Restarts | None = None) -> None:
    """Wait for every worker to end, printing progress lines meanwhile; with
    ``restarts``, a command that ended is started again while there is work."""
    running = dict(enumerate(processes))
    while running:
        poll = POLL_SECONDS if lines.progress != "quiet" or restarts is not None else None
        wait(next(iter(running.values())), poll)
        for index, process in list(running.items()):
            if not alive(process):
                del running[index]
                code = exit_code(process)
                lines.say(f"worker {index} {describe_exit(code)}")
                replacement = None if restarts is None else restarts.again(index, code)
                if replacement is not None:
                    processes[index] = running[index] = replacement
        lines.tick()
    lines.tick(force=True)
