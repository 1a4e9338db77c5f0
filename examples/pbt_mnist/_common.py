"""What every worker of this example shares: options, data, the job loop, the score."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable
from typing import Any

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from data import Dataset, load_dataset

import schedy
from schedy.errors import NoJobError


def worker_arguments(description: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--db", default=os.environ.get("SCHEDY_URL"), help="store URL")
    parser.add_argument(
        "--experiment", default=os.environ.get("SCHEDY_EXPERIMENT", "MNIST with PBT")
    )
    parser.add_argument("--dataset", choices=["mnist", "digits"], default="mnist")
    parser.add_argument("--data-dir", default="data/mnist", help="folder of the MNIST IDX files")
    parser.add_argument("--download", action="store_true", help="fetch MNIST into --data-dir")
    parser.add_argument("--epochs-per-job", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--checkpoint-dir",
        default=os.environ.get("SCHEDY_CHECKPOINT_DIR", "checkpoints"),
        help="a folder every worker can read",
    )
    parser.add_argument("--keep-top", type=int, default=1, help="best checkpoints kept")
    parser.add_argument("--jobs", type=int, default=None, help="stop after this many jobs")
    parser.add_argument(
        "--threads", type=int, default=1, help="CPU threads per worker (workers run side by side)"
    )
    parser.add_argument(
        "--verbose",
        action="store_true",
        default=os.environ.get("SCHEDY_VERBOSE") == "1",  # set by `schedy worker --verbose`
        help="let the framework print its per-job notes and warnings",
    )
    args = parser.parse_args()
    if not args.verbose:
        # The launcher reports each job and retired member: schedy's own warnings in the
        # workers (e.g. "retires member 3") would say it twice. Errors still show.
        logging.getLogger("schedy").setLevel(logging.ERROR)
    return args


def job_loop(args: argparse.Namespace, train_job: Callable[[schedy.Job, Dataset], Any]) -> None:
    """Train jobs until the experiment has none left (or ``--jobs`` ran)."""
    data = load_dataset(args.dataset, args.data_dir, args.download)
    experiment = schedy.SchedyDB(args.db).get_experiment(args.experiment)
    done = 0
    while args.jobs is None or done < args.jobs:
        try:
            with experiment.next_job() as job:
                train_job(job, data)
        except NoJobError:
            return
        done += 1


def record_max_accuracy(job: schedy.Job, accuracy: float) -> None:
    """The experiment ranks by ``max_accuracy``: the best accuracy along the lineage."""
    job.results["max_accuracy"] = max(accuracy, float(job.results.get("max_accuracy", 0.0)))
