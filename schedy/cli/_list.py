"""``schedy list``: experiments, or one experiment's jobs, for a shell or a script.

Plain output is bare ids and statuses, one per line, so it pipes into other
commands; ``-t`` / ``-p`` show every field, and ``-s`` / ``-f`` pick and
order them through the shared :class:`._table.Table`. ``--format csv|json``
are for scripts, ``--status`` and ``--limit`` narrow the list. A job's
per-epoch ``history`` (written by the integrations, growing with every
generation) is left out of tables, CSV and paragraphs unless named with
``-f``; JSON keeps it.
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
from collections.abc import Iterable, Iterator
from itertools import islice
from typing import Any

from .._records import ExperimentStatus, JobStatus
from .._values import is_number
from ..experiments import PopulationBasedTraining
from ._base import Commands, Store, UsageError, emit
from ._table import (
    EXPERIMENT_BRIEF,
    HISTORY,
    JOB_BRIEF,
    Column,
    Table,
    experiment_row,
    job_row,
    text,
)

__all__ = ["setup"]

_FORMATS = ("table", "csv", "json")


def _statuses(words: list[str] | None, allowed: Iterable[str], what: str) -> set[str] | None:
    """``--status`` values (repeatable, or comma-separated), checked and upper-cased."""
    if not words:
        return None
    allowed = list(allowed)
    chosen = {word.strip().upper() for group in words for word in group.split(",") if word.strip()}
    unknown = sorted(chosen - set(allowed))
    if unknown:
        raise UsageError(
            f"unknown {what} status {', '.join(map(repr, unknown))}; choose from "
            + ", ".join(allowed)
        )
    return chosen


def _json_value(value: Any) -> Any:
    """A value strict JSON can hold (NaN and infinities become null)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _json_value(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_json_value(item) for item in value]
    return value


def _render_json(table: Table) -> str:
    names = table.names()
    rows = [
        {names[column]: _json_value(row.get(column)) for column in table.columns}
        for row in table.rows
    ]
    return json.dumps(rows, indent=2, allow_nan=False)


def _render_csv(table: Table) -> str:
    if not table.columns:
        return ""
    names = table.names()
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([names[column] for column in table.columns])
    for row in table.rows:
        values = [row.get(column) for column in table.columns]
        writer.writerow(["" if v is None else v if is_number(v) else text(v) for v in values])
    return out.getvalue().rstrip("\n")


def _rows(args: argparse.Namespace, store: Store) -> tuple[Iterator[dict[Column, Any]], bool]:
    """The rows to list (status-filtered, and cut early when nothing reorders them) and
    whether they are jobs."""
    db = store.open()
    if args.experiment is None:
        wanted = _statuses(args.status, ExperimentStatus, "experiment")
        experiments: Iterable[Any] = db.get_experiments()
        if wanted is not None:
            experiments = (e for e in experiments if e.status in wanted)
        return (experiment_row(e) for e in experiments), False
    wanted = _statuses(args.status, JobStatus, "job")
    experiment = db.get_experiment(args.experiment)
    lineage = isinstance(experiment, PopulationBasedTraining)
    jobs: Iterable[Any] = experiment.all_jobs()
    if wanted is not None:
        jobs = (job for job in jobs if job.status in wanted)
    return (job_row(job, lineage=lineage) for job in jobs), True


def _list(args: argparse.Namespace, store: Store) -> int:
    if args.limit is not None and args.limit < 0:
        raise UsageError(f"--limit takes a number of rows >= 0, not {args.limit}")
    fmt = "table" if args.table else args.format
    rows, jobs = _rows(args, store)
    if args.limit is not None and not args.sort and not args.decreasing:
        rows = islice(rows, args.limit)  # nothing reorders them: read no more than shown
    table = Table(rows)
    if args.sort:
        table.sort(args.sort, decreasing=args.decreasing)
    elif args.decreasing:
        table.rows.reverse()
    if args.limit is not None:
        table.rows = table.rows[: args.limit]
    if args.field:
        table = table.select(args.field)
    elif not (fmt or args.paragraph):
        # The brief list, with the columns it was sorted by: what it was sorted by shows.
        brief = JOB_BRIEF if jobs else EXPERIMENT_BRIEF
        sorted_by = [table.resolve(field) for field in args.sort or []] if table.rows else []
        table = table.only(list(dict.fromkeys([*brief, *sorted_by])))
    elif fmt != "json":
        table = table.drop(HISTORY)
    if args.paragraph:
        emit(table.render_paragraphs())
    elif fmt == "table":
        emit(table.render())
    elif fmt == "csv":
        emit(_render_csv(table))
    elif fmt == "json":
        print(_render_json(table))
    else:
        emit(table.render("plain", headers=False))
    return 0


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy list`` to ``commands``."""
    parser = commands.add_parser(
        "list",
        parents=[common],
        help="list experiments, or the jobs of one",
        description="List the experiments or, given NAME, its jobs. Tables, CSV and "
        "paragraphs leave out a job's per-epoch history (name it with -f result.history "
        "to see it); JSON keeps it.",
    )
    parser.set_defaults(handler=_list)
    parser.add_argument("experiment", nargs="?", metavar="NAME", help="list this experiment's jobs")
    view = parser.add_mutually_exclusive_group()
    view.add_argument(
        "-t", "--table", action="store_true", help="every field, as a table (--format table)"
    )
    view.add_argument(
        "-p", "--paragraph", action="store_true", help="every field, one paragraph per row"
    )
    view.add_argument(
        "--format",
        choices=_FORMATS,
        default=None,
        help="every field as a table (with headers), CSV (with a header row) or JSON "
        "(a list of objects; NaN as null)",
    )
    parser.add_argument(
        "-s",
        "--sort",
        action="append",
        metavar="FIELD",
        help="sort by FIELD (repeatable: the first is the main key); missing values go last; "
        "the plain list then shows FIELD too",
    )
    parser.add_argument("-d", "--decreasing", action="store_true", help="sort in decreasing order")
    parser.add_argument(
        "-f",
        "--field",
        action="append",
        metavar="FIELD",
        help="show only FIELD (repeatable); spell it category.name when ambiguous, e.g. result.x",
    )
    parser.add_argument(
        "-n", "--limit", type=int, default=None, metavar="N", help="at most N rows (after sorting)"
    )
    parser.add_argument(
        "--status",
        action="append",
        metavar="STATUS",
        help="only rows with this status (repeatable, or comma-separated: DONE,CRASHED)",
    )
