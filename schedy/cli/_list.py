"""``schedy list``: experiments, or one experiment's jobs, for a shell or a script.

Plain output is bare ids and statuses, one per line, so it pipes into other
commands; ``-t`` / ``-p`` show every field, and ``-s`` / ``-f`` pick and
order them through the shared :class:`._table.Table`.
"""

from __future__ import annotations

import argparse

from ..experiments import PopulationBasedTraining
from ._base import Commands, Store, emit
from ._table import EXPERIMENT_BRIEF, JOB_BRIEF, Table, experiment_row, job_row

__all__ = ["setup"]


def _list(args: argparse.Namespace, store: Store) -> int:
    if args.experiment is None:
        table = Table(experiment_row(exp) for exp in store.open().get_experiments())
        brief = EXPERIMENT_BRIEF
    else:
        experiment = store.open().get_experiment(args.experiment)
        lineage = isinstance(experiment, PopulationBasedTraining)
        table = Table(job_row(job, lineage=lineage) for job in experiment.all_jobs())
        brief = JOB_BRIEF
    if args.sort:
        table.sort(args.sort, decreasing=args.decreasing)
    elif args.decreasing:
        table.rows.reverse()
    if args.field:
        table = table.select(args.field)
    elif not (args.table or args.paragraph):
        table = table.only(brief)
    if args.paragraph:
        emit(table.render_paragraphs())
    elif args.table:
        emit(table.render())
    else:
        emit(table.render("plain", headers=False))
    return 0


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy list`` to ``commands``."""
    parser = commands.add_parser(
        "list",
        parents=[common],
        help="list experiments, or the jobs of one",
        description="List the experiments or, given NAME, its jobs.",
    )
    parser.set_defaults(handler=_list)
    parser.add_argument("experiment", nargs="?", metavar="NAME", help="list this experiment's jobs")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("-t", "--table", action="store_true", help="every field, as a table")
    view.add_argument(
        "-p", "--paragraph", action="store_true", help="every field, one paragraph per row"
    )
    parser.add_argument(
        "-s",
        "--sort",
        action="append",
        metavar="FIELD",
        help="sort by FIELD (repeatable: the first is the main key); missing values go last",
    )
    parser.add_argument("-d", "--decreasing", action="store_true", help="sort in decreasing order")
    parser.add_argument(
        "-f",
        "--field",
        action="append",
        metavar="FIELD",
        help="show only FIELD (repeatable); spell it category.name when ambiguous, e.g. result.x",
    )
