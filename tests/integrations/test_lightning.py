"""SchedyCallback: hooks driven with stub trainers, then true fits of a tiny model.

The end-to-end tests run whole PBT lineages in-process against a real SQLite
store and check what the callback promises: counters continue across jobs,
an exploited job starts from its source's weights, the perturbed learning
rate is the one the optimizer uses (and the scheduler keeps it), each job
trains exactly ``epochs_per_job`` epochs, and the results hold the monitor,
history, epoch, step and model_path.
"""

from __future__ import annotations

import importlib
import os
import pickle
from collections.abc import Callable
from copy import deepcopy
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")


def _first_lightning() -> ModuleType:
    for name in ("lightning.pytorch", "pytorch_lightning"):
        try:
            return importlib.import_module(name)
        except ImportError:
            continue
    pytest.skip("neither lightning nor pytorch_lightning is installed", allow_module_level=True)


pl = _first_lightning()

import schedy  # noqa: E402
from schedy.integrations import MissingMetricError  # noqa: E402
from schedy.integrations.lightning import SchedyCallback  # noqa: E402

Job = Callable[..., Any]

# Lightning 2.6 on torch 2.13 warns about torch's own pytree API at every fit.
pytestmark = pytest.mark.filterwarnings("ignore:.*treespec.*:FutureWarning")


# -- a tiny model, for either Lightning package ------------------------------
def _data(seed: int, size: int) -> Any:
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(size, 4, generator=generator)
    noise = 0.3 * torch.randn(size, generator=generator)
    targets = (inputs[:, 0] + inputs[:, 1] + noise > 0).long()
    return torch.utils.data.TensorDataset(inputs, targets)


TRAIN, VALID = _data(0, 64), _data(1, 32)


def loaders() -> tuple[Any, Any]:
    return (
        torch.utils.data.DataLoader(TRAIN, batch_size=16),
        torch.utils.data.DataLoader(VALID, batch_size=32),
    )


_classes: dict[str, tuple[type, type]] = {}


def classes(package: ModuleType) -> tuple[type, type]:
    """``(LitNet, Probe)`` built on ``package``'s LightningModule and Callback."""
    if package.__name__ in _classes:
        return _classes[package.__name__]

    class LitNet(package.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(
            self, learning_rate: float = 0.1, step_size: int = 1000, **unused: Any
        ) -> None:
            super().__init__()
            self.learning_rate = learning_rate
            self.step_size = step_size
            self.net = torch.nn.Sequential(
                torch.nn.Linear(4, 8), torch.nn.Tanh(), torch.nn.Linear(8, 2)
            )

        def training_step(self, batch: Any, index: int) -> Any:
            inputs, targets = batch
            loss = torch.nn.functional.cross_entropy(self.net(inputs), targets)
            self.log("train_loss", loss, on_step=False, on_epoch=True)
            return loss

        def on_train_epoch_end(self) -> None:
            # Logged after callbacks' on_train_epoch_end: must still be reported.
            self.log("epoch_marker", float(self.current_epoch))

        def validation_step(self, batch: Any, index: int) -> None:
            inputs, targets = batch
            accuracy = (self.net(inputs).argmax(1) == targets).float().mean()
            self.log("val_acc", accuracy)

        def configure_optimizers(self) -> Any:
            optimizer = torch.optim.SGD(self.parameters(), lr=self.learning_rate, momentum=0.9)
            scheduler = torch.optim.lr_scheduler.StepLR(optimizer, self.step_size, gamma=0.5)
            return [optimizer], [scheduler]

    class Probe(package.Callback):  # type: ignore[misc, name-defined]
        """Records what training really saw: counters, weights and learning rates."""

        def __init__(self) -> None:
            self.epochs = 0
            self.lrs: list[float] = []
            self.lr_per_epoch: list[float] = []

        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            self.start_epoch = trainer.current_epoch
            self.start_step = trainer.global_step
            self.start_weights = {k: v.clone() for k, v in pl_module.state_dict().items()}
            self.start_lr = trainer.optimizers[0].param_groups[0]["lr"]
            self.start_base_lrs = list(trainer.lr_scheduler_configs[0].scheduler.base_lrs)

        def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
            self.epochs += 1
            self.lr_per_epoch.append(trainer.optimizers[0].param_groups[0]["lr"])

        def on_train_batch_start(self, trainer: Any, pl_module: Any, *args: Any) -> None:
            self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])

    _classes[package.__name__] = (LitNet, Probe)
    return LitNet, Probe


