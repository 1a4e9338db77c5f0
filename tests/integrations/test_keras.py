"""Keras 3 callback: hooks driven by hand with made-up logs, then real fits against a store.

Keras runs on its torch backend here (no TensorFlow). The hook-level tests
follow keras' own callback tests: a tiny real model, ``set_model`` and the
hooks called directly, no training unless the test needs optimizer state.
"""

from __future__ import annotations

import json
import os
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
# Keras writes its config under KERAS_HOME at import: keep it out of the home folder.
os.environ.setdefault("KERAS_HOME", os.path.join(tempfile.gettempdir(), "schedy-tests-keras"))

pytest.importorskip("torch")
keras = pytest.importorskip("keras")
np = pytest.importorskip("numpy")
h5py = pytest.importorskip("h5py")

import schedy  # noqa: E402  (after the importorskips)
from schedy.integrations import MissingMetricError  # noqa: E402
from schedy.integrations import _checkpoints as schedy_checkpoints  # noqa: E402
from schedy.integrations.keras import SchedyCallback  # noqa: E402

# Keras' own conversions, under numpy 2: not ours to fix.
pytestmark = pytest.mark.filterwarnings(
    "ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"
)

Job = Callable[..., Any]

FEATURES = 6
RNG = np.random.RandomState(0)
X = RNG.randn(96, FEATURES).astype("float32")
Y = (X[:, 0] + X[:, 1] > 0).astype("int64")
X_VAL, Y_VAL = X[:32], Y[:32]


def make_model(lr: float | Any = 0.01, seed: int = 0, optimizer: str = "adam") -> Any:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((FEATURES,)),
            keras.layers.Dense(8, activation="relu"),
            keras.layers.Dense(2, activation="softmax"),
        ]
    )
    if optimizer == "adam":
        opt = keras.optimizers.Adam(learning_rate=lr)
    else:
        opt = keras.optimizers.SGD(learning_rate=lr, momentum=0.9)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def train(model: Any, epochs: int = 1, callbacks: list[Any] | None = None) -> Any:
    return model.fit(
        X,
        Y,
        batch_size=32,
        epochs=epochs,
        validation_data=(X_VAL, Y_VAL),
        shuffle=False,
        verbose=0,
        callbacks=callbacks or [],
    )


def begin(callback: SchedyCallback, model: Any) -> SchedyCallback:
    """What ``fit`` does before the first epoch."""
    callback.set_model(model)
    callback.set_params({"epochs": 1000, "steps": 3, "verbose": 0})
    callback.on_train_begin()
    return callback


def run_job(callback: SchedyCallback, model: Any, logs: dict[str, Any]) -> None:
    """One epoch's worth of hooks, then the end of ``fit`` (which saves)."""
    begin(callback, model)
    callback.on_epoch_end(0, logs)
    callback.on_train_end(logs)


def lr_of(model: Any) -> float:
    return float(keras.ops.convert_to_numpy(model.optimizer.learning_rate))


def iterations_of(model: Any) -> int:
    return int(keras.ops.convert_to_numpy(model.optimizer.iterations))


def arrays(variables: list[Any]) -> list[Any]:
    return [np.array(keras.ops.convert_to_numpy(v)) for v in variables]


def metadata_of(path: str) -> dict[str, Any]:
    """schedy's record in a checkpoint: JSON in the weights file's ``schedy`` attribute."""
    with h5py.File(path, "r") as file:
        return dict(json.loads(file.attrs["schedy"]))


def assert_same_arrays(left: list[Any], right: list[Any]) -> None:
    assert len(left) == len(right)
    for a, b in zip(left, right):
        np.testing.assert_array_equal(a, b)


def trained_parent(make_job: Job, folder: Path, *, lr: float = 0.01, **hyperparameters: Any) -> Any:
    """A job that trained one real epoch and saved through the callback: (job, model)."""
    job = make_job("parent", {"learning_rate": lr, **hyperparameters})
    model = make_model(lr)
    train(model, callbacks=[SchedyCallback(job, "val_accuracy", checkpoint_dir=folder)])
    return job, model


