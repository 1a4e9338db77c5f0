"""TensorBoard and MLflow for Population Based Training: one continuing curve per member.

Experiment trackers assume a run has fixed parameters and one growing
curve. PBT breaks that: a member's hyperparameters change at every
*explore*, and its model is replaced by a better member's at every
*exploit* -- MLflow refuses a changed parameter outright ("Changing param
values is not allowed", Ray #20473, #27783). These trackers give PBT a
shape that holds:

- **one run per member** (``member_003``): what one watches during PBT is
  each population slot's curve, with the moments it copied another member
  visible on it. (One run per *lineage* would repeat the shared ancestors
  in every run, and a lineage is only known once it has ended; a lineage's
  whole curve is in its last job's ``results['history']`` anyway.) A job
  without a member (random search, manual) gets a run of its own;
- **hyperparameters as metrics** (``hp/learning_rate``), indexed by step
  like the loss, so a perturbation shows as a step in the curve; never as
  MLflow params, which cannot change;
- **exploits marked**: ``schedy/exploited_from_member`` (the copied
  member's index) at the first step of a job that exploited, a text entry
  ``schedy/jobs`` in TensorBoard and ``schedy.exploit.<generation>`` tags
  in MLflow; ``schedy/generation`` at every step says which job trained it;
- **steps continue across jobs**: the step is the lineage's epoch (or
  optimizer step, ``step='step'``) as the integrations record it in
  ``results['history']`` (:func:`schedy.integrations._core.record_epoch`);
  a job logs only the epochs past its parent's. A job whose results hold
  no history logs its numeric results once, at ``results['epoch']`` (else
  its generation).

Two ways in. **Live**, in the worker, after the job trained::

    tracker = TensorBoard('tb/my-experiment')     # or MLflow('sqlite:///mlflow.db')
    while True:
        with experiment.next_job() as job:
            trainer.fit(...)                      # the callback records the history
        tracker.log_job(job)                      # its new epochs, its hyperparameters

and **after the fact** (or while it runs): :func:`export` -- ``schedy export
NAME --tensorboard DIR | --mlflow URI`` -- replays every finished job,
member by member in lineage order. Both are idempotent per job: a job
already logged (by this process or any other, recorded in the run) is
skipped, so an export may be repeated to catch up with a running
experiment, after live logging or not.

tensorboard and mlflow are imported when a tracker is built, never by
``import schedy``: ``pip install 'schedy[tensorboard]'`` / ``'schedy[mlflow]'``.
"""

from __future__ import annotations

import abc
import os
import re
import socket
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from .._records import ExperimentStatus, JobStatus
from ..errors import NotFoundError
from ._tracking import (
    EXPLOITED_FROM_MEMBER,
    GENERATION,
    HYPERPARAMETER_PREFIX,
    LOGGED_STATUSES,
    JobLog,
    StepAxis,
    check_step_axis,
    job_log,
)

if TYPE_CHECKING:
    from ..experiments import Experiment
    from ..jobs import Job

__all__ = [
    "EXPLOITED_FROM_MEMBER",
    "GENERATION",
    "HYPERPARAMETER_PREFIX",
    "ExportSummary",
    "MLflow",
    "TensorBoard",
    "Tracker",
    "export",
]

_T = TypeVar("_T")


