"""TensorBoard and MLflow for PBT, read back as users would see them.

A seeded PBT run (3 members, 4 generations, exploits) through ``next_job``,
with fake training that records per-epoch history like the integrations do
(``record_epoch``: 2 epochs per job, 10 optimizer steps per epoch). What
was written is read back with TensorBoard's ``EventAccumulator`` and
MLflow's ``MlflowClient`` on a SQLite store: one run per member, steps
continuing across jobs, hyperparameters as metrics that change at a
perturbation, exploit marks, and nothing written twice.
"""

from __future__ import annotations

import math
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import schedy
from schedy.cli import main
from schedy.errors import NoJobError
from schedy.integrations import _tracking
from schedy.integrations._core import record_epoch

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (
    EventAccumulator,
)

from schedy.integrations import trackers

# MLflow's SQL store uses a loader SQLAlchemy 2.1 deprecates: not ours to fix.
pytestmark = pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy")

EPOCHS_PER_JOB = 2
STEPS_PER_EPOCH = 10
POPULATION = 3
GENERATIONS = 4


def _train(job: schedy.Job) -> None:
    """Fake training: continue the lineage's epoch counter, record two epochs."""
    start = job.results.get("epoch", 0)
    for epoch in range(start + 1, start + 1 + EPOCHS_PER_JOB):
        accuracy = 10 * job.hyperparameters["lr"] + 0.01 * epoch
        record_epoch(
            job.results,
            {"acc": accuracy, "loss": 1 - accuracy},
            epoch=epoch,
            step=epoch * STEPS_PER_EPOCH,
        )


def _run_pbt(
    url: str, name: str = "pbt", after: Callable[[schedy.Job], Any] | None = None
) -> schedy.PopulationBasedTraining:
    """Run a whole seeded PBT experiment with one worker; ``after(job)`` once each job ended."""
    db = schedy.SchedyDB(url)
    experiment = schedy.PopulationBasedTraining(
        name,
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(0.34),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={
            "lr": schedy.random.LogUniform(1e-3, 1e-1),
            "activation": schedy.random.Choice(["relu", "tanh"]),
        },
        population_size=POPULATION,
        max_generations=GENERATIONS,
        seed=3,
    )
    db.add_experiment(experiment)
    while True:
        try:
            job = experiment.next_job(timeout=0)
        except NoJobError:
            break
        with job:
            _train(job)
        if after is not None:
            after(job)
    return db.get_experiment(name)  # type: ignore[return-value]


@pytest.fixture(scope="module")
def experiment(tmp_path_factory: pytest.TempPathFactory) -> schedy.PopulationBasedTraining:
    """The finished PBT experiment most tests export (it is only read)."""
    return _run_pbt(f"sqlite:///{tmp_path_factory.mktemp('store')}/schedy.db")


def _jobs(experiment: schedy.Experiment) -> dict[str, schedy.Job]:
    return {job.id: job for job in experiment.all_jobs()}


def _exploits(experiment: schedy.Experiment) -> list[schedy.Job]:
    return [job for job in experiment.all_jobs() if job.exploited_from is not None]


def _epochs(job: schedy.Job, jobs: dict[str, schedy.Job]) -> list[int]:
    """The lineage epochs ``job`` trained: past its parent's, up to its own."""
    parent = jobs.get(job.parent_id or "")
    start = 0 if parent is None else parent.results["epoch"]
    return list(range(start + 1, job.results["epoch"] + 1))


def _member_epochs(experiment: schedy.Experiment, member: int) -> list[int]:
    jobs = _jobs(experiment)
    mine = sorted(
        (job for job in jobs.values() if job.member == member), key=lambda job: job.generation
    )
    return [epoch for job in mine for epoch in _epochs(job, jobs)]


# -- TensorBoard ---------------------------------------------------------------
def _tensorboard(log_dir: Path) -> dict[str, EventAccumulator]:
    """Every run under ``log_dir``, loaded."""
    runs = {}
    for run in sorted(os.listdir(log_dir)):
        accumulator = EventAccumulator(str(log_dir / run))
        accumulator.Reload()
        runs[run] = accumulator
    return runs