def fit(
    job: Any,
    checkpoint_dir: Path | str,
    *,
    package: ModuleType = pl,
    monitor: str = "val_acc",
    ckpt_path: str | None = None,
    callback_options: dict[str, Any] | None = None,
    extra_callbacks: tuple[Any, ...] = (),
    **trainer_options: Any,
) -> tuple[Any, Any, Any]:
    """One worker iteration, as a user writes it; returns (trainer, probe, model)."""
    lit_net, probe_class = classes(package)
    torch.manual_seed(1234)  # the same fresh weights every time: restores must overwrite them
    model = lit_net(**job.hyperparameters)
    probe = probe_class()
    callback = SchedyCallback(
        job, monitor=monitor, checkpoint_dir=checkpoint_dir, **(callback_options or {})
    )
    options: dict[str, Any] = {
        "max_epochs": 1000,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "logger": False,
        "enable_checkpointing": False,
        "accelerator": "cpu",
        "devices": 1,
        "num_sanity_val_steps": 1,
    }
    options.update(trainer_options)
    trainer = package.Trainer(callbacks=[callback, probe, *extra_callbacks], **options)
    train, valid = loaders()
    trainer.fit(model, train, valid, ckpt_path=ckpt_path)
    return trainer, probe, model


def saved_weights(path: str) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=False)["state_dict"]  # type: ignore[no-any-return]


def assert_same_tensors(left: dict[str, Any], right: dict[str, Any]) -> None:
    assert left.keys() == right.keys()
    for key in left:
        assert torch.equal(left[key], right[key]), key