class Tracker(abc.ABC):
    """What :class:`TensorBoard` and :class:`MLflow` share: ``log_job``, ``close``.

    Use one as a context manager, or call :meth:`close` when done.
    """

    def __init__(self, *, step: StepAxis = "epoch") -> None:
        #: What the step axis counts: ``'epoch'`` or ``'step'`` (optimizer steps).
        self.step: StepAxis = check_step_axis(step)

    def log_job(self, job: Job) -> bool:
        """Log ``job`` (call it once the job has trained): the epochs it added to
        ``results['history']``, its hyperparameters at those steps, and the
        exploit when it copied a better member.

        Returns False, writing nothing, when the job was logged before, or
        when it CRASHED: its epochs belong to no model (its member retries from
        its last DONE job, and that retry logs the same steps). Reads the
        job's parent from the store (to know the epochs it inherited).
        """
        if str(job.status) == JobStatus.CRASHED:
            return False
        parent = _parent(job)
        root = None
        if job.member is None and job.parent_id is not None:
            root = job.lineage()[0].id
        return self._write(job_log(job, parent, self.step, root))

    @abc.abstractmethod
    def _write(self, log: JobLog) -> bool:
        """Write one job's log unless its run records it already; whether it wrote."""

    def _begin_export(self) -> None:  # noqa: B027 (optional hook)
        """Many jobs follow (an export): writers may stay open until :meth:`_end_export`."""

    def _end_export(self, experiment_done: bool) -> None:  # noqa: B027 (optional hook)
        """The export is over; ``experiment_done``: the experiment will log nothing more."""

    @property
    @abc.abstractmethod
    def destination(self) -> str:
        """Where this tracker writes, in words (for messages)."""

    def close(self) -> None:  # noqa: B027 (optional hook)
        """Flush and release what the tracker holds open."""

    def __enter__(self: _T) -> _T:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _parent(job: Job) -> Job | None:
    if job.parent_id is None:
        return None
    try:
        return job.experiment.get_job(job.parent_id)
    except NotFoundError:  # deleted by an older schedy: all its history counts as new
        return None


# -- export ----------------------------------------------------------------
@dataclass(frozen=True)
class ExportSummary:
    """What :func:`export` did."""

    #: Jobs written now.
    written: int
    #: Jobs the tracker had already (logged live, or by an earlier export).
    skipped: int
    #: Runs the jobs went to (members, or jobs without a member).
    runs: int


def _export_order(jobs: Sequence[Job]) -> list[Job]:
    """Finished jobs, member by member, each member's in lineage (generation) order;
    jobs without a member after them, oldest first."""
    finished = [job for job in jobs if str(job.status) in LOGGED_STATUSES]
    order = {job.id: index for index, job in enumerate(jobs)}
    return sorted(
        finished,
        key=lambda job: (
            job.member is None,
            job.member or 0,
            job.generation or 0,
            order[job.id],
        ),
    )


def _root(job: Job, by_id: dict[str, Job]) -> str:
    seen = {job.id}
    while job.parent_id is not None and job.parent_id in by_id and job.parent_id not in seen:
        job = by_id[job.parent_id]
        seen.add(job.id)
    return job.id


def export(experiment: Experiment, tracker: Tracker | Iterable[Tracker]) -> ExportSummary:
    """Replay every finished (DONE or PRUNED) job of ``experiment`` into ``tracker``
    (or each of several), member by member in lineage order.

    Jobs the tracker has already are skipped, so exporting a running
    experiment again catches up with it. When the experiment is DONE, its
    MLflow runs are marked FINISHED. Returns counts (for several trackers,
    summed).
    """
    trackers = [tracker] if isinstance(tracker, Tracker) else list(tracker)
    jobs = list(experiment.all_jobs())
    by_id = {job.id: job for job in jobs}
    ordered = _export_order(jobs)
    done = str(experiment.status) == ExperimentStatus.DONE
    written = skipped = 0
    runs: set[str] = set()
    for each in trackers:
        each._begin_export()
        try:
            for job in ordered:
                parent = None if job.parent_id is None else by_id.get(job.parent_id)
                log = job_log(job, parent, each.step, _root(job, by_id))
                runs.add(log.run)
                if each._write(log):
                    written += 1
                else:
                    skipped += 1
        finally:
            each._end_export(done)
    return ExportSummary(written=written, skipped=skipped, runs=len(runs))


# -- TensorBoard -------------------------------------------------------------
def _missing(tracker: str, package: str, error: ImportError) -> ImportError:
    return ImportError(
        f"schedy.integrations.trackers.{tracker} needs {package}: "
        f"pip install 'schedy[{package}]' ({error})"
    )


#: Where a TensorBoard run records the jobs it holds (one empty file per job id).
_TB_MARKERS = ".schedy_jobs"
#: The text entry of a run saying what each job did.
_TB_NOTES = "schedy/jobs"


def _file_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text) or "_"