def _scalars(accumulator: EventAccumulator, tag: str) -> list[tuple[int, float]]:
    if tag not in accumulator.Tags()["scalars"]:
        return []
    return [(event.step, event.value) for event in accumulator.Scalars(tag)]


def test_the_experiment_exploits(experiment: schedy.PopulationBasedTraining) -> None:
    exploits = _exploits(experiment)
    assert len(exploits) >= 3
    assert len({job.member for job in exploits}) >= 2
    jobs = _jobs(experiment)
    assert all(
        job.hyperparameters["lr"] != jobs[job.exploited_from or ""].hyperparameters["lr"]
        for job in exploits
    )


def test_tensorboard_live_one_run_per_member_steps_continue(tmp_path: Path) -> None:
    tracker = trackers.TensorBoard(tmp_path / "tb")
    logged: list[bool] = []
    experiment = _run_pbt(
        f"sqlite:///{tmp_path}/s.db", after=lambda job: logged.append(tracker.log_job(job))
    )
    tracker.close()
    assert logged and all(logged)
    runs = _tensorboard(tmp_path / "tb")
    assert list(runs) == [f"member_{member:03d}" for member in range(POPULATION)]
    jobs = _jobs(experiment)
    for member, (run, accumulator) in enumerate(runs.items()):
        steps = [step for step, _ in _scalars(accumulator, "acc")]
        # One point per epoch the member's jobs trained, read back in order: the
        # curve goes on across jobs (jumping to the copied model's epoch on exploits).
        assert steps == _member_epochs(experiment, member), run
        assert steps == sorted(steps) and len(steps) == len(set(steps))
        assert [step for step, _ in _scalars(accumulator, "hp/lr")] == steps
        assert [step for step, _ in _scalars(accumulator, "schedy/generation")] == steps
        # The values are the jobs' own, epoch by epoch.
        for job in (job for job in jobs.values() if job.member == member):
            history = dict(zip(job.results["history"]["epoch"], job.results["history"]["acc"]))
            for step, value in _scalars(accumulator, "acc"):
                if step in _epochs(job, jobs):
                    assert value == pytest.approx(history[step], rel=1e-6)


def test_tensorboard_a_perturbation_is_a_step_and_exploits_are_marked(
    experiment: schedy.PopulationBasedTraining, tmp_path: Path
) -> None:
    summary = trackers.export(experiment, trackers.TensorBoard(tmp_path))
    assert (summary.written, summary.skipped, summary.runs) == (
        len(list(experiment.all_jobs())),
        0,
        POPULATION,
    )
    runs = _tensorboard(tmp_path)
    jobs = _jobs(experiment)
    for job in _exploits(experiment):
        accumulator = runs[f"member_{job.member:03d}"]
        first = _epochs(job, jobs)[0]
        lr = dict(_scalars(accumulator, "hp/lr"))
        assert lr[first] == pytest.approx(job.hyperparameters["lr"], rel=1e-6)
        earlier = [value for step, value in lr.items() if step < first]
        assert earlier and earlier[-1] != pytest.approx(lr[first], rel=1e-6)
        marks = dict(_scalars(accumulator, "schedy/exploited_from_member"))
        assert marks[first] == jobs[job.exploited_from or ""].member
        notes = {
            event.step: event.tensor_proto.string_val[0].decode()
            for event in accumulator.Tensors("schedy/jobs")
        }
        assert f"copied job `{job.exploited_from}`" in notes[first]
        assert "lr: " in notes[first] and "->" in notes[first]
    # Only exploits are marked: one mark per exploit over all runs.
    marks = sum(
        len(_scalars(accumulator, "schedy/exploited_from_member")) for accumulator in runs.values()
    )
    assert marks == len(_exploits(experiment))


