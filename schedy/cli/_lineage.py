"""``schedy lineage``: the chain of jobs that trained a model, for a person or a script.

PBT's product is a hyperparameter *schedule*; this prints the one behind a
job (default: the best, :meth:`schedy.Experiment.best`): per step its
generation, job, member, the job it copied when it was an exploit, the
hyperparameters that changed and its score. The table folds runs of steps
that changed nothing into one row (``generation 3-7``, ``jobs 5``) so a
schedule of hundreds of generations reads in a screen; ``--full`` lists
every step, ``--json`` / ``--csv`` give every step with all its values.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
from typing import Any

from .._progress import short
from .._values import is_number
from ._base import Commands, Store, emit
from ._table import schedule_table, text

__all__ = ["setup"]

#: The CSV's fixed columns, then one per hyperparameter, then the score.
_FIELDS = ("job_id", "member", "generation", "status", "parent_id", "exploited_from")


def _csv(steps: list[dict[str, Any]], score: str) -> str:
    names: dict[str, None] = {}
    for step in steps:
        names.update(dict.fromkeys(step["hyperparameters"]))
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*_FIELDS, *names, score])
    for step in steps:
        values = [step[field] for field in _FIELDS]
        values += [step["hyperparameters"].get(name) for name in names]
        values.append(step["score"])
        writer.writerow(["" if v is None else v if is_number(v) else text(v) for v in values])
    return out.getvalue().rstrip("\n")


def _lineage(args: argparse.Namespace, store: Store) -> int:
    experiment = store.open().get_experiment(args.experiment)
    steps = experiment.lineage(args.job)
    score = experiment._result_name or "score"
    if args.json:
        print(json.dumps(steps, indent=2, allow_nan=True))
    elif args.csv:
        emit(_csv(steps, score))
    else:
        last = steps[-1]
        print(
            f"Lineage of job {last['job_id']} ({len(steps)} steps; {score} = "
            f"{short(last['score'])}), oldest first"
            + ("" if args.full else "; runs of unchanged steps folded (--full: every step)")
            + ":"
        )
        emit(schedule_table(steps, experiment._result_name, fold=not args.full).render())
    return 0


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy lineage`` to ``commands``."""
    parser = commands.add_parser(
        "lineage",
        parents=[common],
        help="the hyperparameter schedule that trained a job's model (default: the best)",
        description="Print the chain of jobs that trained JOB's model (default: the best job), "
        "from its generation-0 ancestor, through exploits: per step its generation, job id, "
        "member, the job it copied (an exploit), the hyperparameters that changed and its "
        "score. The table folds runs of steps that changed nothing (generation 3-7, jobs 5).",
    )
    parser.set_defaults(handler=_lineage)
    parser.add_argument("experiment", metavar="NAME", help="the experiment")
    parser.add_argument("job", nargs="?", metavar="JOB", help="a job id (default: the best job)")
    output = parser.add_mutually_exclusive_group()
    output.add_argument("--full", action="store_true", help="a table row for every step")
    output.add_argument(
        "--json", action="store_true", help="every step as JSON (all its hyperparameters)"
    )
    output.add_argument(
        "--csv", action="store_true", help="every step as CSV (all its hyperparameters)"
    )