class TensorBoard(Tracker):
    """Write TensorBoard event files: ``log_dir/member_003/events.out.tfevents.…``.

    One run (folder) per member; scalars ``<metric>``, ``hp/<hyperparameter>``,
    ``schedy/generation`` and ``schedy/exploited_from_member``; a text entry
    ``schedy/jobs`` per job (hyperparameters changed, member copied). Needs
    only the ``tensorboard`` package, not TensorFlow. Use one ``log_dir`` per
    experiment (``tensorboard --logdir log_dir``). Which jobs a run holds is
    recorded beside its events (``.schedy_jobs/``), so a job is never logged
    twice, by this process or another.

    Each :meth:`log_job` writes one small event file, complete and closed,
    named by its time to the nanosecond: TensorBoard reads a run's files in
    name order, so a member's jobs read back in the order they were logged
    even when different worker processes logged them (an export writes one
    file per run).
    """

    def __init__(self, log_dir: str | os.PathLike[str], *, step: StepAxis = "epoch") -> None:
        super().__init__(step=step)
        try:
            from tensorboard.compat.proto import (
                event_pb2,
                summary_pb2,
                tensor_pb2,
                tensor_shape_pb2,
                types_pb2,
            )
            from tensorboard.plugins.text import metadata as text_metadata
            from tensorboard.summary.writer.record_writer import RecordWriter
        except ImportError as error:
            raise _missing("TensorBoard", "tensorboard", error) from None
        self._event_pb2: Any = event_pb2
        self._summary_pb2: Any = summary_pb2
        self._tensor_pb2: Any = tensor_pb2
        self._tensor_shape_pb2: Any = tensor_shape_pb2
        self._types_pb2: Any = types_pb2
        self._text_metadata: Any = text_metadata
        self._record_writer: Any = RecordWriter
        #: The folder holding one run folder per member.
        self.log_dir = os.fspath(log_dir)
        self._writers: dict[str, Any] = {}
        self._keep_open = False
        self._last_ns = 0

    @property
    def destination(self) -> str:
        return f"TensorBoard logs in {self.log_dir}"

    def _writer(self, run_dir: str) -> Any:
        writer = self._writers.get(run_dir)
        if writer is None:
            os.makedirs(run_dir, exist_ok=True)
            now = self._last_ns = max(time.time_ns(), self._last_ns + 1)
            seconds, nanoseconds = divmod(now, 10**9)
            name = (
                f"events.out.tfevents.{seconds:010d}.{nanoseconds:09d}."
                f"{_file_name(socket.gethostname())}.{os.getpid()}"
            )
            # "x": a file never shared, even with a process whose clock agrees to the ns.
            writer = self._record_writer(open(os.path.join(run_dir, name), "xb"))  # noqa: SIM115
            header = self._event_pb2.Event(wall_time=now / 1e9, file_version="brain.Event:2")
            writer.write(header.SerializeToString())
            self._writers[run_dir] = writer
        return writer

    def _text_value(self, tag: str, text: str) -> Any:
        tensor = self._tensor_pb2.TensorProto(
            dtype=self._types_pb2.DT_STRING,
            string_val=[text.encode("utf-8")],
            tensor_shape=self._tensor_shape_pb2.TensorShapeProto(
                dim=[self._tensor_shape_pb2.TensorShapeProto.Dim(size=1)]
            ),
        )
        return self._summary_pb2.Summary.Value(
            tag=tag,
            metadata=self._text_metadata.create_summary_metadata(
                display_name=tag, description="what each schedy job did"
            ),
            tensor=tensor,
        )

    def _write(self, log: JobLog) -> bool:
        run_dir = os.path.join(self.log_dir, log.run)
        marker = os.path.join(run_dir, _TB_MARKERS, _file_name(log.job_id))
        if os.path.exists(marker):
            return False
        writer = self._writer(run_dir)
        wall_time = log.wall_time or time.time()
        summary, event = self._summary_pb2.Summary, self._event_pb2.Event
        for point in log.points:
            values = [
                summary.Value(tag=name, simple_value=value) for name, value in point.values.items()
            ]
            record = event(wall_time=wall_time, step=point.step, summary=summary(value=values))
            writer.write(record.SerializeToString())
        notes = summary(value=[self._text_value(_TB_NOTES, log.note)])
        writer.write(
            event(wall_time=wall_time, step=log.first_step, summary=notes).SerializeToString()
        )
        if self._keep_open:
            writer.flush()
        else:
            writer.close()
            del self._writers[run_dir]
        # Recorded once the events are on disk: a crash in between logs the job
        # again next time, rather than never.
        os.makedirs(os.path.dirname(marker), exist_ok=True)
        with open(marker, "w", encoding="utf-8") as file:
            file.write(log.note + "\n")
        return True

    def _begin_export(self) -> None:
        self._keep_open = True

    def _end_export(self, experiment_done: bool) -> None:
        self._keep_open = False
        self.close()

    def close(self) -> None:
        writers, self._writers = self._writers, {}
        for writer in writers.values():
            writer.close()

    def __repr__(self) -> str:
        return f"TensorBoard({self.log_dir!r}, step={self.step!r})"