def test_tensorboard_logs_each_job_once(
    experiment: schedy.PopulationBasedTraining, tmp_path: Path
) -> None:
    with trackers.TensorBoard(tmp_path) as tracker:
        job = next(experiment.all_jobs())
        assert tracker.log_job(job) is True
        assert tracker.log_job(job) is False
    before = {
        run: _scalars(accumulator, "acc") for run, accumulator in _tensorboard(tmp_path).items()
    }
    assert before == {
        "member_000": [
            (1, pytest.approx(job.results["acc"] - 0.01, rel=1e-6)),
            (2, pytest.approx(job.results["acc"], rel=1e-6)),
        ]
    }
    crashed = experiment.get_job(job.id)
    crashed.status = schedy.Job.CRASHED  # as after an exception in `with job:`
    assert trackers.TensorBoard(tmp_path / "crashed").log_job(crashed) is False
    assert not (tmp_path / "crashed").exists()
    # An export afterwards (another tracker object, as another process) skips it.
    summary = trackers.export(experiment, trackers.TensorBoard(tmp_path))
    assert summary.skipped == 1 and summary.written == len(list(experiment.all_jobs())) - 1
    again = trackers.export(experiment, trackers.TensorBoard(tmp_path))
    assert again.written == 0
    runs = _tensorboard(tmp_path)
    for member in range(POPULATION):
        steps = [step for step, _ in _scalars(runs[f"member_{member:03d}"], "acc")]
        assert steps == _member_epochs(experiment, member)


def test_tensorboard_live_and_export_write_the_same(
    experiment: schedy.PopulationBasedTraining, tmp_path: Path
) -> None:
    with trackers.TensorBoard(tmp_path / "live") as tracker:
        for job in sorted(experiment.all_jobs(), key=lambda job: job.created_at):
            tracker.log_job(job)
    trackers.export(experiment, trackers.TensorBoard(tmp_path / "export"))
    live, exported = _tensorboard(tmp_path / "live"), _tensorboard(tmp_path / "export")
    assert list(live) == list(exported)
    for run in live:
        tags = live[run].Tags()["scalars"]
        assert set(tags) == set(exported[run].Tags()["scalars"])
        assert {"acc", "loss", "hp/lr", "schedy/generation"} <= set(tags)
        for tag in tags:
            assert sorted(_scalars(live[run], tag)) == sorted(_scalars(exported[run], tag))


def test_tensorboard_step_axis_counts_optimizer_steps(
    experiment: schedy.PopulationBasedTraining, tmp_path: Path
) -> None:
    trackers.export(experiment, trackers.TensorBoard(tmp_path, step="step"))
    accumulator = _tensorboard(tmp_path)["member_000"]
    steps = [step for step, _ in _scalars(accumulator, "acc")]
    assert steps == [epoch * STEPS_PER_EPOCH for epoch in _member_epochs(experiment, 0)]
    with pytest.raises(ValueError, match="'epoch'"):
        trackers.TensorBoard(tmp_path, step="batch")  # type: ignore[arg-type]


# -- MLflow ----------------------------------------------------------------------
mlflow_tracking = pytest.importorskip("mlflow.tracking")


@pytest.fixture
def mlflow_uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/mlflow.db"


def _mlflow_runs(uri: str, name: str = "pbt") -> dict[str, Any]:
    client = mlflow_tracking.MlflowClient(uri)
    mlflow_experiment = client.get_experiment_by_name(name)
    assert mlflow_experiment is not None
    runs = client.search_runs([mlflow_experiment.experiment_id])
    return {run.info.run_name: run for run in runs}


def _history(uri: str, run: Any, key: str) -> list[tuple[int, float]]:
    client = mlflow_tracking.MlflowClient(uri)
    return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))


