"""Run N local workers in one call: ``schedy.run_workers`` and ``schedy worker``.

Each worker is a process of its own (a Python function looping on
``next_job``, or any command that does), so workers never share a GIL or a
CUDA context. On a machine with GPUs each worker sees one through
``CUDA_VISIBLE_DEVICES``. Ctrl-C (or SIGTERM) stops them all: workers get
SIGINT, which ends the current job as CRASHED through ``with job:``, so no
job is left RUNNING; stragglers are ended after a grace period. That
supervision is :mod:`schedy._processes`, shared with ``schedy run``.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._processes import GRACE_SECONDS, Child, exit_code, stop, wait
from .errors import NoJobError

logger = logging.getLogger(__name__)

__all__ = ["run_workers"]

#: A worker whose function crashes this many jobs in a row stops (a bug, not bad luck).
MAX_CONSECUTIVE_CRASHES = 3


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


def _worker_env(
    index: int, gpus: Sequence[str], url: str | None, experiment: str
) -> dict[str, str]:
    env = dict(os.environ)
    env["SCHEDY_EXPERIMENT"] = experiment
    env["SCHEDY_WORKER_INDEX"] = str(index)
    if url is not None:
        env["SCHEDY_URL"] = url
    if gpus:
        env["CUDA_VISIBLE_DEVICES"] = gpus[index % len(gpus)]
    return env


def _function_worker(
    index: int, env: dict[str, str], url: str | None, experiment: str, train: Callable[[Any], Any]
) -> None:
    """Body of one function worker process: loop on next_job until nothing can come."""
    os.environ.update(env)
    # Own process group: a terminal's Ctrl-C reaches only the launcher, which
    # forwards exactly one SIGINT (a second one could cut short the put that
    # records the job as CRASHED).
    os.setpgrp()
    # SIGTERM behaves like Ctrl-C, so the job in hand ends CRASHED, not RUNNING.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
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
            logger.exception("worker %d: job crashed (%d in a row)", index, crashes)
            if crashes >= MAX_CONSECUTIVE_CRASHES:
                logger.error("worker %d stops after %d crashes in a row", index, crashes)
                sys.exit(1)


def run_workers(
    train: Callable[[Any], Any] | Sequence[str],
    experiment: str,
    *,
    workers: int = 2,
    db: str | None = None,
    gpus: Sequence[str] | None = None,
    grace: float = GRACE_SECONDS,
) -> int:
    """Run ``workers`` local worker processes on ``experiment`` until it is done.

    ``train`` is either a picklable function called as ``train(job)`` inside
    ``with experiment.next_job() as job`` (a module-level function), or a
    command (a list of arguments) whose process pulls jobs itself; it gets
    ``SCHEDY_URL``, ``SCHEDY_EXPERIMENT``, ``SCHEDY_WORKER_INDEX`` and, with
    GPUs (``gpus``, default: detected), ``CUDA_VISIBLE_DEVICES``. Returns 0
    when every worker ended cleanly, else the first non-zero exit code
    (130 after Ctrl-C).
    """
    if not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, not {workers!r}")
    if isinstance(train, str):
        raise TypeError("give the command as a list of arguments, e.g. ['python', 'train.py']")
    if not callable(train) and not list(train):
        raise ValueError("the worker command is empty")
    gpu_ids = list(detect_gpus() if gpus is None else gpus)
    envs = [_worker_env(i, gpu_ids, db, experiment) for i in range(workers)]
    processes: list[Child] = []
    # The launcher treats SIGTERM like Ctrl-C: stop the workers, do not orphan them.
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        if callable(train):
            context = multiprocessing.get_context("spawn")
            for index, env in enumerate(envs):
                spawned = context.Process(
                    target=_function_worker,
                    args=(index, env, db, experiment, train),
                    name=f"schedy-worker-{index}",
                )
                spawned.start()
                processes.append(spawned)
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
        for process in processes:
            wait(process, None)
    except KeyboardInterrupt:
        stop(processes, grace)
        return 130
    finally:
        signal.signal(signal.SIGTERM, previous)
    codes = [exit_code(process) for process in processes]
    return next((code for code in codes if code != 0), 0)