# -- MLflow ------------------------------------------------------------------
#: Run tags: the schedy experiment, the run's name among its runs, its member.
_ML_EXPERIMENT = "schedy.experiment"
_ML_RUN = "schedy.run"
_ML_MEMBER = "schedy.member"
#: The latest generation logged in a run, and its job (the head of the member).
_ML_GENERATION = "schedy.generation"
_ML_HEAD = "schedy.head_job"
#: Per job logged, its note (what marks it as logged); per exploit, what was copied.
_ML_JOB = "schedy.job."
_ML_EXPLOIT = "schedy.exploit."
#: The latest value of each hyperparameter, as a tag (the runs table shows them).
_ML_HYPERPARAMETER = "hp."
#: MLflow's limits: entries per log_batch call, and a tag value's length (kept under it).
_ML_METRICS_PER_BATCH = 1000
_ML_TAGS_PER_BATCH = 100
_ML_TAG_LENGTH = 5000


def _mlflow_key(name: str) -> str:
    """A metric or tag name MLflow accepts: letters, digits, ``_ - . / space``, and no
    empty, ``.`` or ``..`` path segment (MLflow refuses what could name another key)."""
    key = re.sub(r"[^\w./\- ]", "_", name)
    return "/".join("_" if part in ("", ".", "..") else part for part in key.split("/"))