def test_mlflow_export_one_run_per_member_hyperparameters_as_metrics(
    experiment: schedy.PopulationBasedTraining, mlflow_uri: str
) -> None:
    with trackers.MLflow(mlflow_uri) as tracker:
        summary = trackers.export(experiment, tracker)
    assert summary.written == len(list(experiment.all_jobs()))
    runs = _mlflow_runs(mlflow_uri)
    assert sorted(runs) == [f"member_{member:03d}" for member in range(POPULATION)]
    jobs = _jobs(experiment)
    for member in range(POPULATION):
        run = runs[f"member_{member:03d}"]
        assert run.data.tags["schedy.member"] == str(member)
        assert run.data.tags["schedy.experiment"] == "pbt"
        assert run.data.params == {}  # hyperparameters change: metrics, never params
        assert run.info.status == "FINISHED"  # the experiment is DONE
        epochs = _member_epochs(experiment, member)
        assert [step for step, _ in _history(mlflow_uri, run, "acc")] == epochs
        assert [step for step, _ in _history(mlflow_uri, run, "hp/lr")] == epochs
        head = max(
            (job for job in jobs.values() if job.member == member), key=lambda job: job.generation
        )
        assert run.data.tags["schedy.head_job"] == head.id
        assert run.data.tags["hp.activation"] == head.hyperparameters["activation"]
        assert float(run.data.tags["hp.lr"]) == head.hyperparameters["lr"]
    for job in _exploits(experiment):
        run = runs[f"member_{job.member:03d}"]
        first = _epochs(job, jobs)[0]
        lr = dict(_history(mlflow_uri, run, "hp/lr"))
        assert lr[first] == job.hyperparameters["lr"]
        earlier = [value for step, value in lr.items() if step < first]
        assert earlier and earlier[-1] != lr[first]  # two values, at different steps
        marks = dict(_history(mlflow_uri, run, "schedy/exploited_from_member"))
        assert marks[first] == jobs[job.exploited_from or ""].member
        tag = run.data.tags[f"schedy.exploit.{job.generation}"]
        assert job.exploited_from in tag and f"epoch {first}" in tag


def test_mlflow_live_logging_is_idempotent(tmp_path: Path, mlflow_uri: str) -> None:
    tracker = trackers.MLflow(mlflow_uri, experiment_name="live")
    experiment = _run_pbt(f"sqlite:///{tmp_path}/s.db", after=tracker.log_job)
    job = next(experiment.all_jobs())
    assert tracker.log_job(job) is False
    # Live, the tracker cannot know a member ended: its runs stay RUNNING.
    assert {run.info.status for run in _mlflow_runs(mlflow_uri, "live").values()} == {"RUNNING"}
    # A new tracker (another worker, or an export later) finds the jobs in the runs.
    summary = trackers.export(experiment, trackers.MLflow(mlflow_uri, experiment_name="live"))
    assert (summary.written, summary.skipped) == (0, len(list(experiment.all_jobs())))
    runs = _mlflow_runs(mlflow_uri, "live")
    assert len(runs) == POPULATION
    for member in range(POPULATION):
        run = runs[f"member_{member:03d}"]
        steps = [step for step, _ in _history(mlflow_uri, run, "acc")]
        assert steps == _member_epochs(experiment, member)  # each epoch once
        assert run.info.status == "FINISHED"  # the export saw the experiment DONE


def test_jobs_without_a_member_get_a_run_each(tmp_path: Path, mlflow_uri: str) -> None:
    db = schedy.SchedyDB(f"sqlite:///{tmp_path}/s.db")
    search = schedy.RandomSearch("random", {"lr": schedy.random.Uniform(0.0, 1.0)}, seed=1)
    db.add_experiment(search)
    for _ in range(3):
        with search.next_job() as job:
            _train(job)
    ids = sorted(job.id for job in search.all_jobs())
    trackers.export(search, trackers.TensorBoard(tmp_path / "tb"))
    trackers.export(search, trackers.MLflow(mlflow_uri))
    runs = _tensorboard(tmp_path / "tb")
    assert sorted(runs) == sorted(f"job_{job_id}" for job_id in ids)
    assert all(len(_scalars(run, "acc")) == EPOCHS_PER_JOB for run in runs.values())
    assert sorted(_mlflow_runs(mlflow_uri, "random")) == sorted(runs)


