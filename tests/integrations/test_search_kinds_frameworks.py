"""Every search kind beyond vanilla PBT, end to end through the Lightning and Keras callbacks.

One worker loop per run, against a real SQLite store, tiny models on
synthetic data, until the experiment is DONE. What each run checks:

- successive halving / Hyperband: every job trains exactly ``job.budget``
  minus the epochs its checkpoint already has (a promotion resumes at its
  rung below, a Hyperband bracket above 0 starts from scratch at a higher
  rung), from the weights its parent saved;
- PB2 and synchronous PBT: every job trains one generation from its
  parent's weights, and the optimizer uses the job's own learning rate
  throughout -- an explored value (PB2's bandit, PBT's perturbation) is
  really applied, not the one the restored checkpoint carries.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

os.environ.setdefault("KERAS_BACKEND", "torch")
os.environ.setdefault("KERAS_HOME", os.path.join(tempfile.gettempdir(), "schedy-tests-keras"))

np = pytest.importorskip("numpy")

import schedy  # noqa: E402
from schedy.errors import NoJobError  # noqa: E402

pytestmark = [
    # Lightning 2.6 on torch 2.13 warns about torch's own pytree API at every fit;
    # Keras' own conversions under numpy 2. Neither is ours to fix.
    pytest.mark.filterwarnings("ignore:.*treespec.*:FutureWarning"),
    pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning"),
]

LOW, HIGH = 1e-3, 0.5
SPACE = {"learning_rate": schedy.random.LogUniform(LOW, HIGH)}
HALVING = ("successive_halving", "hyperband")


def make_experiment(kind: str) -> schedy.Experiment:
    """A small experiment of ``kind``, ranked by validation accuracy."""
    if kind == "pb2":
        return schedy.PB2(
            kind,
            schedy.pbt.MAXIMIZE,
            "val_acc",
            {"learning_rate": schedy.random.LogUniform(LOW, HIGH)},
            exploit=schedy.pbt.Truncate(0.5),
            population_size=2,
            max_generations=3,
            seed=1,
        )
    if kind == "synchronous_pbt":
        return schedy.PopulationBasedTraining(
            kind,
            schedy.pbt.MAXIMIZE,
            "val_acc",
            exploit=schedy.pbt.Truncate(0.5),
            explore={"learning_rate": schedy.pbt.Perturb(0.5, 2.0)},
            initial_distributions=SPACE,
            population_size=2,
            max_generations=3,
            seed=1,
            synchronous=True,
        )
    if kind == "successive_halving":
        # Rungs 1 and 3 epochs: three configurations, the best promoted.
        return schedy.SuccessiveHalving(
            kind, schedy.pbt.MAXIMIZE, "val_acc", SPACE, 1, 3, 3, max_configurations=3, seed=0
        )
    # Brackets 0 (members 0, 2, 4: rungs 1 then 3) and 1 (members 1, 3: 3 at once).
    return schedy.Hyperband(
        kind, schedy.pbt.MAXIMIZE, "val_acc", SPACE, 1, 3, 3, max_configurations=5, seed=0
    )


@dataclass
class Trace:
    """What training really saw in one job (recorded by a probe callback)."""

    start_epoch: int = -1
    epochs: int = 0
    learning_rates: set[float] = field(default_factory=set)
    start_weights: list[Any] = field(default_factory=list)
    end_weights: list[Any] = field(default_factory=list)


Train = Callable[[Any, Path], Trace]


def run_to_done(kind: str, tmp_path: Path, train: Train) -> None:
    """One worker loop over ``kind`` until nothing is left, then the checks above."""
    db = schedy.SchedyDB(f"sqlite:///{tmp_path}/s.db")
    db.add_experiment(make_experiment(kind))
    experiment = db.get_experiment(kind)
    folder = tmp_path / "ckpt"
    traces: dict[str, Trace] = {}
    inherited: dict[str, int] = {}
    budgets: dict[str, float | None] = {}
    for _ in range(40):
        try:
            job = experiment.next_job(timeout=0)
        except NoJobError:
            break
        with job:
            inherited[job.id] = int(job.results.get("epoch", 0))
            budgets[job.id] = job.budget
            traces[job.id] = train(job, folder)
    else:
        pytest.fail("the experiment never finished")
    assert db.get_experiment(kind).status == schedy.Experiment.DONE

    jobs = list(experiment.all_jobs())
    assert [job.status for job in jobs] == [schedy.Job.DONE] * len(jobs)
    promoted = from_scratch_above_bottom = explored = 0
    for job in jobs:
        trace, start, budget = traces[job.id], inherited[job.id], budgets[job.id]
        # Counters continue along the lineage.
        assert trace.start_epoch == start, job
        if kind in HALVING:
            # The callback follows job.budget: it trains up to it, not epochs_per_job.
            assert budget is not None
            assert trace.epochs == budget - start, (job, budget, start)
            assert job.results["epoch"] == budget
        else:
            assert budget is None
            assert trace.epochs == 1
            assert job.results["epoch"] == start + 1
        # The optimizer trained with the job's own rate throughout.
        rate = job.hyperparameters["learning_rate"]
        assert trace.learning_rates and all(
            lr == pytest.approx(rate, rel=1e-6) for lr in trace.learning_rates
        ), (job, trace.learning_rates)
        assert job.results["history"]["epoch"][-1] == job.results["epoch"]
        if job.parent_id is None:
            assert start == 0
            from_scratch_above_bottom += kind == "hyperband" and budget == 3
            continue
        parent = experiment.get_job(job.parent_id)
        # Started from the weights its parent saved.
        assert start == parent.results["epoch"]
        end = traces[parent.id].end_weights
        assert len(trace.start_weights) == len(end)
        for left, right in zip(trace.start_weights, end):
            np.testing.assert_array_equal(left, right)
        if kind in HALVING:
            promoted += 1
            assert job.member == parent.member
            assert rate == parent.hyperparameters["learning_rate"]  # a continuation
        elif job.exploited_from is not None:
            assert rate != parent.hyperparameters["learning_rate"]
            assert LOW <= rate <= HIGH or kind == "synchronous_pbt"
            explored += 1
    if kind in HALVING:
        assert promoted >= 1
        assert kind != "hyperband" or from_scratch_above_bottom >= 1
    else:
        assert explored >= 1
        assert max(job.generation or 0 for job in jobs) == 2  # three generations


# -- Lightning -----------------------------------------------------------------
def _lightning_train() -> Train:
    torch = pytest.importorskip("torch")
    pl = pytest.importorskip("lightning.pytorch")
    from schedy.integrations.lightning import SchedyCallback

    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(48, 4, generator=generator)
    targets = (inputs[:, 0] + inputs[:, 1] > 0).long()
    dataset = torch.utils.data.TensorDataset(inputs, targets)

    class Net(pl.LightningModule):  # type: ignore[misc, name-defined]
        def __init__(self, learning_rate: float) -> None:
            super().__init__()
            self.learning_rate = learning_rate
            self.net = torch.nn.Linear(4, 2)

        def training_step(self, batch: Any, index: int) -> Any:
            x, y = batch
            return torch.nn.functional.cross_entropy(self.net(x), y)

        def validation_step(self, batch: Any, index: int) -> None:
            x, y = batch
            self.log("val_acc", (self.net(x).argmax(1) == y).float().mean())

        def configure_optimizers(self) -> Any:
            return torch.optim.SGD(self.parameters(), lr=self.learning_rate, momentum=0.9)

    class Probe(pl.Callback):  # type: ignore[misc, name-defined]
        def __init__(self, trace: Trace) -> None:
            self.trace = trace

        def on_train_start(self, trainer: Any, module: Any) -> None:
            self.trace.start_epoch = trainer.current_epoch
            self.trace.start_weights = [p.detach().numpy().copy() for p in module.parameters()]

        def on_train_epoch_start(self, trainer: Any, module: Any) -> None:
            self.trace.epochs += 1

        def on_train_batch_start(self, trainer: Any, module: Any, *args: Any) -> None:
            self.trace.learning_rates.add(trainer.optimizers[0].param_groups[0]["lr"])

    def train(job: Any, folder: Path) -> Trace:
        torch.manual_seed(0)  # the same fresh weights each time: a restore must replace them
        model, trace = Net(job.hyperparameters["learning_rate"]), Trace()
        trainer = pl.Trainer(
            max_epochs=1000,  # the callback stops each job
            callbacks=[SchedyCallback(job, "val_acc", checkpoint_dir=folder), Probe(trace)],
            enable_progress_bar=False,
            enable_model_summary=False,
            logger=False,
            enable_checkpointing=False,
            accelerator="cpu",
            devices=1,
            num_sanity_val_steps=0,
        )
        loader = torch.utils.data.DataLoader(dataset, batch_size=24)
        trainer.fit(model, loader, loader)
        trace.end_weights = [p.detach().numpy().copy() for p in model.parameters()]
        return trace

    return train


# -- Keras ---------------------------------------------------------------------
def _keras_train() -> Train:
    pytest.importorskip("torch")
    pytest.importorskip("h5py")
    keras = pytest.importorskip("keras")
    from schedy.integrations.keras import SchedyCallback

    rng = np.random.RandomState(0)
    inputs = rng.randn(48, 4).astype("float32")
    targets = (inputs[:, 0] + inputs[:, 1] > 0).astype("int64")

    def weights(model: Any) -> list[Any]:
        return [np.array(keras.ops.convert_to_numpy(v)) for v in model.weights]

    class Probe(keras.callbacks.Callback):  # type: ignore[misc]
        """Listed after SchedyCallback: sees the model right after the restore."""

        def __init__(self, trace: Trace, schedy_callback: Any) -> None:
            super().__init__()
            self.trace = trace
            self.schedy_callback = schedy_callback

        def on_train_begin(self, logs: Any = None) -> None:
            self.trace.start_weights = weights(self.model)
            # fit counts from 0 in every job; the lineage epoch is the one restored.
            self.trace.start_epoch = self.schedy_callback.initial_epoch

        def on_epoch_begin(self, epoch: int, logs: Any = None) -> None:
            self.trace.epochs += 1

        def on_train_batch_begin(self, batch: int, logs: Any = None) -> None:
            rate = keras.ops.convert_to_numpy(self.model.optimizer.learning_rate)
            self.trace.learning_rates.add(float(rate))

    def train(job: Any, folder: Path) -> Trace:
        keras.utils.set_random_seed(0)
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2, activation="softmax")])
        model.compile(
            optimizer=keras.optimizers.SGD(job.hyperparameters["learning_rate"], momentum=0.9),
            loss="sparse_categorical_crossentropy",
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
        )
        callback = SchedyCallback(job, "val_acc", checkpoint_dir=folder)
        trace = Trace()
        model.fit(
            inputs,
            targets,
            batch_size=24,
            epochs=1000,  # the callback stops each job
            validation_data=(inputs, targets),
            shuffle=False,
            verbose=0,
            callbacks=[callback, Probe(trace, callback)],
        )
        trace.end_weights = weights(model)
        return trace

    return train


KINDS = ["successive_halving", "hyperband", "pb2", "synchronous_pbt"]


@pytest.mark.parametrize("kind", KINDS)
def test_lightning_callback_runs_the_kind_to_done(kind: str, tmp_path: Path) -> None:
    if kind == "pb2":
        pytest.importorskip("scipy")
    run_to_done(kind, tmp_path, _lightning_train())


@pytest.mark.parametrize("kind", KINDS)
def test_keras_callback_runs_the_kind_to_done(kind: str, tmp_path: Path) -> None:
    if kind == "pb2":
        pytest.importorskip("scipy")
    run_to_done(kind, tmp_path, _keras_train())
