"""``schedy rm``: remove an experiment or a job, after showing it and asking.

Removing cannot be undone (a PBT member's checkpoints and schedule go with
its jobs), so the command prints what it would remove and waits for a yes,
unless ``-f``; no answer at all (a script, no terminal) means no.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from ._base import Commands, Store
from ._table import describe_experiment, describe_job

__all__ = ["setup"]


def _confirm(question: str) -> bool:
    """Ask on the terminal; no answer (EOF, no stdin) means no."""
    try:
        answer = input(f"{question} [y/N] ")
    except EOFError:
        print()
        return False
    return answer.strip().lower() in ("y", "yes")


def _rm(args: argparse.Namespace, store: Store) -> int:
    experiment = store.open().get_experiment(args.experiment)
    delete: Callable[[], None]
    if args.job is None:
        what = f"experiment {experiment.name!r} and all its jobs"
        description = describe_experiment(experiment)
        delete = experiment.delete
    else:
        job = experiment.get_job(args.job)
        what, description, delete = f"job {job.id}", describe_job(job), job.delete
    if not args.force:
        print(description)
        if not _confirm(f"Remove {what}?"):
            print(f"Not removed: {what}.")
            return 0
    delete()
    return 0


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy rm`` to ``commands``."""
    parser = commands.add_parser(
        "rm",
        parents=[common],
        help="remove an experiment or a job",
        description="Remove an experiment and all its jobs, or one job.",
    )
    parser.set_defaults(handler=_rm)
    parser.add_argument("experiment", metavar="NAME", help="the experiment")
    parser.add_argument("job", nargs="?", metavar="JOB", help="remove only this job")
    parser.add_argument("-f", "--force", action="store_true", help="do not ask for confirmation")