# -- the command -------------------------------------------------------------------
def test_schedy_export_writes_both_trackers(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], mlflow_uri: str
) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    experiment = _run_pbt(url, name="cli run")
    count = len(list(experiment.all_jobs()))
    words = ["--db", url, "export", "cli run", "--tensorboard", str(tmp_path / "tb")]
    assert main([*words, "--mlflow", mlflow_uri, "--mlflow-experiment", "from-cli"]) == 0
    out = capsys.readouterr().out
    assert f"{count} job(s) written to TensorBoard" in out
    assert f"{count} job(s) written to MLflow" in out
    assert len(_tensorboard(tmp_path / "tb")) == POPULATION
    assert len(_mlflow_runs(mlflow_uri, "from-cli")) == POPULATION
    assert main(words) == 0
    again = capsys.readouterr().out
    assert f"0 job(s) written to TensorBoard logs in {tmp_path / 'tb'}" in again
    assert f"(3 run(s); {count} already there)" in again


def test_schedy_export_needs_a_tracker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--db", f"sqlite:///{tmp_path}/s.db", "export", "x"]) == 2
    assert "--tensorboard DIR or --mlflow URI" in capsys.readouterr().err


# -- what the trackers are given, and their imports ----------------------------------
class _FakeJob:
    """A finished job as the tracker reads it (results written by hand, no store)."""

    def __init__(
        self, results: dict[str, Any], member: int | None = 0, generation: int = 2
    ) -> None:
        self.id = "j1"
        self.experiment = type("E", (), {"name": "e"})()
        self.member, self.generation = member, generation
        self.parent_id = self.exploited_from = None
        self.hyperparameters = {"lr": 0.1, "opt": {"beta": 0.9, "name": "adam"}, "flag": True}
        self.results = results
        self.updated_at = 0.0


def test_a_job_without_history_logs_its_results_once() -> None:
    job: Any = _FakeJob({"acc": 0.5, "model_path": "/x", "note": "text", "epoch": 7})
    log = _tracking.job_log(job, None, "epoch")
    assert [(point.step, point.values) for point in log.points] == [
        (
            7,
            {
                "acc": 0.5,
                "hp/lr": 0.1,
                "hp/opt.beta": 0.9,
                "hp/flag": 1.0,
                "schedy/generation": 2.0,
            },
        )
    ]
    assert log.hyperparameters["opt.name"] == "adam" and "opt.name = adam" in log.note
    assert _tracking.job_log(_FakeJob({"acc": 0.5}), None, "epoch").first_step == 2  # type: ignore[arg-type]
    assert _tracking.job_log(_FakeJob({}, member=None), None, "epoch").run == "job_j1"  # type: ignore[arg-type]


def test_mlflow_keys_are_made_acceptable() -> None:
    assert trackers._mlflow_key("val/acc@top-1") == "val/acc_top-1"
    assert trackers._mlflow_key("/a//../b") == "_/a/_/_/b"
    assert math.isnan(
        _tracking.job_log(_exploited_without_parent(), None, "epoch")
        .points[0]
        .values["schedy/exploited_from_member"]
    )


def _exploited_without_parent() -> Any:
    job = _FakeJob({})
    job.exploited_from = "gone"  # type: ignore[assignment]
    return job


@pytest.mark.parametrize(
    ("tracker", "module", "extra"),
    [("TensorBoard", "tensorboard", "tensorboard"), ("MLflow", "mlflow", "mlflow")],
)
def test_a_missing_tracker_package_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, tracker: str, module: str, extra: str
) -> None:
    for name in [name for name in sys.modules if name == module or name.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)
    with pytest.raises(ImportError, match=rf"pip install 'schedy\[{extra}\]'"):
        getattr(trackers, tracker)(str(tmp_path))


def test_importing_schedy_imports_no_tracker() -> None:
    code = (
        "import sys, schedy, schedy.integrations, schedy.integrations.trackers, schedy.cli\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorboard', 'mlflow')))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]"
