"""``schedy worker``: start N local copies of a worker command, one GPU (or K) each, and wait.

The command is a worker that pulls jobs itself (a script looping on
``experiment.next_job()``); this is :func:`schedy.run_workers` from a shell,
so launching and stopping many workers (Ctrl-C ends their jobs CRASHED)
works the same from Python and from the command line. While they run it
prints one line per finished job, read from the store (``--quiet``: none;
``--verbose``: workers starting and ending too, and ``SCHEDY_VERBOSE=1`` for
them).
"""

from __future__ import annotations

import argparse

from .._processes import GRACE_SECONDS
from .._workers import Progress, run_workers
from ._base import Commands, Store, UsageError

__all__ = ["setup"]


def _worker(args: argparse.Namespace, store: Store) -> int:
    command: list[str] = args.cmd
    if not command:
        raise UsageError(
            "worker needs the worker command, e.g. schedy worker NAME -- python train.py"
        )
    db = store.open()
    db.get_experiment(args.experiment)  # fail early, with the usual message, on a typo
    gpus = None if args.gpus is None else [g for g in args.gpus.split(",") if g and g != "none"]
    progress: Progress = "quiet" if args.quiet else "verbose" if args.verbose else "lines"
    return run_workers(
        command,
        args.experiment,
        workers=args.workers,
        db=db.url,
        gpus=gpus,
        gpus_per_job=args.gpus_per_job,
        grace=args.grace,
        progress=progress,
    )


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy worker`` to ``commands``."""
    parser = commands.add_parser(
        "worker",
        parents=[common],
        help="run N local worker processes of a command",
        description=(
            "Start --workers copies of COMMAND, a worker that pulls jobs itself "
            "(e.g. a script looping on experiment.next_job()), and wait until they end. "
            "Each gets SCHEDY_URL, SCHEDY_EXPERIMENT, SCHEDY_WORKER_INDEX and, on a machine "
            "with GPUs, its own CUDA_VISIBLE_DEVICES (one GPU, or --gpus-per-job K of them for "
            "a member trained with DDP/torchrun). Ctrl-C stops them all; their jobs end "
            "CRASHED, none stays RUNNING. While they run, one line per finished job is printed "
            "(read from the store every second). Options may come before or after NAME: the "
            "command starts at the first word after NAME that is not one of them, or after --."
        ),
    )
    # takes_command: _main splits the command off before argparse reads the rest.
    parser.set_defaults(handler=_worker, takes_command=True)
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="number of processes (default 2; with --gpus-per-job, GPUs // K)",
    )
    parser.add_argument(
        "--gpus",
        metavar="IDS",
        default=None,
        help="GPU ids to spread workers over, e.g. 0,1 ('none': no GPU; default: detected)",
    )
    parser.add_argument(
        "--gpus-per-job",
        type=int,
        default=None,
        metavar="K",
        help=(
            "give each worker K GPUs of its own (CUDA_VISIBLE_DEVICES lists K), for a member "
            "trained over several with Lightning strategy='ddp' or torchrun; the GPUs must "
            "split into groups of K"
        ),
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=GRACE_SECONDS,
        metavar="SECONDS",
        help="after Ctrl-C, how long workers may take to stop before being killed",
    )
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument(
        "-q", "--quiet", action="store_true", help="print nothing (no line per finished job)"
    )
    talk.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also say when each worker starts and ends, and set SCHEDY_VERBOSE=1 for them",
    )
    parser.add_argument("experiment", metavar="NAME", help="the experiment the workers serve")
    parser.add_argument(
        "cmd",
        nargs="*",
        metavar="COMMAND",
        help="the worker command and its arguments (after the options, or after --)",
    )
