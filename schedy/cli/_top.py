"""``schedy top``: a live terminal view of a running experiment, for a person watching.

A PBT run is a population changing over hours; what one wants at a glance
is where each member stands (its generation, whether it trains now and for
how long, its score, the hyperparameters exploration gave it, whether it
just copied a better member), how far the run is and the best model so
far. ``top`` redraws that every ``--interval`` seconds with rich's ``Live``,
reading only what changed since the last look (:mod:`schedy._progress`), and
ends by itself when the experiment is DONE; Ctrl-C is the normal way out
and ends quietly with status 0. Searches without members show their jobs
in flight instead. Which worker or host runs a job is not stored by schedy,
so it is not shown.

rich is an extra (``pip install 'schedy[top]'``), imported only here.
"""

from __future__ import annotations

import argparse
import math
import time
from collections import deque
from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from .._progress import FinishedJobs, describe, ended_early, short
from .._records import ExperimentStatus, JobStatus, MemberRecord
from ..errors import SchedyError
from ..experiments import Experiment
from ._base import Commands, Store, UsageError

if TYPE_CHECKING:
    from rich.console import Console, RenderableType

    from ..jobs import Job

__all__ = ["run_top", "setup"]

#: How many finished jobs the view lists under the table.
RECENT = 6


def _rich() -> None:
    try:
        import rich  # noqa: F401
    except ImportError:
        raise SchedyError("schedy top needs rich: pip install 'schedy[top]'") from None


def _elapsed(seconds: float) -> str:
    if seconds < 0 or not math.isfinite(seconds):
        return ""
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds // 60:.0f}m{seconds % 60:02.0f}s"
    return f"{seconds // 3600:.0f}h{seconds % 3600 // 60:02.0f}m"


class _View:
    """What ``top`` shows, brought up to date by :meth:`refresh`."""

    def __init__(self, experiment: Experiment, interval: float) -> None:
        self.experiment = experiment
        self.interval = interval
        self.watcher = FinishedJobs(experiment, since_start=False)
        self.recent: deque[str] = deque(maxlen=RECENT)
        self.status = str(experiment.status)
        self.members: list[MemberRecord] = []
        self.best: Job | None = None
        self.read_at = datetime.now()

    def refresh(self) -> None:
        experiment = self.experiment
        self.status = str(experiment._storage.get_experiment(experiment.name).status)
        finished = self.watcher.poll()
        for job in finished[-RECENT:]:
            self.recent.append(describe(self.watcher, job))
        self.members = experiment.population()
        self.best = experiment.best()
        self.read_at = datetime.now()

    # -- drawing -------------------------------------------------------------
    def _explored(self) -> list[str]:
        explore = getattr(self.experiment, "explore", None)
        if isinstance(explore, dict) and explore:
            return list(explore)
        for member in self.members:
            job = self.watcher.job(member.busy_id or member.head_id)
            if job is not None:
                return list(job.hyperparameters)
        return []

    def _header(self) -> RenderableType:
        from rich.table import Table
        from rich.text import Text

        exp = self.experiment
        grid = Table.grid(padding=(0, 2))
        grid.add_column()
        title = Text(exp.name, style="bold")
        title.append(
            f"  {self.status}", style="green" if self.status == ExperimentStatus.RUNNING else "cyan"
        )
        title.append(f"  {exp._KIND}", style="dim")
        grid.add_row(title)
        ended, opened = self.watcher.ended, self.watcher.open
        progress = f"jobs {ended[JobStatus.DONE]:,} done of {self.watcher.total:,}"
        extra = [
            f"{opened[s]:,} {s.lower()}" for s in (JobStatus.RUNNING, JobStatus.QUEUED) if opened[s]
        ]
        extra += [
            f"{ended[s]:,} {s.lower()}" for s in (JobStatus.CRASHED, JobStatus.PRUNED) if ended[s]
        ]
        if extra:
            progress += " (" + ", ".join(extra) + ")"
        generations = [m.head_generation for m in self.members if m.head_generation is not None]
        most = getattr(exp, "max_generations", None)
        if generations:
            deepest = max(generations) + 1
            progress += f" · {deepest}{f' of {most}' if most else ''} generations"
        grid.add_row(progress)
        result = exp._result_name
        if self.best is not None and result is not None:
            best = Text(f"best {result} {short(self.best.results.get(result))}", style="bold")
            where = f": job {self.best.id}"
            if self.best.member is not None:
                where += f", member {self.best.member}, generation {self.best.generation}"
            best.append(where)
            grid.add_row(best)
        elif result is not None:
            grid.add_row(Text(f"no job has reported {result} yet", style="dim"))
        return grid

    def _members_table(self) -> RenderableType:
        from rich.table import Table

        result = self.experiment._result_name or "score"
        explored = self._explored()
        table = Table(expand=False, header_style="bold")
        for name, justify in (
            ("member", "right"),
            ("gen", "right"),
            ("status", "left"),
            (result, "right"),
            *((name, "right") for name in explored),
            ("in job", "right"),
            ("from", "left"),
        ):
            table.add_column(name, justify=justify)  # type: ignore[arg-type]
        best_member = None if self.best is None else self.best.member
        now = time.time()
        for member in self.members:
            head = self.watcher.job(member.head_id)
            busy = self.watcher.job(member.busy_id)
            current = busy or head
            if member.ended:  # the reason, if any, is listed under the table in full
                status = "ended" if member.ended_reason is None else "ended early"
            elif busy is not None:
                status = "running" if busy.status == JobStatus.RUNNING else busy.status.lower()
            else:
                status = "ready"
            score = None if head is None else head.results.get(result)
            values: dict[str, Any] = {} if current is None else current.hyperparameters
            source = ""
            if current is not None and current.exploited_from is not None:
                donor = self.watcher.job(current.exploited_from)
                source = f"← member {'?' if donor is None else donor.member}"
            in_job = "" if busy is None else _elapsed(now - busy.created_at)
            generation = member.head_generation if busy is None else busy.generation
            style = "bold yellow" if member.index == best_member else None
            table.add_row(
                ("★ " if member.index == best_member else "") + str(member.index),
                "" if generation is None else str(generation),
                status,
                "" if score is None else short(score),
                *(short(values[name]) if name in values else "" for name in explored),
                in_job,
                source,
                style=style,
            )
        return table

    def _jobs_table(self) -> RenderableType:
        from rich.table import Table

        table = Table(header_style="bold", title="jobs in flight")
        for name in ("job", "status", "in job", "hyperparameters"):
            table.add_column(name)
        now = time.time()
        for job_id in self.watcher.open_ids[:20]:
            job = self.watcher.job(job_id)
            if job is None:
                continue
            values = "  ".join(f"{k} {short(v)}" for k, v in job.hyperparameters.items())
            in_job = _elapsed(now - job.created_at) if job.status == JobStatus.RUNNING else ""
            table.add_row(job.id, str(job.status), in_job, values)
        return table

    def render(self) -> RenderableType:
        from rich.console import Group
        from rich.text import Text

        parts: list[RenderableType] = [self._header(), Text("")]
        if self.members:
            parts.append(self._members_table())
            reasons = ended_early(self.members, RECENT)
            if reasons:
                parts.append(Text("\nended early:", style="bold"))
                parts.extend(Text(line) for line in reasons)
        elif self.watcher.open:
            parts.append(self._jobs_table())
        else:
            parts.append(Text("no job in flight", style="dim"))
        if self.recent:
            parts.append(Text("\nrecently finished:", style="bold"))
            parts.extend(Text(line) for line in self.recent)
        ending = (
            "DONE: nothing left to run"
            if self.status == ExperimentStatus.DONE
            else f"every {self.interval:g} s · Ctrl-C quits"
        )
        parts.append(
            Text(
                f"\n{self.read_at:%H:%M:%S} · {ending} · schedy does not store which worker "
                "or host runs a job",
                style="dim",
            )
        )
        return Group(*parts)