def _chunks(items: Sequence[_T], size: int) -> Iterator[Sequence[_T]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class MLflow(Tracker):
    """Log to an MLflow tracking store: one run per member in one MLflow experiment.

    ``tracking_uri``: e.g. ``sqlite:///mlflow.db`` or ``http://mlflow:5000``
    (default: MLflow's own, ``$MLFLOW_TRACKING_URI``). ``experiment_name``:
    the MLflow experiment (default: the schedy experiment's name; created
    when missing).

    Each run (``member_003``, tags ``schedy.experiment``, ``schedy.member``)
    gets the metrics per epoch, the hyperparameters as metrics
    ``hp/<name>`` (never params: they change), ``schedy/generation`` and
    ``schedy/exploited_from_member``; tags ``schedy.exploit.<generation>``
    per exploit, ``hp.<name>`` and ``schedy.generation`` with the latest
    values, and ``schedy.job.<job id>`` per job logged (what keeps a job
    from being logged twice).
    """

    def __init__(
        self,
        tracking_uri: str | None = None,
        *,
        experiment_name: str | None = None,
        step: StepAxis = "epoch",
    ) -> None:
        super().__init__(step=step)
        try:
            from mlflow.entities import Metric, RunTag
            from mlflow.exceptions import MlflowException
            from mlflow.tracking import MlflowClient
        except ImportError as error:
            raise _missing("MLflow", "mlflow", error) from None
        self._metric: Any = Metric
        self._tag: Any = RunTag
        self._exception: Any = MlflowException
        #: The MLflow client (``mlflow.tracking.MlflowClient``) it writes with.
        self.client: Any = MlflowClient(tracking_uri)
        self.tracking_uri: str = self.client.tracking_uri
        self.experiment_name = experiment_name
        self._experiment_ids: dict[str, str] = {}
        self._run_ids: dict[tuple[str, str, str], str] = {}

    @property
    def destination(self) -> str:
        return f"MLflow at {self.tracking_uri}"

    def _experiment_id(self, name: str) -> str:
        found = self._experiment_ids.get(name)
        if found is not None:
            return found
        experiment = self.client.get_experiment_by_name(name)
        if experiment is None:
            try:
                experiment_id = str(self.client.create_experiment(name))
            except self._exception:  # another worker created it meanwhile
                experiment = self.client.get_experiment_by_name(name)
                if experiment is None:
                    raise
                experiment_id = str(experiment.experiment_id)
        else:
            if experiment.lifecycle_stage == "deleted":
                raise ValueError(
                    f"the MLflow experiment {name!r} is deleted: restore it "
                    f"(mlflow experiments restore) or log to another (experiment_name=)"
                )
            experiment_id = str(experiment.experiment_id)
        self._experiment_ids[name] = experiment_id
        return experiment_id

    def _run_id(self, experiment_id: str, log: JobLog) -> str:
        key = (experiment_id, log.experiment, log.run)
        found = self._run_ids.get(key)
        if found is not None:
            return found
        runs = self.client.search_runs(
            [experiment_id], filter_string=f"tags.`{_ML_RUN}` = '{log.run}'"
        )
        ours = [run for run in runs if run.data.tags.get(_ML_EXPERIMENT) == log.experiment]
        if ours:
            run_id = str(min(ours, key=lambda run: run.info.start_time).info.run_id)
        else:
            tags = {_ML_EXPERIMENT: log.experiment, _ML_RUN: log.run}
            if log.member is not None:
                tags[_ML_MEMBER] = str(log.member)
            run_id = str(
                self.client.create_run(experiment_id, run_name=log.run, tags=tags).info.run_id
            )
        self._run_ids[key] = run_id
        return run_id

    def _write(self, log: JobLog) -> bool:
        experiment_id = self._experiment_id(self.experiment_name or log.experiment)
        run_id = self._run_id(experiment_id, log)
        marker = _mlflow_key(_ML_JOB + log.job_id)
        tags = self.client.get_run(run_id).data.tags
        if marker in tags:
            return False
        timestamp = int((log.wall_time or time.time()) * 1000)
        metrics = [
            self._metric(_mlflow_key(name), value, timestamp, point.step)
            for point in log.points
            for name, value in point.values.items()
        ]
        for chunk in _chunks(metrics, _ML_METRICS_PER_BATCH):
            self.client.log_batch(run_id, metrics=list(chunk))
        new_tags: dict[str, str] = {}
        if log.exploited_from is not None:
            new_tags[_ML_EXPLOIT + str(log.generation)] = (
                f"{self.step} {log.first_step}: copied member {log.exploited_from_member} "
                f"(job {log.exploited_from})"
            )
        latest = tags.get(_ML_GENERATION, "")
        if log.generation is None or not latest.isdigit() or int(latest) <= log.generation:
            # The run's latest job (a job logged late, out of order, leaves them be).
            if log.generation is not None:
                new_tags[_ML_GENERATION] = str(log.generation)
            new_tags[_ML_HEAD] = log.job_id
            for name, value in log.hyperparameters.items():
                new_tags[_ML_HYPERPARAMETER + name] = value
        run_tags = [
            self._tag(_mlflow_key(name), value[:_ML_TAG_LENGTH]) for name, value in new_tags.items()
        ]
        for chunk in _chunks(run_tags, _ML_TAGS_PER_BATCH):
            self.client.log_batch(run_id, tags=list(chunk))
        # Last: a failure before this logs the job again next time, rather than never.
        self.client.set_tag(run_id, marker, log.note[:_ML_TAG_LENGTH])
        return True

    def _end_export(self, experiment_done: bool) -> None:
        if experiment_done:
            for run_id in self._run_ids.values():
                self.client.set_terminated(run_id, "FINISHED")

    def __repr__(self) -> str:
        return f"MLflow({self.tracking_uri!r}, experiment_name={self.experiment_name!r})"