# -- construction ------------------------------------------------------------
@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"monitor": ""}, "monitor"),
        ({"monitor": "epoch"}, "schedy writes itself"),
        ({"monitor": "val_acc", "epochs_per_job": 0}, "epochs_per_job"),
        ({"monitor": "val_acc", "epochs_per_job": True}, "epochs_per_job"),
        (
            {"monitor": "val_acc", "optimizer_hyperparameters": {"momentun": "momentum"}},
            "'momentun'",
        ),
    ],
)
def test_init_validates_arguments(make_job: Job, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SchedyCallback(make_job("j", {"learning_rate": 0.1}), **options)


def test_checkpoint_path_is_named_after_the_job(
    make_job: Job, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    callback = SchedyCallback(make_job("abc123"), "val_acc", checkpoint_dir=tmp_path)
    assert callback.checkpoint_path == str(tmp_path / "abc123.ckpt")
    monkeypatch.setenv("SCHEDY_CHECKPOINT_DIR", "s3://bucket/pbt")
    assert SchedyCallback(make_job("abc123"), "val_acc").checkpoint_path == (
        "s3://bucket/pbt/abc123.ckpt"
    )


def test_is_a_callback_of_every_imported_lightning(make_job: Job) -> None:
    callback = SchedyCallback(make_job("j"), "val_acc")
    assert isinstance(callback, SchedyCallback)
    for name in ("lightning.pytorch", "pytorch_lightning"):
        module = importlib.import_module(name) if _installed(name) else None
        if module is not None:
            assert isinstance(SchedyCallback(make_job("j"), "val_acc"), module.Callback), name
    assert callback.state_key == "SchedyCallback"


class MySchedyCallback(SchedyCallback):
    """A user's subclass."""


@pytest.mark.parametrize("cls", [SchedyCallback, MySchedyCallback])
def test_pickles_and_copies(make_job: Job, cls: type[SchedyCallback]) -> None:
    callback = cls(make_job("j", {"lr": 0.1}), "val_acc", epochs_per_job=3)
    for copy in (pickle.loads(pickle.dumps(callback)), deepcopy(callback)):
        assert isinstance(copy, cls)
        assert isinstance(copy, pl.Callback)
        assert (copy.job.id, copy.epochs_per_job) == ("j", 3)


def _installed(name: str) -> bool:
    try:
        importlib.import_module(name)
    except ImportError:
        return False
    return True


# -- hooks with stub trainers ------------------------------------------------
#: Hooks under test do not touch the LightningModule.
NO_MODULE: Any = None


def stub_trainer(**attributes: Any) -> Any:
    """The public Trainer attributes the callback reads, as plain values."""
    defaults: dict[str, Any] = {
        "current_epoch": 0,
        "global_step": 0,
        "should_stop": False,
        "sanity_checking": False,
        "is_global_zero": True,
        "callback_metrics": {},
        "ckpt_path": None,
        "optimizers": [],
        "lr_scheduler_configs": [],
        "received_sigterm": False,
        "world_size": 1,
    }
    defaults.update(attributes)
    return SimpleNamespace(**defaults)


@pytest.mark.parametrize(
    ("start_epoch", "per_job", "ended_epochs", "stops_after"),
    [
        (0, 1, [0], 0),
        (0, 3, [0, 1, 2], 2),
        (7, 2, [7, 8], 8),  # resumed at epoch 7: two more, whatever max_epochs says
    ],
)
def test_stops_the_trainer_after_the_budget(
    make_job: Job, start_epoch: int, per_job: int, ended_epochs: list[int], stops_after: int
) -> None:
    callback = SchedyCallback(make_job("j"), "val_acc", epochs_per_job=per_job)
    trainer = stub_trainer(current_epoch=start_epoch)
    callback.on_train_start(trainer, NO_MODULE)
    assert callback.start_epoch == start_epoch
    for epoch in ended_epochs:
        trainer.current_epoch = epoch
        callback.on_train_epoch_end(trainer, NO_MODULE)
        assert trainer.should_stop is (epoch == stops_after)
    assert callback.stopping_reason and f"epochs_per_job={per_job}" in callback.stopping_reason


def test_reports_each_epoch_after_the_module_logged(make_job: Job) -> None:
    job = make_job("j", results={"model_path": "/old/parent.ckpt"})
    callback = SchedyCallback(job, "val_acc")
    trainer = stub_trainer(current_epoch=3, global_step=30)
    callback.on_train_start(trainer, NO_MODULE)
    callback.on_train_epoch_end(trainer, NO_MODULE)
    assert job.pushed == []  # LightningModule.on_train_epoch_end has not run yet
    trainer.callback_metrics = {"val_acc": torch.tensor(0.75), "loss": torch.tensor(0.5)}
    callback.on_train_epoch_start(trainer, NO_MODULE)
    assert job.results["val_acc"] == 0.75
    assert type(job.results["val_acc"]) is float
    assert (job.results["epoch"], job.results["step"]) == (4, 30)
    assert job.results["history"] == {"val_acc": [0.75], "loss": [0.5], "epoch": [4], "step": [30]}
    assert len(job.pushed) == 1
    callback.on_train_epoch_start(trainer, NO_MODULE)
    assert len(job.pushed) == 1  # nothing new to report


def test_metrics_named_like_schedy_results_are_set_aside(make_job: Job) -> None:
    job = make_job("j")
    callback = SchedyCallback(job, "val_acc")
    trainer = stub_trainer(current_epoch=0, global_step=5)
    trainer.callback_metrics = {"val_acc": 0.5, "step": torch.tensor(99.0)}
    callback.on_train_start(trainer, NO_MODULE)
    callback.on_train_epoch_end(trainer, NO_MODULE)
    with pytest.warns(UserWarning, match=r"\['step'\] are not reported"):
        callback.on_train_epoch_start(trainer, NO_MODULE)
    assert (job.results["val_acc"], job.results["step"]) == (0.5, 5)


def test_other_ranks_do_not_report(make_job: Job) -> None:
    job = make_job("j")
    callback = SchedyCallback(job, "val_acc")
    trainer = stub_trainer(is_global_zero=False, callback_metrics={"val_acc": 0.5})
    callback.on_train_start(trainer, NO_MODULE)
    callback.on_train_epoch_end(trainer, NO_MODULE)
    callback.on_train_epoch_start(trainer, NO_MODULE)
    assert job.results == {}
    assert job.pushed == []


def test_on_train_end_saves_and_records_the_checkpoint(make_job: Job, tmp_path: Path) -> None:
    job = make_job("j7", results={"model_path": "/old/parent.ckpt"})
    callback = SchedyCallback(job, "val_acc", checkpoint_dir=tmp_path)
    saved: list[str] = []
    trainer = stub_trainer(
        current_epoch=0,
        callback_metrics={"val_acc": 0.5},
        save_checkpoint=lambda path, weights_only=None: saved.append(path),
    )
    callback.on_train_start(trainer, NO_MODULE)
    callback.on_train_epoch_end(trainer, NO_MODULE)
    callback.on_train_end(trainer, NO_MODULE)
    assert saved == [str(tmp_path / "j7.ckpt")]
    assert job.results["model_path"] == str(tmp_path / "j7.ckpt")
    assert job.pushed[-1]["model_path"] == str(tmp_path / "j7.ckpt")
    assert job.results["epoch"] == 1


def test_missing_monitor_waits_for_validation_then_lists_metrics(make_job: Job) -> None:
    callback = SchedyCallback(make_job("j"), "val_accuracy")
    trainer = stub_trainer(callback_metrics={"val_acc": 0.5, "train_loss": 0.1})
    callback.on_train_start(trainer, NO_MODULE)
    # The sanity check's validation does not count: it is skipped.
    trainer.sanity_checking = True
    callback.on_validation_end(trainer, NO_MODULE)
    trainer.sanity_checking = False
    callback.on_train_epoch_end(trainer, NO_MODULE)
    callback.on_train_epoch_start(trainer, NO_MODULE)  # no validation yet: reported without it
    assert callback.job.results["history"]["val_acc"] == [0.5]
    callback.on_validation_end(trainer, NO_MODULE)
    callback.on_train_epoch_end(trainer, NO_MODULE)
    with pytest.raises(MissingMetricError, match=r"'val_accuracy'.*'train_loss', 'val_acc'"):
        callback.on_train_epoch_start(trainer, NO_MODULE)


def test_missing_monitor_is_an_error_at_the_end_of_the_job(make_job: Job) -> None:
    callback = SchedyCallback(make_job("j"), "val_acc")
    trainer = stub_trainer(callback_metrics={"train_loss": 0.1})
    callback.on_train_start(trainer, NO_MODULE)
    callback.on_train_epoch_end(trainer, NO_MODULE)
    with pytest.raises(MissingMetricError, match="No validation ran in this job"):
        callback.on_train_end(trainer, NO_MODULE)


def test_state_dict_round_trip_resumes_the_same_jobs_budget(make_job: Job) -> None:
    job = make_job("j", {"learning_rate": 0.1})
    callback = SchedyCallback(job, "val_acc", epochs_per_job=4)
    callback.on_train_start(stub_trainer(current_epoch=10), NO_MODULE)
    state = callback.state_dict()
    assert state["job_id"] == "j"
    assert state["hyperparameters"] == {"learning_rate": 0.1}
    assert state["start_epoch"] == 10

    # The same job resumed mid-budget (e.g. fit(ckpt_path=...) after a crash).
    again = SchedyCallback(job, "val_acc", epochs_per_job=4)
    again.load_state_dict(state)
    again.on_train_start(stub_trainer(current_epoch=12, ckpt_path="x.ckpt"), NO_MODULE)
    assert again.start_epoch == 10
    # Another job (a child) starts its own budget where the checkpoint left off.
    child = SchedyCallback(make_job("k", {"learning_rate": 0.1}), "val_acc")
    child.load_state_dict(state)
    child.on_train_start(stub_trainer(current_epoch=12, ckpt_path="x.ckpt"), NO_MODULE)
    assert child.start_epoch == 12


# -- true fits -----------------------------------------------------------------
def test_pbt_lineages_end_to_end(tmp_path: Path) -> None:
    db = schedy.SchedyDB(f"sqlite:///{tmp_path}/s.db")
    db.add_experiment(
        schedy.PopulationBasedTraining(
            "lightning",
            schedy.pbt.MAXIMIZE,
            "val_acc",
            exploit=schedy.pbt.Truncate(0.5),
            explore={"learning_rate": schedy.pbt.Perturb(0.5, 2.0)},
            initial_distributions={"learning_rate": schedy.random.LogUniform(1e-4, 1.0)},
            population_size=2,
            seed=3,
        )
    )
    experiment = db.get_experiment("lightning")
    checkpoints = tmp_path / "ckpt"
    exploited = continued = 0
    for _ in range(6):
        with experiment.next_job() as job:
            inherited = dict(job.results)
            trainer, probe, _ = fit(job, checkpoints, callback_options={"epochs_per_job": 2})
        stored = experiment.get_job(job.id)
        assert stored.status == schedy.Job.DONE
        results = stored.results
        learning_rate = job.hyperparameters["learning_rate"]

        # (d) exactly epochs_per_job epochs, whatever max_epochs.
        assert probe.epochs == 2
        # (a) counters continue along the lineage.
        assert probe.start_epoch == inherited.get("epoch", 0)
        assert probe.start_step == inherited.get("step", 0)
        assert results["epoch"] == probe.start_epoch + 2 == trainer.current_epoch
        assert results["step"] == trainer.global_step > probe.start_step
        # (b) the job started from the checkpoint its results named.
        if "model_path" in inherited:
            assert_same_tensors(probe.start_weights, saved_weights(inherited["model_path"]))
        # (c) the optimizer used the job's (perturbed) rate throughout: no snap back.
        assert probe.lrs and all(lr == pytest.approx(learning_rate) for lr in probe.lrs)
        assert probe.start_base_lrs == [pytest.approx(learning_rate)]
        # (e) results: monitor, history (over the whole lineage), counters, checkpoint.
        assert 0.0 <= results["val_acc"] <= 1.0
        history = results["history"]
        assert history["epoch"] == list(range(1, results["epoch"] + 1))
        assert len(history["val_acc"]) == len(history["step"]) == results["epoch"]
        assert history["epoch_marker"][-2:] == [results["epoch"] - 2, results["epoch"] - 1]
        assert results["model_path"] == str(checkpoints / f"{job.id}.ckpt")
        assert os.path.exists(results["model_path"])

        if job.exploited_from is not None:
            source = experiment.get_job(job.exploited_from)
            assert inherited["model_path"] == source.results["model_path"]
            assert learning_rate != source.hyperparameters["learning_rate"]  # explored
            exploited += 1
        elif "model_path" in inherited:
            continued += 1
    assert exploited and continued, (exploited, continued)
    # Pruning (keep_top_k=1): member heads, the best job, and at most the parent
    # of the job that finished last remain of the six checkpoints written.
    assert len(list(checkpoints.glob("*.ckpt"))) <= 2 + 1 + 1


def test_continuation_equals_uninterrupted_training(make_job: Job, tmp_path: Path) -> None:
    # Halving every 3 epochs: the scheduler's own counter must be restored too.
    hyperparameters = {"learning_rate": 0.2, "step_size": 3}
    reference = make_job("ref", hyperparameters)
    _, _, uninterrupted = fit(reference, tmp_path, callback_options={"epochs_per_job": 4})

    first = make_job("first", hyperparameters)
    fit(first, tmp_path, callback_options={"epochs_per_job": 2})
    second = make_job("second", hyperparameters, results=first.results)
    trainer, probe, resumed = fit(second, tmp_path, callback_options={"epochs_per_job": 2})

    assert (probe.start_epoch, trainer.current_epoch) == (2, 4)
    assert probe.lr_per_epoch == [pytest.approx(0.2), pytest.approx(0.1)]  # decay went on
    assert_same_tensors(resumed.state_dict(), uninterrupted.state_dict())
    assert second.results["history"]["val_acc"] == reference.results["history"]["val_acc"]


@pytest.mark.parametrize("through_ckpt_path", [False, True])
def test_perturbed_rate_is_a_new_base_for_the_schedule(
    make_job: Job, tmp_path: Path, through_ckpt_path: bool
) -> None:
    parent = make_job("parent", {"learning_rate": 0.1, "step_size": 1})
    fit(parent, tmp_path, callback_options={"epochs_per_job": 2})  # lr 0.1 -> 0.05 -> 0.025

    child = make_job("child", {"learning_rate": 0.2, "step_size": 1}, results=parent.results)
    ckpt_path = parent.results["model_path"] if through_ckpt_path else None
    _, probe, _ = fit(child, tmp_path, ckpt_path=ckpt_path, callback_options={"epochs_per_job": 2})
    # Twice the rate at the same point of the schedule, and the schedule goes on from there.
    assert probe.start_lr == pytest.approx(0.05)
    assert probe.start_base_lrs == [pytest.approx(0.2)]
    assert probe.lr_per_epoch == [pytest.approx(0.05), pytest.approx(0.025)]
    assert child.results["epoch"] == 4


def test_more_hyperparameters_through_a_mapping(make_job: Job, tmp_path: Path) -> None:
    parent = make_job("parent", {"learning_rate": 0.1, "mom": 0.9})
    options = {"optimizer_hyperparameters": {"mom": "momentum"}}
    fit(parent, tmp_path, callback_options=options)
    child = make_job("child", {"learning_rate": 0.1, "mom": 0.5}, results=parent.results)
    trainer, _, _ = fit(child, tmp_path, callback_options=options)
    assert trainer.optimizers[0].param_groups[0]["momentum"] == 0.5


def test_validation_every_other_epoch(make_job: Job, tmp_path: Path) -> None:
    job = make_job("j")
    fit(job, tmp_path, callback_options={"epochs_per_job": 2}, check_val_every_n_epoch=2)
    history = job.results["history"]
    assert history["epoch"] == [1, 2]
    assert history["val_acc"][0] is None and history["val_acc"][1] is not None


def test_missing_monitor_end_to_end(make_job: Job, tmp_path: Path) -> None:
    job = make_job("j")
    with pytest.raises(MissingMetricError) as caught:
        fit(job, tmp_path, monitor="val_accuracy")
    assert "'epoch_marker', 'train_loss', 'val_acc'" in str(caught.value)
    assert not os.path.exists(tmp_path / "j.ckpt")  # a failed job leaves no checkpoint to continue


def test_other_callbacks_states_come_back_too(make_job: Job, tmp_path: Path) -> None:
    first = make_job("first", {"learning_rate": 0.1})
    stopper = pl.callbacks.EarlyStopping(monitor="val_acc", mode="max", patience=100)
    fit(first, tmp_path, extra_callbacks=(stopper,), callback_options={"epochs_per_job": 2})
    assert stopper.best_score > 0

    second = make_job("second", {"learning_rate": 0.1}, results=first.results)
    resumed = pl.callbacks.EarlyStopping(monitor="val_acc", mode="max", patience=100)
    seen: dict[str, Any] = {}

    class Spy(pl.Callback):  # type: ignore[misc, name-defined]
        def on_train_start(self, trainer: Any, pl_module: Any) -> None:
            seen["best_score"] = float(resumed.best_score)

    fit(second, tmp_path, extra_callbacks=(resumed, Spy()))
    assert seen["best_score"] == float(stopper.best_score)  # patience counts along the lineage


def test_warns_when_max_epochs_leaves_nothing_to_train(make_job: Job, tmp_path: Path) -> None:
    first = make_job("first", {"learning_rate": 0.1})
    fit(first, tmp_path)
    second = make_job("second", {"learning_rate": 0.1}, results=first.results)
    with pytest.warns(
        UserWarning, match=r"resumed at epoch 1, which reaches Trainer\(max_epochs=1\)"
    ):
        _, probe, _ = fit(second, tmp_path, max_epochs=1)
    assert probe.epochs == 0
    assert second.results["model_path"] == first.results["model_path"]  # nothing new to point at


def test_restore_names_the_missing_checkpoint(make_job: Job, tmp_path: Path) -> None:
    job = make_job(
        "orphan", {"learning_rate": 0.1}, results={"model_path": str(tmp_path / "gone.ckpt")}
    )
    with pytest.raises(
        FileNotFoundError, match=r"job orphan continues from checkpoint .*gone\.ckpt"
    ):
        fit(job, tmp_path)


def test_checkpoints_at_an_fsspec_url(make_job: Job) -> None:
    pytest.importorskip("fsspec")
    folder = "memory://schedy-tests/lightning"
    first = make_job("first", {"learning_rate": 0.1})
    fit(first, folder)
    assert first.results["model_path"] == f"{folder}/first.ckpt"
    second = make_job("second", {"learning_rate": 0.1}, results=first.results)
    _, probe, _ = fit(second, folder)
    assert (probe.start_epoch, second.results["epoch"]) == (1, 2)
    assert second.results["model_path"] == f"{folder}/second.ckpt"


def test_pytorch_lightning_trainer(make_job: Job, tmp_path: Path) -> None:
    package = pytest.importorskip("pytorch_lightning")
    first = make_job("first", {"learning_rate": 0.1})
    fit(first, tmp_path, package=package)
    second = make_job("second", {"learning_rate": 0.3}, results=first.results)
    trainer, probe, _ = fit(second, tmp_path, package=package)
    assert isinstance(trainer.callbacks[0], package.Callback)
    assert (probe.start_epoch, second.results["epoch"]) == (1, 2)
    assert probe.start_lr == pytest.approx(0.3)
    assert_same_tensors(probe.start_weights, saved_weights(first.results["model_path"]))


def test_a_perturbed_optimizer_setting_is_reapplied_without_a_mapping(
    make_job: Job, tmp_path: Path
) -> None:
    # Exploring momentum (or weight_decay…) showed perturbed values in the
    # schedule while the restored optimizer kept the parent's: the defect.
    parent = make_job("parent", {"learning_rate": 0.1, "momentum": 0.9})
    fit(parent, tmp_path)
    child = make_job("child", {"learning_rate": 0.1, "momentum": 0.5}, results=parent.results)
    trainer, _, _ = fit(child, tmp_path)
    assert trainer.optimizers[0].param_groups[0]["momentum"] == 0.5
    # A name mapped to None is left as the optimizer has it.
    grandchild = make_job(
        "grandchild", {"learning_rate": 0.1, "momentum": 0.1}, results=child.results
    )
    options = {"optimizer_hyperparameters": {"momentum": None}}
    trainer, _, _ = fit(grandchild, tmp_path, callback_options=options)
    assert trainer.optimizers[0].param_groups[0]["momentum"] == 0.5


# -- Lightning's own logs and checkpoints --------------------------------------
def _pbt(tmp_path: Path, name: str = "lightning", population: int = 2) -> Any:
    db = schedy.SchedyDB(f"sqlite:///{tmp_path}/s.db")
    db.add_experiment(
        schedy.PopulationBasedTraining(
            name,
            schedy.pbt.MAXIMIZE,
            "val_acc",
            exploit=schedy.pbt.Truncate(0.5),
            explore={"learning_rate": schedy.pbt.Perturb(0.5, 2.0)},
            initial_distributions={"learning_rate": schedy.random.LogUniform(1e-3, 1.0)},
            population_size=population,
            seed=3,
        )
    )
    return db.get_experiment(name)


def _files(root: Path) -> list[str]:
    return sorted(str(path.relative_to(root)) for path in root.rglob("*") if path.is_file())


def _tensorboard_steps(folder: Path, tag: str) -> list[int]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return [event.step for event in accumulator.Scalars(tag)]


def test_default_trainer_logs_per_job_and_keeps_no_checkpoint_of_its_own(
    tmp_path: Path,
) -> None:
    # Default Trainer settings wrote lightning_logs/version_N/checkpoints/*.ckpt
    # per job: numbered runs tied to no job, unpruned copies of schedy's checkpoints.
    pytest.importorskip("tensorboard")
    experiment = _pbt(tmp_path)
    root = tmp_path / "root"
    jobs = []
    for _ in range(3):
        with experiment.next_job() as job:
            fit(
                job,
                tmp_path / "ckpt",
                callback_options={"epochs_per_job": 2},
                logger=True,
                enable_checkpointing=True,
                default_root_dir=str(root),
            )
        jobs.append(experiment.get_job(job.id))
    files = _files(root)
    assert not [name for name in files if name.endswith(".ckpt")], files
    assert not [name for name in files if "version_" in name], files
    logs = root / "lightning_logs" / "lightning"
    for job in jobs:
        folder = logs / f"member_{job.member:03d}" / f"job_{job.id}"
        assert list(folder.glob("events.out.tfevents.*")), files
        assert (folder / "hparams.yaml").exists(), files
    assert len({path.parent for path in root.rglob("events.out.tfevents.*")}) == 3, files
    # The step goes on across jobs: the third job's points come after its parent's.
    child = jobs[2]
    parent = next(job for job in jobs if job.id == child.parent_id)
    folder = lambda job: logs / f"member_{job.member:03d}" / f"job_{job.id}"  # noqa: E731
    parent_steps = _tensorboard_steps(folder(parent), "val_acc")
    child_steps = _tensorboard_steps(folder(child), "val_acc")
    # (Lightning logs an epoch's metrics at its last batch: 4 batches per epoch.)
    start = parent.results["step"]
    assert parent_steps == [start - 5, start - 1]
    assert child_steps == [start + 3, start + 7]
    assert child.results["step"] == start + 8


def test_a_configured_checkpoint_and_logger_are_left_alone(make_job: Job, tmp_path: Path) -> None:
    mine = pl.callbacks.ModelCheckpoint(dirpath=tmp_path / "mine", save_top_k=-1)
    logs = pl.loggers.CSVLogger(tmp_path / "csv")
    trainer, _, _ = fit(
        make_job("a", {"learning_rate": 0.1}),
        tmp_path / "ckpt",
        callback_options={"epochs_per_job": 2},
        extra_callbacks=(mine,),
        logger=logs,
        enable_checkpointing=True,
    )
    assert trainer.checkpoint_callback is mine
    assert sorted(path.name for path in (tmp_path / "mine").glob("*.ckpt")) == [
        "epoch=0-step=4.ckpt",
        "epoch=1-step=8.ckpt",
    ]
    assert trainer.loggers == [logs]
    assert (tmp_path / "csv" / "lightning_logs" / "version_0" / "metrics.csv").exists()


def test_a_checkpoint_without_a_folder_writes_into_the_jobs_logs(
    make_job: Job, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")
    mine = pl.callbacks.ModelCheckpoint(monitor="val_acc", mode="max")
    fit(
        make_job("a", {"learning_rate": 0.1}),
        tmp_path / "ckpt",
        extra_callbacks=(mine,),
        logger=True,
        enable_checkpointing=True,
        default_root_dir=str(tmp_path / "root"),
    )
    assert [path.name for path in (tmp_path / "root").rglob("*.ckpt")] == ["epoch=0-step=4.ckpt"]
    assert mine.best_model_path.startswith(str(tmp_path / "root/lightning_logs/job_a/"))


# -- preemption ------------------------------------------------------------------
_PREEMPTED_WORKER = """
import signal, sys, time
import lightning.pytorch as pl
import torch
import schedy
from schedy.jobs import Preempted
from schedy.integrations.lightning import SchedyCallback

BATCHES = 5000
batches = 0


class Net(pl.LightningModule):
    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(4, 1)

    def training_step(self, batch, index):
        global batches
        batches += 1
        if index == 0:
            print("training", flush=True)
        time.sleep(0.001)
        inputs, targets = batch
        loss = torch.nn.functional.mse_loss(self.layer(inputs), targets)
        self.log("loss", loss)
        return loss

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


inputs = torch.randn(BATCHES, 4, generator=torch.Generator().manual_seed(0))
data = torch.utils.data.TensorDataset(inputs, inputs.sum(1, keepdim=True))
experiment = schedy.SchedyDB(sys.argv[1], lease_seconds=600).get_experiment("pbt")
for case in ("schedy's handler", "a handler of the user's"):
    if case != "schedy's handler":
        signal.signal(signal.SIGTERM, lambda signum, frame: None)
    batches = 0
    try:
        with experiment.next_job() as job:
            trainer = pl.Trainer(
                max_epochs=10, logger=False, enable_checkpointing=False,
                enable_progress_bar=False, enable_model_summary=False,
                callbacks=[SchedyCallback(job, "loss", checkpoint_dir=sys.argv[2])],
            )
            trainer.fit(Net(), torch.utils.data.DataLoader(data, batch_size=1))
    except Preempted:
        print("preempted", job.id, batches, flush=True)
"""


@pytest.mark.slow
def test_sigterm_ends_a_lightning_fit_as_preempted(tmp_path: Path) -> None:
    # Lightning stands its own SIGTERM handler in front of schedy's. Behind
    # it schedy's still ends the job at once; and when schedy's is not in the
    # chain (a handler was there before), Lightning alone stopped at the end of
    # the epoch (past a cluster's grace period) and ended the job as a plain crash.
    import signal
    import subprocess
    import sys

    experiment = _pbt(tmp_path, "pbt")
    url = f"sqlite:///{tmp_path}/s.db"
    script = tmp_path / "worker.py"
    script.write_text(_PREEMPTED_WORKER)
    worker = subprocess.Popen(
        [sys.executable, str(script), url, str(tmp_path / "ckpt")],
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={k: v for k, v in os.environ.items() if k != "SCHEDY_URL"},
    )
    assert worker.stdout is not None and worker.stderr is not None
    try:
        ended = []
        for _ in range(2):
            line = worker.stdout.readline()  # the job trains
            assert line == "training\n", line + worker.stderr.read()
            worker.send_signal(signal.SIGTERM)
            line = worker.stdout.readline()
            assert line.startswith("preempted"), line + worker.stderr.read()
            ended.append(line.split())
        assert worker.wait(timeout=60) == 0, worker.stderr.read()
    finally:
        worker.kill()
        worker.wait()
    for _, job_id, batches in ended:
        job = experiment.get_job(job_id)
        assert job.status == schedy.Job.CRASHED
        assert (job.error or "").startswith("preempted"), job.error
        assert int(batches) < 5000  # within the first epoch, not at its end


# -- trackers ----------------------------------------------------------------------
def test_trackers_log_each_job_as_it_ends(tmp_path: Path) -> None:
    # TensorBoard and MLflow live from the callback: one run per member,
    # epochs continuing across its jobs, the hyperparameters as metrics.
    pytest.importorskip("tensorboard")
    mlflow_tracking = pytest.importorskip("mlflow.tracking")
    from schedy.integrations.trackers import MLflow, TensorBoard

    experiment = _pbt(tmp_path, "tracked")
    uri = f"sqlite:///{tmp_path}/mlflow.db"
    jobs = []
    with TensorBoard(tmp_path / "tb") as tensorboard, MLflow(uri) as mlflow:
        for _ in range(3):
            with experiment.next_job() as job:
                fit(
                    job,
                    tmp_path / "ckpt",
                    callback_options={"epochs_per_job": 2, "trackers": [tensorboard, mlflow]},
                )
            jobs.append(experiment.get_job(job.id))
    child = jobs[2]
    parent = next(job for job in jobs if job.id == child.parent_id)
    run = f"member_{child.member:03d}"
    # The child's run holds its two epochs after its parent's (copied on an exploit).
    child_epochs = [child.results["epoch"] - 1, child.results["epoch"]]
    steps = _tensorboard_steps(tmp_path / "tb" / run, "val_acc")
    assert steps[-2:] == child_epochs
    assert _tensorboard_steps(tmp_path / "tb" / run, "hp/learning_rate")[-2:] == child_epochs
    client = mlflow_tracking.MlflowClient(uri)
    (found,) = client.search_runs(
        [client.get_experiment_by_name("tracked").experiment_id],
        filter_string=f"tags.`schedy.run` = '{run}'",
    )
    rates = sorted(
        (metric.step, metric.value)
        for metric in client.get_metric_history(found.info.run_id, "hp/learning_rate")
    )
    assert rates[-2:] == [(epoch, child.hyperparameters["learning_rate"]) for epoch in child_epochs]
    history = [metric.value for metric in client.get_metric_history(found.info.run_id, "val_acc")]
    assert history[-2:] == child.results["history"]["val_acc"][-2:]
    assert parent.results["epoch"] == child.results["epoch"] - 2
