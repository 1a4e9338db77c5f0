"""``schedy push``: queue a job by hand, or record one that ran elsewhere.

A manual search is fed from here, and a finished run from another tool can
be pushed DONE with its results so it ranks beside schedy's own jobs.
"""

from __future__ import annotations

import argparse

from ..jobs import Job
from ._args import pairs
from ._base import Commands, Store, emit
from ._table import describe_job

__all__ = ["setup"]


def _push(args: argparse.Namespace, store: Store) -> int:
    hyperparameters = pairs(args.hyperparameters, "hyperparameter")
    results = pairs(args.results, "result")
    experiment = store.open().get_experiment(args.experiment)
    job = experiment.add_job(hyperparameters, status=args.status, results=results)
    emit(describe_job(job))
    return 0


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy push`` to ``commands``."""
    parser = commands.add_parser(
        "push",
        parents=[common],
        help="add a job to an experiment",
        description="Add a job (queued, by default) to an experiment. Values are JSON.",
    )
    parser.set_defaults(handler=_push)
    parser.add_argument("experiment", metavar="NAME", help="the experiment")
    parser.add_argument(
        "-p",
        "--hyperparameters",
        nargs="+",
        required=True,
        metavar="NAME VALUE",
        help="""hyperparameters as name/value pairs, e.g. -p lr 0.01 layers '[512, 256]'""",
    )
    parser.add_argument(
        "-r",
        "--results",
        nargs="+",
        metavar="NAME VALUE",
        help="""results as name/value pairs, e.g. -r accuracy 0.9 loss '[0.9, 0.8]'""",
    )
    parser.add_argument(
        "-s",
        "--status",
        default=Job.QUEUED,
        choices=(Job.QUEUED, Job.RUNNING, Job.DONE, Job.CRASHED, Job.PRUNED),
        help="status of the job (default: QUEUED)",
    )
