"""Table tests of the framework-agnostic integration core, and of JobCallback through a
framework-free subclass: no framework."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from typing import Any

import pytest

from schedy.errors import SchedyError
from schedy.integrations import MissingMetricError, _core


class FakeTensor:
    """Duck-typed like a torch tensor: ``numel()`` and ``item()``."""

    def __init__(self, *values: float) -> None:
        self.values = values

    def numel(self) -> int:
        return len(self.values)

    def item(self) -> float:
        if len(self.values) != 1:
            raise ValueError("only one element tensors can be converted to Python scalars")
        return self.values[0]


class FakeArray:
    """Duck-typed like a numpy array/scalar: ``size`` attribute and ``item()``."""

    def __init__(self, *values: float) -> None:
        self.values = values
        self.size = len(values)

    def item(self) -> float:
        return self.values[0]


class FloatOnly:
    """Like a TensorFlow eager scalar: only ``__float__``."""

    def __float__(self) -> float:
        return 2.5


# -- metrics ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1, 1.0),
        (0.5, 0.5),
        (True, 1.0),
        (FakeTensor(0.25), 0.25),
        (FakeArray(3.0), 3.0),
        (FloatOnly(), 2.5),
        (FakeTensor(1.0, 2.0), None),  # not one number
        (FakeArray(1.0, 2.0), None),
        ("0.5", None),  # strings are not metrics, even numeric ones
        (b"1", None),
        (None, None),
        ([1.0], None),
        (object(), None),
    ],
)
def test_to_float(value: Any, expected: float | None) -> None:
    assert _core.to_float(value) == expected


def test_to_float_keeps_nan_and_inf() -> None:
    assert math.isnan(_core.to_float(float("nan")) or 0.0)
    assert _core.to_float(FakeTensor(float("inf"))) == math.inf


def test_to_float_with_real_numpy() -> None:
    numpy = pytest.importorskip("numpy")
    assert _core.to_float(numpy.float32(0.5)) == 0.5
    assert _core.to_float(numpy.array(7)) == 7.0
    assert _core.to_float(numpy.array([1.0, 2.0])) is None


def test_extract_metrics_keeps_scalars_only() -> None:
    logs = {
        "val_acc": FakeTensor(0.9),
        "loss": 0.1,
        "confusion": FakeTensor(1, 2, 3, 4),
        "tag": "x",
    }
    assert _core.extract_metrics(logs) == {"val_acc": 0.9, "loss": 0.1}


def test_without_reserved_sets_aside_names_schedy_writes() -> None:
    metrics = {"val_acc": 0.5, "step": 10.0, "epoch": 1.0}
    assert _core.without_reserved(metrics) == ({"val_acc": 0.5}, ["epoch", "step"])
    assert _core.without_reserved({"loss": 1.0}) == ({"loss": 1.0}, [])


def test_missing_monitor_lists_the_metrics_that_exist() -> None:
    with pytest.raises(MissingMetricError) as caught:
        _core.monitored_value({"val_acc": 0.9, "train_loss": 0.1}, "val_accuracy", "a hint.")
    error = caught.value
    message = str(error)
    assert "'val_accuracy'" in message
    assert "'train_loss', 'val_acc'" in message  # sorted, so it reads the same every time
    assert message.endswith("a hint.")
    assert not message.startswith('"')  # not KeyError's quoted repr
    assert error.available == ["train_loss", "val_acc"]
    # Catchable as whichever the caller expects.
    assert isinstance(error, KeyError)
    assert isinstance(error, ValueError)
    assert isinstance(error, SchedyError)


def test_missing_monitor_with_no_metrics_at_all() -> None:
    with pytest.raises(MissingMetricError, match="metrics that exist: none"):
        _core.monitored_value({}, "val_acc")


def test_monitored_value() -> None:
    assert _core.monitored_value({"val_acc": 0.5}, "val_acc") == 0.5


@pytest.mark.parametrize("monitor", ["", None, 3, "epoch", "step", "history", "model_path"])
def test_check_monitor_refuses(monitor: Any) -> None:
    with pytest.raises(ValueError, match="monitor"):
        _core.check_monitor(monitor)


# -- epoch budget ----------------------------------------------------------
@pytest.mark.parametrize(
    ("start", "completed", "per_job", "should_stop"),
    [
        (0, 1, 1, True),
        (0, 1, 2, False),
        (0, 2, 2, True),
        (4, 5, 1, True),  # resumed at epoch 4: the budget counts from there
        (4, 5, 2, False),
        (4, 6, 2, True),
        (4, 7, 2, True),  # past the budget (e.g. min_epochs kept it going): still stop
    ],
)
def test_budget_decision(start: int, completed: int, per_job: int, should_stop: bool) -> None:
    stop, reason = _core.budget_decision(start, completed, per_job)
    assert stop is should_stop
    assert (reason is not None) is should_stop
    if reason:
        assert f"epochs_per_job={per_job}" in reason


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, None, "2"])
def test_check_epochs_per_job_refuses(bad: Any) -> None:
    with pytest.raises(ValueError, match="epochs_per_job"):
        _core.check_epochs_per_job(bad)


def test_check_epochs_per_job_accepts() -> None:
    assert _core.check_epochs_per_job(3) == 3


# -- optimizer hyperparameters ---------------------------------------------
@pytest.mark.parametrize(
    ("hyperparameters", "mapping", "expected"),
    [
        ({"learning_rate": 0.1, "layers": 3}, None, {"lr": 0.1}),
        ({"lr": 0.2}, None, {"lr": 0.2}),
        ({"layers": 3}, None, {}),
        ({"learning_rate": 0.1, "lr": 0.1}, None, {"lr": 0.1}),  # agreeing is fine
        (
            {"learning_rate": 0.1, "momentum": 0.9, "wd": 1e-4},
            {"momentum": "momentum", "wd": "weight_decay"},
            {"lr": 0.1, "momentum": 0.9, "weight_decay": 1e-4},
        ),
        ({"learning_rate": 0.1, "lr": 7}, {"lr": None}, {"lr": 0.1}),  # None drops a default
        ({"learning_rate": 0.1}, {"learning_rate": "max_lr"}, {"max_lr": 0.1}),
    ],
)
def test_optimizer_values(
    hyperparameters: dict[str, Any], mapping: dict[str, Any] | None, expected: dict[str, Any]
) -> None:
    assert _core.optimizer_values(hyperparameters, mapping) == expected


def test_optimizer_values_refuses_a_named_hyperparameter_the_job_lacks() -> None:
    with pytest.raises(ValueError, match=r"'momentum'.*\['learning_rate'\]"):
        _core.optimizer_values({"learning_rate": 0.1}, {"momentum": "momentum"})
    # ...unless asked to be lenient (reading what a previous job had).
    assert _core.optimizer_values({"learning_rate": 0.1}, {"momentum": "momentum"}, strict=False)


def test_optimizer_values_refuses_two_values_for_one_parameter() -> None:
    with pytest.raises(ValueError, match="both set the optimizer's 'lr'"):
        _core.optimizer_values({"learning_rate": 0.1, "lr": 0.2})


@pytest.mark.parametrize("mapping", [["lr"], {"lr": 3}, {1: "lr"}])
def test_resolve_mapping_refuses_bad_types(mapping: Any) -> None:
    with pytest.raises(TypeError):
        _core.resolve_mapping(mapping)


@pytest.mark.parametrize(
    ("group", "values", "previous", "expected"),
    [
        # No schedule, nothing known: the value is set.
        ({"lr": 0.1}, {"lr": 0.3}, None, {"lr": 0.3}),
        # Unchanged since the checkpoint: untouched, even a decayed rate.
        (
            {"lr": 0.025, "initial_lr": 0.1},
            {"lr": 0.1},
            {"lr": 0.1},
            {"lr": 0.025, "initial_lr": 0.1},
        ),
        # Perturbed x2 mid-schedule: the schedule's progress is kept, its base moves.
        (
            {"lr": 0.025, "initial_lr": 0.1},
            {"lr": 0.2},
            {"lr": 0.1},
            {"lr": 0.05, "initial_lr": 0.2},
        ),
        # Previous unknown: the group's initial_lr is the old base.
        ({"lr": 0.025, "initial_lr": 0.1}, {"lr": 0.2}, None, {"lr": 0.05, "initial_lr": 0.2}),
        # Layer-wise rates: each group keeps its ratio to the job's value.
        (
            {"lr": 0.01, "initial_lr": 0.01},
            {"lr": 0.2},
            {"lr": 0.1},
            {"lr": 0.02, "initial_lr": 0.02},
        ),
        # OneCycleLR keeps its targets in the group: they scale with the base.
        (
            {"lr": 0.05, "initial_lr": 0.004, "max_lr": 0.1, "min_lr": 4e-8},
            {"lr": 0.2},
            {"lr": 0.1},
            {"lr": 0.1, "initial_lr": 0.008, "max_lr": 0.2, "min_lr": 8e-8},
        ),
        # No schedule but a known previous: scaled (a hand-decayed rate keeps its decay).
        ({"lr": 0.05}, {"lr": 0.2}, {"lr": 0.1}, {"lr": 0.1}),
        # Other parameters are set when they changed...
        (
            {"lr": 0.1, "momentum": 0.9},
            {"momentum": 0.5},
            {"momentum": 0.9},
            {"lr": 0.1, "momentum": 0.5},
        ),
        # ...left alone when they did not...
        (
            {"lr": 0.1, "momentum": 0.8},
            {"momentum": 0.9},
            {"momentum": 0.9},
            {"lr": 0.1, "momentum": 0.8},
        ),
        # ...and non-numbers are set as they are.
        ({"betas": (0.9, 0.99)}, {"betas": (0.8, 0.9)}, None, {"betas": (0.8, 0.9)}),
        # A zero base cannot be scaled from: set.
        ({"lr": 0.0, "initial_lr": 0.0}, {"lr": 0.1}, {"lr": 0.0}, {"lr": 0.1, "initial_lr": 0.1}),
    ],
)
def test_update_param_group(
    group: dict[str, Any],
    values: dict[str, Any],
    previous: dict[str, Any] | None,
    expected: dict[str, Any],
) -> None:
    _core.update_param_group(group, values, previous)
    assert group.keys() == expected.keys()
    for key, value in expected.items():
        assert group[key] == pytest.approx(value), key


# -- checkpoints -----------------------------------------------------------
def test_checkpoint_dir_default_is_absolute(
    monkeypatch: pytest.MonkeyPatch, tmp_path: os.PathLike[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    assert _core.checkpoint_dir() == os.path.join(os.fspath(tmp_path), "checkpoints")
    assert _core.checkpoint_dir("relative/dir") == os.path.join(
        os.fspath(tmp_path), "relative", "dir"
    )


def test_checkpoint_dir_from_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    monkeypatch.setenv(_core.CHECKPOINT_DIR_ENV, str(tmp_path / "shared"))
    assert _core.checkpoint_dir() == str(tmp_path / "shared")
    # An explicit folder wins over the environment.
    assert _core.checkpoint_dir(tmp_path / "mine") == str(tmp_path / "mine")


@pytest.mark.parametrize(
    ("directory", "job_id", "suffix", "expected"),
    [
        ("/ckpt", "a1B2c3", ".ckpt", "/ckpt/a1B2c3.ckpt"),
        ("/ckpt/", "a1B2c3", ".pt", "/ckpt/a1B2c3.pt"),
        ("s3://bucket/runs/", "a1B2c3", ".ckpt", "s3://bucket/runs/a1B2c3.ckpt"),
        ("memory://x", "j", ".pt", "memory://x/j.pt"),
    ],
)
def test_checkpoint_path(directory: str, job_id: str, suffix: str, expected: str) -> None:
    assert _core.checkpoint_path(directory, job_id, suffix) == expected


def test_checkpoint_path_from_environment_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_core.CHECKPOINT_DIR_ENV, "gs://bucket/pbt")
    assert _core.checkpoint_path(None, "job1", ".ckpt") == "gs://bucket/pbt/job1.ckpt"


@pytest.mark.parametrize("job_id", ["", "..", "a/b", "a\\b"])
def test_checkpoint_path_refuses_ids_that_leave_the_folder(job_id: str) -> None:
    with pytest.raises(ValueError, match="cannot name a checkpoint"):
        _core.checkpoint_path("/ckpt", job_id, ".pt")


# -- reporting -------------------------------------------------------------
def test_record_epoch_latest_values_counters_and_history() -> None:
    results: dict[str, Any] = {"model_path": "/ckpt/parent.ckpt"}
    _core.record_epoch(results, {"val_acc": 0.5, "loss": 1.0}, epoch=1, step=10)
    _core.record_epoch(results, {"val_acc": 0.7, "loss": 0.8}, epoch=2, step=20)
    assert results["val_acc"] == 0.7
    assert results["epoch"] == 2
    assert results["step"] == 20
    assert results["model_path"] == "/ckpt/parent.ckpt"
    assert results["history"] == {
        "val_acc": [0.5, 0.7],
        "loss": [1.0, 0.8],
        "epoch": [1, 2],
        "step": [10, 20],
    }


def test_record_epoch_pads_metrics_that_come_and_go() -> None:
    results: dict[str, Any] = {}
    _core.record_epoch(results, {"loss": 1.0}, epoch=1, step=1)
    _core.record_epoch(results, {"loss": 0.9, "val_acc": 0.5}, epoch=2, step=2)
    _core.record_epoch(results, {"loss": 0.8}, epoch=3, step=3)
    history = results["history"]
    assert history["val_acc"] == [None, 0.5, None]
    assert history["loss"] == [1.0, 0.9, 0.8]
    assert {len(column) for column in history.values()} == {3}
    assert results["val_acc"] == 0.5  # the latest value that was logged


def test_record_epoch_continues_an_inherited_history_without_mutating_it() -> None:
    parent_history = {"val_acc": [0.1, 0.2], "epoch": [1, 2], "step": [5, 10]}
    results: dict[str, Any] = {"history": parent_history}  # as PBT copied it from the parent
    _core.record_epoch(results, {"val_acc": 0.3}, epoch=3, step=15)
    assert results["history"] == {
        "val_acc": [0.1, 0.2, 0.3],
        "epoch": [1, 2, 3],
        "step": [5, 10, 15],
    }
    assert parent_history["val_acc"] == [0.1, 0.2]


def test_record_epoch_without_step() -> None:
    results: dict[str, Any] = {}
    _core.record_epoch(results, {"acc": 1.0}, epoch=1)
    assert "step" not in results
    assert results["history"] == {"acc": [1.0], "epoch": [1]}


def test_record_epoch_replaces_a_malformed_history() -> None:
    results: dict[str, Any] = {"history": "not a dict"}
    _core.record_epoch(results, {"acc": 1.0}, epoch=1, step=1)
    assert results["history"] == {"acc": [1.0], "epoch": [1], "step": [1]}


def test_record_epoch_refuses_metrics_named_like_its_own_results() -> None:
    with pytest.raises(ValueError, match="'epoch'"):
        _core.record_epoch({}, {"epoch": 3.0}, epoch=3)


def test_recorded_results_are_storable() -> None:
    from schedy import _values

    results: dict[str, Any] = {}
    _core.record_epoch(results, {"loss": float("nan")}, epoch=1, step=1)
    _core.record_epoch(results, {"loss": 0.5, "acc": 1.0}, epoch=2, step=2)
    assert _values.loads(_values.dumps(_values.normalize_mapping(results, "results")))


# -- import hygiene --------------------------------------------------------
def test_importing_schedy_and_the_core_imports_no_framework() -> None:
    code = (
        "import sys, schedy, schedy.integrations, schedy.integrations._core\n"
        "import schedy.integrations._checkpoints, schedy.integrations._files\n"
        "heavy = {'torch', 'lightning', 'pytorch_lightning', 'keras', 'tensorflow'}\n"
        "print(sorted(heavy & set(sys.modules)))\n"
    )
    output = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    assert output.strip() == "[]"


def test_optimizer_values_rejects_a_mapping_that_is_not_a_dict() -> None:
    with pytest.raises(TypeError, match="dict"):
        _core.optimizer_values({"lr": 0.1}, "wd")  # type: ignore[arg-type]


# -- JobCallback: what the Lightning and Keras callbacks share ---------------
class HintedCallback(_core.JobCallback):
    """A framework-free callback: only the hooks a framework would set."""

    _log_hint = "(log {monitor} in the model.)"
    _validation_hint = "No validation ran in this job."

    def __init__(self, job: Any, monitor: str = "val_acc", **options: Any) -> None:
        self._take_job(
            job,
            monitor,
            options.get("epochs_per_job", 2),
            options.get("checkpoint_dir"),
            options.get("optimizer_hyperparameters"),
            options.get("keep_top_k", 1),
            ".ckpt",
            options.get("trackers"),
        )


class RenamingCallback(HintedCallback):
    _drops_reserved_metrics = True

    def _optimizer_names(self, values: Any) -> dict[str, Any]:
        return {f"framework_{name}": value for name, value in values.items()}


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"monitor": ""}, "monitor must name"),
        ({"epochs_per_job": 0}, "epochs_per_job"),
        ({"keep_top_k": -1}, "keep_top_k must be an int >= 0"),
    ],
)
def test_job_callback_checks_its_arguments(
    make_job: Any, options: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        HintedCallback(make_job("j"), **options)


def job_state(callback: _core.JobCallback) -> tuple[Any, ...]:
    """What ``_reset`` sets: ``(start_epoch, restored_from, stopping_reason, validated)``."""
    return (
        callback.start_epoch,
        callback.restored_from,
        callback.stopping_reason,
        callback._validated,
    )


def test_job_callback_takes_the_job(make_job: Any, tmp_path: Any) -> None:
    callback = RenamingCallback(make_job("j", {"lr": 0.1}), checkpoint_dir=tmp_path)
    assert callback.optimizer_values == {"framework_lr": 0.1}  # through the hook
    assert callback.checkpoint_path == str(tmp_path / "j.ckpt")
    assert job_state(callback) == (None, None, None, False)


def test_job_callback_budget(make_job: Any) -> None:
    callback = HintedCallback(make_job("j"), epochs_per_job=2)
    assert callback.budget_decision(5) == (False, None)  # not started: counts from epoch 4
    callback.start_epoch = 3
    assert callback.budget_decision(4) == (False, None)
    stop, reason = callback.budget_decision(5)
    assert stop and reason is not None and "epochs 3 to 4" in reason


def test_job_callback_reset_forgets_the_previous_fit(make_job: Any) -> None:
    callback = HintedCallback(make_job("j"))
    callback.start_epoch, callback.restored_from, callback.stopping_reason = 3, "/p", "done"
    callback._validated = True
    callback._reset()
    assert job_state(callback) == (None, None, None, False)


def test_job_callback_requires_the_monitor_after_validation_or_at_the_end(
    make_job: Any,
) -> None:
    callback = HintedCallback(make_job("j"))
    logs = {"loss": FakeTensor(0.5), "name": "not a number"}
    assert callback.epoch_metrics(logs, final=False) == {"loss": 0.5}  # merely early
    with pytest.raises(MissingMetricError) as raised:
        callback.epoch_metrics(logs, final=True)
    assert str(raised.value).endswith(
        "log 'val_acc'. (log 'val_acc' in the model.) No validation ran in this job."
    )
    callback._validated = True
    with pytest.raises(MissingMetricError) as raised:
        callback.epoch_metrics(logs, final=False)
    assert str(raised.value).endswith("log 'val_acc'. (log 'val_acc' in the model.)")
    assert callback.epoch_metrics({"val_acc": 1, "step": 2}, final=True) == {
        "val_acc": 1.0,
        "step": 2.0,  # kept: record_epoch refuses it, as Keras does
    }


def test_job_callback_may_set_reserved_metrics_aside(make_job: Any) -> None:
    callback = RenamingCallback(make_job("j"))
    with pytest.warns(UserWarning, match=r"\['step'\] are not reported"):
        assert callback.epoch_metrics({"val_acc": 1, "step": 2}, final=True) == {"val_acc": 1.0}


def test_job_callback_reads_back_what_its_checkpoints_record(make_job: Any) -> None:
    callback = RenamingCallback(make_job("j", {"lr": 0.2, "wd": 1}))
    callback.start_epoch = 4
    state = callback._checkpoint_state()
    assert state == {
        "job_id": "j",
        "hyperparameters": {"lr": 0.2, "wd": 1},
        "start_epoch": 4,
        "monitor": "val_acc",
        "epochs_per_job": 2,
    }
    assert callback._budget_start(state, 6) == 4  # this very job, resumed mid-budget
    assert callback._budget_start({**state, "job_id": "parent"}, 6) == 6
    assert callback._budget_start({**state, "start_epoch": True}, 6) == 6
    assert callback._budget_start({}, 0) == 0
    assert callback._previous_values(state) == {"framework_lr": 0.2}
    assert callback._previous_values({}) is None  # unknown: not "no values"


def test_job_callback_records_the_saved_checkpoint(make_job: Any, tmp_path: Any) -> None:
    job = make_job("j")  # a stub: no experiment, so nothing is pruned
    callback = HintedCallback(job, checkpoint_dir=tmp_path)
    callback._checkpoint_saved()
    assert job.results == {"model_path": str(tmp_path / "j.ckpt")}
    assert job.pushed == [job.results]


def test_an_explored_hyperparameter_no_optimizer_takes_is_reported_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from types import SimpleNamespace

    scheduler = SimpleNamespace(explore={"lr": 1, "momentum": 1, "dropout": 1})
    job = SimpleNamespace(experiment=SimpleNamespace(name="report-once", _scheduler=scheduler))
    with caplog.at_level("WARNING", logger="schedy.integrations"):
        assert _core.report_unplaced(job, {"momentum", "params"}, "optimizer") == ["dropout"]
        _core.report_unplaced(job, {"momentum"}, "optimizer")
    messages = [record.getMessage() for record in caplog.records]
    assert len(messages) == 1 and "'dropout'" in messages[0]
    assert "job.hyperparameters['dropout']" in messages[0]


def test_settings_named_like_the_optimizers_are_picked_up() -> None:
    values = _core.with_named_settings(
        {"lr": 0.1},
        {"learning_rate": 0.1, "weight_decay": 0.01, "params": "no", "layers": 3},
        {"lr", "weight_decay", "params", "momentum"},
        {"momentum": None},
    )
    assert values == {"lr": 0.1, "weight_decay": 0.01}


class RecordingTracker:
    """Records the jobs it was given; raises ``error`` instead when set."""

    destination = "a test tracker"

    def __init__(self, error: Exception | None = None) -> None:
        self.error = error
        self.logged: list[Any] = []

    def log_job(self, job: Any) -> bool:
        if self.error is not None:
            raise self.error
        self.logged.append((job.id, dict(job.results)))
        return True


def test_check_trackers() -> None:
    one, two = RecordingTracker(), RecordingTracker()
    assert _core.check_trackers(None) == ()
    assert _core.check_trackers(one) == (one,)
    assert _core.check_trackers([one, two]) == (one, two)
    for bad in ("tb/my-experiment", object(), [one, 3]):
        with pytest.raises(TypeError, match=r"trackers= takes experiment trackers .*TensorBoard"):
            _core.check_trackers(bad)


def test_a_saved_job_is_logged_to_each_tracker(make_job: Any, tmp_path: Any) -> None:
    job = make_job("j")
    first, second = RecordingTracker(), RecordingTracker()
    HintedCallback(job, checkpoint_dir=tmp_path, trackers=[first, second])._checkpoint_saved()
    expected = [("j", {"model_path": str(tmp_path / "j.ckpt")})]  # after model_path is recorded
    assert first.logged == second.logged == expected


def test_a_failing_tracker_is_a_warning_not_a_crash(make_job: Any, tmp_path: Any) -> None:
    broken, working = RecordingTracker(ConnectionError("refused")), RecordingTracker()
    callback = HintedCallback(make_job("j"), checkpoint_dir=tmp_path, trackers=[broken, working])
    with pytest.warns(
        UserWarning,
        match=r"job j was not logged to a test tracker: .*refused.*"
        r"schedy export",
    ):
        callback._checkpoint_saved()
    assert [job_id for job_id, _ in working.logged] == ["j"]
