"""``schedy show``: one experiment or job in full, and a PBT run as it goes (``--watch``).

PBT's product is a schedule, so showing a PBT experiment means showing its
population, its best job and the hyperparameter schedule that trained it;
showing a PBT job means the schedule behind that job. ``--watch`` follows
a run until the experiment is DONE: on a terminal (with rich installed) it
is ``schedy top``'s live view, otherwise (a pipe, a log file) it prints the
same description again every SECONDS.
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import sys
import time
from datetime import datetime

from .._progress import ended_early
from .._records import MemberRecord
from ..experiments import Experiment, PopulationBasedTraining
from ._base import Commands, Store, UsageError, emit
from ._table import SCHEDY, Table, describe_experiment, describe_job, schedule_table, text

__all__ = ["setup"]


#: At most this many members' reasons for ending are listed under the population.
_MAX_REASONS = 20


def _member_status(member: MemberRecord) -> str:
    """``ended: why`` for a member ended early (the table cuts it; the full text
    follows the table), ``ended`` for the normal end, else busy or ready."""
    if member.ended:
        return "ended" if member.ended_reason is None else f"ended: {member.ended_reason}"
    return "busy" if member.busy_id is not None else "ready"


def _population_table(exp: PopulationBasedTraining, members: list[MemberRecord]) -> Table:
    """One row per member: where it stands and its latest ``result_name``."""
    table = Table()
    for member in members:
        head = None if member.head_id is None else exp.get_job(member.head_id)
        score = None if head is None else head.results.get(exp.result_name)
        table.add_row(
            {
                (SCHEDY, "member"): member.index,
                (SCHEDY, "generation"): member.head_generation,
                ("result", exp.result_name): score,
                (SCHEDY, "status"): _member_status(member),
                (SCHEDY, "crashes"): member.crashes,
                (SCHEDY, "head"): member.head_id,
            }
        )
    return table


def _show_population(exp: PopulationBasedTraining) -> None:
    members = exp.population()
    if not members:
        print("\nPopulation: no member yet (workers create them: `schedy run`, next_job()).")
        return
    size = exp.population_size or len(members)
    print(f"\nPopulation ({len(members)} of {size} members):")
    print(_population_table(exp, members).render())
    reasons = ended_early(members, _MAX_REASONS)
    if reasons:
        print("\nWhy members ended early:")
        print("\n".join(reasons))
    # The best job ever (experiment.best(), as everywhere), not the best current head.
    best = exp.best()
    if best is None:
        print(f"\nNo member has reported {exp.result_name!r} yet.")
        return
    value = text(best.results.get(exp.result_name))
    print(
        f"\nBest: job {best.id} (member {best.member}, generation {best.generation}, "
        f"{exp.result_name} = {value}). Its hyperparameter schedule:"
    )
    print(schedule_table(exp.lineage(best.id), exp.result_name).render())


def _show_experiment(experiment: Experiment) -> None:
    emit(describe_experiment(experiment))
    if isinstance(experiment, PopulationBasedTraining):
        _show_population(experiment)


def _watch(store: Store, name: str, interval: float) -> int:
    """Redraw ``show NAME`` every ``interval`` seconds until the experiment is
    DONE; Ctrl-C is the normal way out, so it ends quietly with status 0."""
    clear = "\033[H\033[2J" if sys.stdout.isatty() else ""
    try:
        while True:
            experiment = store.open().get_experiment(name)  # its status, afresh
            print(
                f"{clear}{datetime.now():%Y-%m-%d %H:%M:%S}  {name}: {experiment.status} "
                f"(every {interval:g} s until DONE; Ctrl-C stops watching)"
            )
            _show_experiment(experiment)
            sys.stdout.flush()
            if experiment.status == Experiment.DONE:
                return 0
            time.sleep(interval)
            if not clear:
                print()
    except KeyboardInterrupt:
        print()
        return 0


def _show(args: argparse.Namespace, store: Store) -> int:
    if args.watch is not None:
        if args.job is not None:
            raise UsageError("--watch follows a whole experiment: leave out the job id")
        if not (math.isfinite(args.watch) and args.watch > 0):
            raise UsageError(f"--watch takes a number of seconds > 0, not {args.watch:g}")
        if sys.stdout.isatty() and importlib.util.find_spec("rich") is not None:
            # On a terminal, the live view of `schedy top` (same interval, same ending).
            from ._top import run_top

            return run_top(store.open().get_experiment(args.experiment), args.watch)
        return _watch(store, args.experiment, args.watch)
    experiment = store.open().get_experiment(args.experiment)
    if args.job is None:
        _show_experiment(experiment)
        return 0
    job = experiment.get_job(args.job)
    emit(describe_job(job))
    if isinstance(experiment, PopulationBasedTraining) and job.member is not None:
        print("\nIts hyperparameter schedule (how this job's model was trained):")
        print(schedule_table(experiment.lineage(job.id), experiment.result_name).render())
    return 0


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy show`` to ``commands``."""
    parser = commands.add_parser(
        "show",
        parents=[common],
        help="describe an experiment (with its PBT population) or a job",
        description="Describe an experiment — for PBT with its population and the best "
        "job's hyperparameter schedule — or one job. --watch follows a running experiment.",
    )
    parser.set_defaults(handler=_show)
    parser.add_argument("experiment", metavar="NAME", help="the experiment")
    parser.add_argument(
        "job",
        nargs="?",
        metavar="JOB",
        help="the id of one of its jobs (for PBT, shown with its hyperparameter schedule)",
    )
    parser.add_argument(
        "-w",
        "--watch",
        nargs="?",
        type=float,
        const=5.0,
        metavar="SECONDS",
        help="redraw every SECONDS (default 5) until the experiment is DONE (on a terminal: "
        "the live view of schedy top)",
    )
