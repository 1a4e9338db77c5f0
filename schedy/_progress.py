"""Following a run from outside its workers: jobs as they finish, one line each.

Workers are separate processes (often other programs), so the launcher
(``schedy worker``, ``run_workers``, an example's ``run.py``) and ``schedy
top`` learn what happened the way any reader would: from the store. A
:class:`FinishedJobs` reads only what changed since its last look -- the
jobs created after the last one it saw (``list_jobs(after=...)``, creation
order) and the few it knew as queued or running -- so a poll every second
costs the same at job 10 and at job 100,000. :func:`progress_line` says what
a finished job did in one line::

    member 3 gen 5 ← member 1 (exploit)  lr 0.012→0.014  val_acc 0.971

which is all a person watching a PBT run needs: who trained, whether it
copied a better member, what exploration changed and what it scored.
"""

from __future__ import annotations

import sys
from collections import Counter, OrderedDict
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from ._records import JobStatus, MemberRecord
from ._values import canonical, is_number
from .errors import NotFoundError

if TYPE_CHECKING:
    from .experiments import Experiment
    from .jobs import Job

__all__ = ["FinishedJobs", "describe", "ended_early", "progress_line", "short"]

#: The statuses a job leaves; every other one is final.
_OPEN = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
#: Queued jobs re-read per poll (running ones always are): a long manual queue
#: must not turn a poll into thousands of reads.
_QUEUED_PER_POLL = 32
#: Recent jobs kept in memory (a parent, a member's head: usually recent).
_REMEMBERED = 4096
#: Results never printed: the integrations' per-epoch history and counters.
_QUIET_RESULTS = frozenset({"history", "epoch", "step", "global_step"})


def ended_early(members: list[MemberRecord], limit: int) -> list[str]:
    """``member N ended: why`` for each member the scheduler ended early (the
    first ``limit``, then how many more), so ``schedy show`` and ``schedy
    top`` say why a member stopped instead of only that it did."""
    ended = [member for member in members if member.ended and member.ended_reason is not None]
    lines = [f"member {m.index} ended: {m.ended_reason}" for m in ended[:limit]]
    if len(ended) > limit:
        lines.append(
            f"… and {len(ended) - limit} more (experiment.population() lists every member "
            "with its ended_reason)"
        )
    return lines


class FinishedJobs:
    """The jobs of one experiment that finished (DONE, CRASHED, PRUNED) since the
    last :meth:`poll`, oldest end first.

    Jobs already finished when it is built are not reported: it reads the
    history then (``since_start``), or -- given ``since``, a time -- on the
    first poll, reporting only the jobs that ended from then on (so a
    launcher starts its workers first and reads a long history meanwhile).
    ``since_start=False`` reports every job on the first poll. Jobs created
    after the last one seen are read in pages; jobs seen queued or running
    are read again by id until they end (running ones every poll, queued
    ones a few at a time), so a poll reads what changed, not the history.
    """

    def __init__(
        self, experiment: Experiment, *, since_start: bool = True, since: float | None = None
    ) -> None:
        self.experiment = experiment
        self._last: str | None = None
        self._seen: set[str] = set()
        self._open: dict[str, str] = {}  # id -> status, in creation order
        self._queued_turn = 0
        self._recent: OrderedDict[str, Job] = OrderedDict()
        self._ended_members: set[int] | None = None
        #: How many jobs of each final status were read (those before the start included).
        self.ended: Counter[str] = Counter()
        self._since = since
        if since_start and since is None:
            self._read_new(report=False)

    # -- reading the store ---------------------------------------------------
    def _remember(self, job: Job) -> None:
        self._recent[job.id] = job
        self._recent.move_to_end(job.id)
        while len(self._recent) > _REMEMBERED:
            self._recent.popitem(last=False)

    def _read_new(self, report: bool) -> list[Job]:
        """Jobs created since the last one seen: finished ones (when ``report``),
        the rest remembered as open."""
        from .jobs import Job

        storage = self.experiment._storage
        finished: list[Job] = []
        while True:
            try:
                page = storage.list_jobs(self.experiment.name, after=self._last, limit=500)
            except NotFoundError:
                if self._last is None:
                    raise  # the experiment itself is gone
                self._last = None  # the last job seen was deleted: read again, skip the seen
                continue
            for record in page:
                if record.id in self._seen:
                    continue
                self._seen.add(record.id)
                job = Job._from_record(record, self.experiment)
                self._remember(job)
                if job.status in _OPEN:
                    self._open[job.id] = job.status
                else:
                    self.ended[job.status] += 1
                    if report and (self._since is None or job.updated_at >= self._since):
                        finished.append(job)
            if page:
                self._last = page[-1].id
            if len(page) < 500:
                return finished

    def _read_open(self) -> list[Job]:
        """Open jobs read again: every running one, and a few queued ones in turn."""
        running = [job_id for job_id, status in self._open.items() if status != JobStatus.QUEUED]
        queued = [job_id for job_id, status in self._open.items() if status == JobStatus.QUEUED]
        if len(queued) > _QUEUED_PER_POLL:
            start = self._queued_turn % len(queued)
            queued = (queued[start:] + queued[:start])[:_QUEUED_PER_POLL]
            self._queued_turn = start + _QUEUED_PER_POLL
        finished: list[Job] = []
        for job_id in running + queued:
            try:
                job = self.experiment.get_job(job_id)
            except NotFoundError:
                del self._open[job_id]
                continue
            self._remember(job)
            if job.status in _OPEN:
                self._open[job_id] = job.status
            else:
                del self._open[job_id]
                self.ended[job.status] += 1
                finished.append(job)
        return finished

    def poll(self) -> list[Job]:
        """The jobs that finished since the last poll, in the order they ended."""
        finished = self._read_open() + self._read_new(report=True)
        finished.sort(key=lambda job: job.updated_at)
        return finished

    def retired(self) -> list[str]:
        """Lines for the population members that ended since the last call before
        their final generation (retired by the scheduler: a straggler, or one that
        kept crashing), each with the reason the scheduler recorded; the first
        call only learns which had ended already."""
        members = self.experiment.population()
        ended = {member.index for member in members if member.ended}
        known, self._ended_members = self._ended_members, ended
        if known is None:
            return []
        last = getattr(self.experiment, "max_generations", None)
        lines = []
        for member in members:
            if member.index in ended - known:
                reached = -1 if member.head_generation is None else member.head_generation
                if last is None or reached + 1 < last:
                    where = (
                        "before its first job ended" if reached < 0 else f"at generation {reached}"
                    )
                    why = "" if member.ended_reason is None else f": {member.ended_reason}"
                    lines.append(f"member {member.index} retired {where}{why}")
        return lines

    @property
    def open(self) -> Counter[str]:
        """How many jobs were queued and running at the last poll, by status."""
        return Counter(self._open.values())

    @property
    def open_ids(self) -> list[str]:
        """The ids of the jobs queued or running at the last poll, oldest first."""
        return list(self._open)

    @property
    def total(self) -> int:
        """How many jobs the experiment had at the last poll."""
        return len(self._seen)

    def job(self, job_id: str | None) -> Job | None:
        """A job as last read: from memory when recent, else from the store (None if gone)."""
        if job_id is None:
            return None
        known = self._recent.get(job_id)
        if known is not None:
            return known
        try:
            job = self.experiment.get_job(job_id)
        except NotFoundError:
            return None
        self._remember(job)
        return job