# -- arguments -------------------------------------------------------------
@pytest.mark.parametrize(
    ("kwargs", "hyperparameters", "error", "match"),
    [
        ({"monitor": ""}, {}, ValueError, "monitor must name"),
        ({"monitor": "epoch"}, {}, ValueError, "schedy writes itself"),
        ({"epochs_per_job": 0}, {}, ValueError, "epochs_per_job"),
        ({"epochs_per_job": True}, {}, ValueError, "epochs_per_job"),
        ({"keep_top_k": -1}, {}, ValueError, "keep_top_k"),
        ({"keep_top_k": 1.5}, {}, ValueError, "keep_top_k"),
        ({"optimizer_hyperparameters": "wd"}, {}, TypeError, "dict"),
        ({"optimizer_hyperparameters": {"wd": "weight_decay"}}, {}, ValueError, "'wd'"),
        ({}, {"lr": 0.1, "learning_rate": 0.2}, ValueError, "both set"),
        (
            {"optimizer_hyperparameters": {"eta": "learning_rate"}},
            {"eta": 0.3, "lr": 0.1},
            ValueError,
            "learning rate twice",
        ),
    ],
)
def test_arguments_are_validated_at_construction(
    make_job: Job, kwargs: dict[str, Any], hyperparameters: dict[str, Any], error: type, match: str
) -> None:
    arguments = {"monitor": "val_accuracy", **kwargs}
    with pytest.raises(error, match=match):
        SchedyCallback(make_job("j", hyperparameters), **arguments)