def run_top(
    experiment: Experiment,
    interval: float = 2.0,
    *,
    console: Console | None = None,
    sleep: Callable[[float], None] | None = None,
) -> int:
    """Show ``experiment`` live until it is DONE (status 0) or Ctrl-C (status 0).

    ``console`` is rich's (default: the terminal); ``sleep`` waits between
    refreshes (default ``time.sleep``).
    """
    _rich()
    from rich.live import Live

    wait = time.sleep if sleep is None else sleep
    try:
        view = _View(experiment, interval)
        view.refresh()
        with Live(
            view.render(),
            console=console,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        ) as live:
            while view.status != ExperimentStatus.DONE:
                wait(interval)
                view.refresh()
                live.update(view.render(), refresh=True)
    except KeyboardInterrupt:
        return 0
    return 0


def check_interval(seconds: float, option: str) -> float:
    """A refresh interval: a finite number of seconds > 0 (UsageError otherwise)."""
    if not (math.isfinite(seconds) and seconds > 0):
        raise UsageError(f"{option} takes a number of seconds > 0, not {seconds:g}")
    return seconds


def _top(args: argparse.Namespace, store: Store) -> int:
    interval = check_interval(args.interval, "--interval")
    _rich()  # before the store is opened: a missing extra is the first thing to say
    return run_top(store.open().get_experiment(args.experiment), interval)


def setup(commands: Commands, common: argparse.ArgumentParser) -> None:
    """Add ``schedy top`` to ``commands``."""
    parser = commands.add_parser(
        "top",
        parents=[common],
        help="a live view of a running experiment (until DONE; Ctrl-C quits)",
        description="Follow an experiment live: each member's generation, status, score, "
        "explored hyperparameters, time in its job and the member it copied; jobs done, "
        "the best job so far and the jobs that just finished. Redrawn every --interval "
        "seconds until the experiment is DONE; Ctrl-C quits. Needs rich "
        "(pip install 'schedy[top]').",
    )
    parser.set_defaults(handler=_top)
    parser.add_argument("experiment", metavar="NAME", help="the experiment")
    parser.add_argument(
        "-n",
        "--interval",
        type=float,
        default=2.0,
        metavar="SECONDS",
        help="seconds between refreshes (default 2)",
    )
