"""``schedy replay``: a new experiment that retrains a schedule PBT found, from scratch.

A schedule is only worth something if it trains a model again: the replay
(:meth:`schedy.Experiment.replay`) hands out one job per step of the source
job's lineage, each continuing the replay's own previous job, so the worker
code that ran the PBT experiment trains one model along the schedule. The
command creates it and says how to run it.
"""

from __future__ import annotations

import argparse
import shlex

from .._progress import short
from ._base import Commands, Store

__all__ = ["setup"]


def _replay(args: argparse.Namespace, store: Store) -> int:
    db = store.open()
    source = db.get_experiment(args.source)
    replay = source.replay(args.name, args.job)
    db.add_experiment(replay)
    job = source.get_job(replay.source["job_id"])
    score = source._result_name
    scored = "" if score is None else f", {score} = {short(job.results.get(score))}"
    where = "" if job.member is None else f" (member {job.member}, generation {job.generation}"
    name = shlex.quote(args.name)
    print(
        f"Created {args.name!r}: a replay of job {job.id}{where}{scored}"
        f"{')' if where else ''} of {source.name!r}, {len(replay.steps)} steps, "
        "each continuing the previous one's checkpoint."
    )
    print(
        "Train it with the worker code that trained the source, on one worker (its steps run "
        "one after the other), e.g.:\n"
        f"  schedy worker {name} --workers 1 -- python train.py\n"
        f"  or, in your own loop: db.get_experiment({args.name!r}).next_job()\n"
        f"Then compare: schedy lineage {name}"
    )
    return 0


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy replay`` to ``commands``."""
    parser = commands.add_parser(
        "replay",
        parents=[common],
        help="create an experiment that retrains a job's schedule from scratch",
        description="Create experiment --name that retrains the hyperparameter schedule of "
        "JOB (default: the best job of SOURCE) from scratch: one job per step, in order, "
        "each continuing the replay's own previous job. Run it with the same worker code.",
    )
    parser.set_defaults(handler=_replay)
    parser.add_argument("source", metavar="SOURCE", help="the experiment whose schedule to replay")
    parser.add_argument("job", nargs="?", metavar="JOB", help="a job id (default: the best job)")
    parser.add_argument(
        "--name", required=True, metavar="NEW", help="the name of the new (replay) experiment"
    )