def test_checkpoint_goes_to_the_environment_folder_by_default(
    make_job: Job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCHEDY_CHECKPOINT_DIR", str(tmp_path / "shared"))
    callback = SchedyCallback(make_job("j7"), "val_accuracy")
    assert callback.checkpoint_path == str(tmp_path / "shared" / "j7.weights.h5")
    assert callback.optimizer_values == {}


# -- hooks with made-up logs -----------------------------------------------
def test_reports_each_epoch_and_stops_after_the_budget(make_job: Job, tmp_path: Path) -> None:
    job = make_job("j", {"learning_rate": 0.01})
    model = make_model()
    callback = begin(SchedyCallback(job, "val_accuracy", epochs_per_job=2), model)
    assert callback.start_epoch == 0 and callback.restored_from is None

    callback.on_epoch_end(0, {"loss": np.float32(0.5), "val_accuracy": 0.25, "note": "text"})
    assert model.stop_training is False
    assert job.results["val_accuracy"] == 0.25
    assert type(job.results["loss"]) is float
    assert "note" not in job.results  # only numbers are reported
    assert len(job.pushed) == 1

    callback.on_epoch_end(1, {"loss": 0.4, "val_accuracy": 0.5})
    assert model.stop_training is True
    assert callback.stopping_reason is not None and "epochs_per_job=2" in callback.stopping_reason
    assert job.results["epoch"] == 2
    assert job.results["history"] == {
        "loss": [0.5, 0.4],
        "val_accuracy": [0.25, 0.5],
        "epoch": [1, 2],
        "step": [0, 0],  # optimizer.iterations: nothing was trained here
    }
    assert len(job.pushed) == 2


def test_fresh_job_leaves_the_optimizer_as_compiled(make_job: Job) -> None:
    model = make_model(lr=0.01)
    begin(SchedyCallback(make_job("j", {"learning_rate": 0.5}), "val_accuracy"), model)
    assert lr_of(model) == pytest.approx(0.01)  # no checkpoint: nothing to re-apply over


@pytest.mark.parametrize("validated", [False, True])
def test_missing_monitor_lists_the_metrics_that_exist(make_job: Job, validated: bool) -> None:
    callback = begin(SchedyCallback(make_job("j"), "val_acc"), make_model())
    if validated:
        callback.on_test_end({"loss": 0.3})
    with pytest.raises(MissingMetricError, match="'accuracy', 'loss'") as raised:
        callback.on_epoch_end(0, {"loss": 0.3, "accuracy": 0.9})
    assert raised.value.available == ["accuracy", "loss"]
    assert ("No validation ran" in str(raised.value)) is not validated


def test_monitor_may_be_missing_before_the_first_validation(make_job: Job) -> None:
    job = make_job("j")
    callback = begin(SchedyCallback(job, "val_accuracy", epochs_per_job=2), make_model())
    callback.on_epoch_end(0, {"loss": 0.3})  # validation_freq=2: none yet
    callback.on_test_end()
    callback.on_epoch_end(1, {"loss": 0.2, "val_accuracy": 0.75})
    assert job.results["history"]["val_accuracy"] == [None, 0.75]


def test_fit_ending_early_without_the_monitor_fails_the_job(make_job: Job, tmp_path: Path) -> None:
    job = make_job("j")
    callback = SchedyCallback(job, "val_accuracy", epochs_per_job=5, checkpoint_dir=tmp_path)
    begin(callback, make_model())
    callback.on_epoch_end(0, {"loss": 0.3})  # fit(epochs=1), no validation data
    with pytest.raises(MissingMetricError, match="No validation ran"):
        callback.on_train_end({"loss": 0.3})
    assert "model_path" not in job.results


def test_saves_one_file_named_after_the_job_with_its_counters(
    make_job: Job, tmp_path: Path
) -> None:
    job = make_job("j1", {"learning_rate": 0.01})
    model = make_model()
    train(model, epochs=2)
    callback = SchedyCallback(job, "val_accuracy", checkpoint_dir=tmp_path)
    run_job(callback, model, {"val_accuracy": 0.5})
    assert job.results["model_path"] == str(tmp_path / "j1.weights.h5")
    assert os.listdir(tmp_path) == ["j1.weights.h5"]  # no temporary file left behind
    assert job.pushed[-1]["model_path"] == job.results["model_path"]
    metadata = metadata_of(job.results["model_path"])
    assert metadata["job_id"] == "j1"
    assert metadata["hyperparameters"] == {"learning_rate": 0.01}
    assert (metadata["epoch"], metadata["step"]) == (1, 6)  # 2 epochs x 3 batches trained


def test_a_fit_that_ran_no_epoch_warns_and_saves_the_state_unchanged(
    make_job: Job, tmp_path: Path
) -> None:
    job = make_job("j")
    callback = begin(SchedyCallback(job, "val_accuracy", checkpoint_dir=tmp_path), make_model())
    with pytest.warns(UserWarning, match="ran no epoch"):
        callback.on_train_end()
    assert metadata_of(job.results["model_path"])["epoch"] == 0


def test_pruning_is_asked_for_with_keep_top_k(
    make_job: Job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[tuple[Any, str, int]] = []
    monkeypatch.setattr(
        schedy_checkpoints,
        "prune_checkpoints",
        lambda experiment, folder, keep_top_k: calls.append((experiment, folder, keep_top_k)),
    )
    for keep_top_k in (3, None):
        job = make_job(f"j{keep_top_k}")
        job.experiment = "the experiment"
        callback = SchedyCallback(
            job, "val_accuracy", checkpoint_dir=tmp_path, keep_top_k=keep_top_k
        )
        run_job(callback, make_model(), {"val_accuracy": 0.5})
    assert calls == [("the experiment", str(tmp_path), 3)]  # None keeps everything


# -- restoring ---------------------------------------------------------------
@pytest.mark.parametrize(
    ("trained_lr", "child_lr", "expected"),
    [
        (0.01, 0.01, 0.01),  # plain continuation
        (0.01, 0.02, 0.02),  # perturbed: the job's value wins over the restored one
        (0.005, 0.01, 0.005),  # unchanged, but lowered during training: kept
        (0.005, 0.02, 0.01),  # perturbed x2 on top of that progress
    ],
)
def test_restore_then_reapply_the_learning_rate(
    make_job: Job, tmp_path: Path, trained_lr: float, child_lr: float, expected: float
) -> None:
    parent = make_job("parent", {"learning_rate": 0.01})
    model = make_model(0.01)
    train(model)
    model.optimizer.learning_rate = trained_lr  # e.g. ReduceLROnPlateau
    callback = SchedyCallback(parent, "val_accuracy", checkpoint_dir=tmp_path)
    run_job(callback, model, {"val_accuracy": 0.5})

    child = make_job("child", {"learning_rate": child_lr}, results=parent.results)
    restored = make_model(child_lr, seed=1)  # other initial weights: all come from the file
    callback = begin(SchedyCallback(child, "val_accuracy"), restored)
    assert callback.restored_from == parent.results["model_path"]
    assert callback.start_epoch == 1
    assert lr_of(restored) == pytest.approx(expected)
    assert_same_arrays(arrays(restored.weights), arrays(model.weights))
    restored_state = [v for v in restored.optimizer.variables if "learning_rate" not in v.path]
    original_state = [v for v in model.optimizer.variables if "learning_rate" not in v.path]
    assert_same_arrays(arrays(restored_state), arrays(original_state))  # moments, iterations
    assert iterations_of(restored) == 3


def test_restore_applies_mapped_hyperparameters(make_job: Job, tmp_path: Path) -> None:
    parent, _ = trained_parent(make_job, tmp_path, b1=0.9)
    child = make_job("child", {"learning_rate": 0.01, "b1": 0.8, "wd": 1e-3}, parent.results)
    model = make_model(0.01, seed=1)
    mapping = {"b1": "beta_1", "wd": "weight_decay"}
    begin(SchedyCallback(child, "val_accuracy", optimizer_hyperparameters=mapping), model)
    assert model.optimizer.beta_1 == 0.8
    assert model.optimizer.weight_decay == 1e-3
    assert lr_of(model) == pytest.approx(0.01)


def test_a_hyperparameter_the_optimizer_lacks_is_refused(make_job: Job) -> None:
    callback = SchedyCallback(
        make_job("j", {"momentum": 0.5}),
        "val_accuracy",
        optimizer_hyperparameters={"momentum": "momentum"},
    )
    with pytest.raises(ValueError, match=r"Adam has no hyperparameter 'momentum'.*'beta_1'"):
        begin(callback, make_model())


def test_a_learning_rate_schedule_owns_the_rate(make_job: Job, tmp_path: Path) -> None:
    def schedule(initial: float) -> Any:
        return keras.optimizers.schedules.ExponentialDecay(initial, decay_steps=1, decay_rate=0.5)

    parent = make_job("parent", {"learning_rate": 0.01})
    with pytest.raises(ValueError, match=r"LearningRateSchedule.*'learning_rate': None"):
        begin(SchedyCallback(parent, "val_accuracy"), make_model(schedule(0.01)))

    mapping = {"learning_rate": None}
    callback = SchedyCallback(
        parent, "val_accuracy", checkpoint_dir=tmp_path, optimizer_hyperparameters=mapping
    )
    train(make_model(schedule(0.01)), callbacks=[callback])  # 3 optimizer steps
    child = make_job("child", {"learning_rate": 0.02}, results=parent.results)
    model = make_model(schedule(0.02), seed=1)  # built from the perturbed value
    begin(SchedyCallback(child, "val_accuracy", optimizer_hyperparameters=mapping), model)
    assert lr_of(model) == pytest.approx(0.02 * 0.5**3)  # the schedule goes on at step 3


def test_restore_names_the_missing_checkpoint(make_job: Job, tmp_path: Path) -> None:
    job = make_job("orphan", results={"model_path": str(tmp_path / "gone.weights.h5")})
    with pytest.raises(FileNotFoundError, match=r"job orphan continues from checkpoint .*gone"):
        begin(SchedyCallback(job, "val_accuracy"), make_model())


@pytest.mark.filterwarnings("ignore:Skipping variable loading for optimizer")
def test_restore_refuses_a_checkpoint_of_another_optimizer(make_job: Job, tmp_path: Path) -> None:
    parent, _ = trained_parent(make_job, tmp_path)  # Adam
    child = make_job("child", {"learning_rate": 0.01}, results=parent.results)
    with pytest.raises(ValueError, match="state was not loaded"):
        begin(SchedyCallback(child, "val_accuracy"), make_model(optimizer="sgd"))


def test_round_trip_through_an_fsspec_url(make_job: Job) -> None:
    pytest.importorskip("fsspec")
    folder = f"memory://schedy-keras-{uuid.uuid4().hex}/ckpt"
    parent = make_job("remote", {"learning_rate": 0.01})
    model = make_model()
    train(model, callbacks=[SchedyCallback(parent, "val_accuracy", checkpoint_dir=folder)])
    assert parent.results["model_path"] == f"{folder}/remote.weights.h5"

    child = make_job("next", {"learning_rate": 0.01}, results=parent.results)
    restored = make_model(seed=3)
    callback = begin(SchedyCallback(child, "val_accuracy", checkpoint_dir=folder), restored)
    assert callback.start_epoch == 1
    assert_same_arrays(arrays(restored.weights), arrays(model.weights))


# -- real fits ---------------------------------------------------------------
class Probe(keras.callbacks.Callback):  # type: ignore[misc]
    """Listed after SchedyCallback: sees the model right after the restore, and during training."""

    def __init__(self) -> None:
        super().__init__()
        self.weights_at_start: list[Any] = []
        self.iterations_at_start = -1
        self.learning_rates: set[float] = set()

    def on_train_begin(self, logs: Any = None) -> None:
        self.weights_at_start = arrays(self.model.weights)
        self.iterations_at_start = iterations_of(self.model)

    def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
        self.learning_rates.add(lr_of(self.model))


def test_two_jobs_train_exactly_like_one_uninterrupted_fit(make_job: Job, tmp_path: Path) -> None:
    reference = make_model()
    train(reference, epochs=2)

    first = make_job("first", {"learning_rate": 0.01})
    model = make_model()
    history = train(
        model, epochs=50, callbacks=[SchedyCallback(first, "val_accuracy", checkpoint_dir=tmp_path)]
    )
    assert len(history.epoch) == 1  # stopped after epochs_per_job, not fit's epochs

    second = make_job("second", {"learning_rate": 0.01}, results=first.results)
    model = make_model(seed=42)
    train(
        model,
        epochs=50,
        callbacks=[SchedyCallback(second, "val_accuracy", checkpoint_dir=tmp_path)],
    )

    # Adam's bias correction reads `iterations`: equal weights need the whole optimizer state.
    assert_same_arrays(arrays(model.weights), arrays(reference.weights))
    assert iterations_of(model) == iterations_of(reference) == 6
    assert second.results["epoch"] == 2
    assert second.results["history"]["epoch"] == [1, 2]
    assert second.results["history"]["step"] == [3, 6]


def test_the_same_job_fit_twice_keeps_one_budget(make_job: Job, tmp_path: Path) -> None:
    job = make_job("j", {"learning_rate": 0.01})
    callback = SchedyCallback(job, "val_accuracy", epochs_per_job=3, checkpoint_dir=tmp_path)
    model = make_model()
    train(model, epochs=2, callbacks=[callback])  # interrupted after 2 of its 3 epochs
    model = make_model(seed=5)  # e.g. the worker restarted the fit
    history = train(model, epochs=1000, callbacks=[callback])
    assert callback.start_epoch == 0  # the budget started with the first fit
    assert len(history.epoch) == 1
    assert job.results["history"]["epoch"] == [1, 2, 3]
    assert iterations_of(model) == 9


def test_population_based_training_end_to_end(tmp_path: Path) -> None:
    db = schedy.SchedyDB(f"sqlite:///{tmp_path}/s.db")
    db.add_experiment(
        schedy.PopulationBasedTraining(
            "keras",
            schedy.pbt.MINIMIZE,
            "val_loss",
            exploit=schedy.pbt.Truncate(0.34),
            explore={"learning_rate": schedy.pbt.Perturb(0.5, 0.6)},
            population_size=3,
            seed=0,
        )
    )
    experiment = db.get_experiment("keras")
    for lr in (1e-6, 0.05, 0.01):  # a member that barely learns, a fast one, a slow one
        experiment.add_job({"learning_rate": lr})
    folder = tmp_path / "ckpt"
    final: dict[str, tuple[list[Any], int]] = {}  # job id -> weights and iterations at its end
    probes: dict[str, Probe] = {}
    for _ in range(6):
        with experiment.next_job(timeout=0) as job:
            model = make_model(job.hyperparameters["learning_rate"], seed=0)
            probes[job.id] = probe = Probe()
            callback = SchedyCallback(job, "val_loss", checkpoint_dir=folder)
            train(model, epochs=1000, callbacks=[callback, probe])
            final[job.id] = (arrays(model.weights), iterations_of(model))
    jobs = list(experiment.all_jobs())
    assert [job.status for job in jobs] == [schedy.Job.DONE] * 6

    exploits = continuations = 0
    for job in jobs:
        probe = probes[job.id]
        lr = job.hyperparameters["learning_rate"]
        # The optimizer trained with the job's (possibly perturbed) rate, not the checkpoint's.
        assert [*probe.learning_rates] == [pytest.approx(lr)]
        if job.parent_id is None:
            assert job.results["history"]["epoch"] == [1]
            continue
        parent = experiment.get_job(job.parent_id)
        weights, iterations = final[parent.id]
        # Started from the parent's weights and optimizer state, epochs counted on.
        assert_same_arrays(probe.weights_at_start, weights)
        assert probe.iterations_at_start == iterations
        assert job.results["epoch"] == parent.results["epoch"] + 1
        assert job.results["history"]["epoch"] == [
            *parent.results["history"]["epoch"],
            job.results["epoch"],
        ]
        assert job.results["history"]["step"][-1] == iterations + 3
        if job.exploited_from is not None:
            exploits += 1
            assert 0.5 * parent.hyperparameters["learning_rate"] <= lr
            assert lr <= 0.6 * parent.hyperparameters["learning_rate"]
        else:
            continuations += 1
            assert lr == parent.hyperparameters["learning_rate"]
    assert exploits and continuations

    # Checkpoints left: those a job may continue from, the best job's, and the
    # last member's previous head (still its head when the last job pruned).
    heads = {member.head_id for member in experiment.population()}
    best = {job.id for job in experiment.best_jobs(1)}
    previous = [job.id for job in jobs[:-1] if job.member == jobs[-1].member][-1]
    left = {name.split(".", 1)[0] for name in os.listdir(folder)}
    assert heads <= left <= heads | best | {previous}
    assert jobs[0].id not in left  # the member that barely learned was replaced


def test_restore_reapplies_settings_named_like_the_optimizers(
    make_job: Job, tmp_path: Path
) -> None:
    parent, _ = trained_parent(make_job, tmp_path, b1=0.9)
    child = make_job(
        "child", {"learning_rate": 0.01, "beta_1": 0.7, "weight_decay": 2e-3}, parent.results
    )
    model = make_model(0.01, seed=1)
    begin(SchedyCallback(child, "val_accuracy"), model)  # no mapping needed
    assert model.optimizer.beta_1 == 0.7
    assert model.optimizer.weight_decay == 2e-3
    assert lr_of(model) == pytest.approx(0.01)