# -- one line per job -------------------------------------------------------------


def _arrow(text: str) -> str:
    """``text`` with its arrows spelled in ASCII where stdout cannot encode them."""
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        text.encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return text.replace("←", "<-").replace("→", "->")
    return text


def short(value: Any) -> str:
    """A value in a few characters: floats to 3-4 significant digits, text bare."""
    if isinstance(value, bool) or value is None:
        return canonical(value)
    if isinstance(value, float) or (is_number(value) and not isinstance(value, int)):
        return f"{float(value):.4g}"
    if isinstance(value, str):
        return value
    text = canonical(value)
    return text if len(text) <= 24 else text[:23] + "…"


def _scores(job: Job, result_name: str | None) -> list[str]:
    if result_name is not None:
        if result_name not in job.results:
            return []
        return [f"{result_name} {short(job.results[result_name])}"]
    shown = [
        f"{name} {short(value)}"
        for name, value in job.results.items()
        if name not in _QUIET_RESULTS and is_number(value) and not isinstance(value, bool)
    ]
    return shown[:3]


def progress_line(
    job: Job,
    *,
    parent: Mapping[str, Any] | None = None,
    donor: int | None = None,
    result_name: str | None = None,
) -> str:
    """One line saying what a finished job did.

    For a population member: ``member 3 gen 5``, ``← member 1 (exploit)`` when it
    copied ``donor``, the hyperparameters that changed from ``parent``'s (all
    of them for a new member), then its ``result_name``. For other jobs: its
    id, hyperparameters and numeric results. A job that did not end DONE says
    how it ended (and the last line of its error).
    """
    parts: list[str] = []
    if job.member is not None:
        head = f"member {job.member} gen {job.generation}"
        if job.exploited_from is not None:
            head += f" ← member {'?' if donor is None else donor} (exploit)"
        elif job.parent_id is None:
            head += " (new)"
        parts.append(head)
        if parent is None:
            changes = [f"{name} {short(value)}" for name, value in job.hyperparameters.items()]
        else:
            changes = [
                f"{name} {short(parent.get(name))}→{short(value)}"
                for name, value in job.hyperparameters.items()
                if canonical(parent.get(name)) != canonical(value)
            ]
    else:
        parts.append(f"job {job.id}")
        changes = [f"{name} {short(value)}" for name, value in job.hyperparameters.items()]
    if job.status != JobStatus.DONE:
        parts.append(str(job.status))
    parts.extend(changes)
    if job.status == JobStatus.DONE:
        parts.extend(_scores(job, result_name))
    elif job.error:
        lines = job.error.strip().splitlines()
        if lines:
            parts.append(lines[-1][:160])
    return _arrow("  ".join(parts))


def describe(watcher: FinishedJobs, job: Job) -> str:
    """:func:`progress_line` for ``job``, its parent's values and donor read through
    ``watcher`` (from memory when it can)."""
    parent = watcher.job(job.parent_id)
    donor = watcher.job(job.exploited_from)
    return progress_line(
        job,
        parent=None if parent is None else parent.hyperparameters,
        donor=None if donor is None else donor.member,
        result_name=watcher.experiment._result_name,
    )
