"""Overhead of schedy's Lightning callback on training time, beyond checkpoint I/O.

Trains the same small MLP on synthetic data for the same number of epochs,
once with a plain ``Trainer`` (the baseline, run first in this process) and
once with ``SchedyCallback`` on a real job of an embedded SQLite store,
alternating the two several times. Each epoch is timed from
``on_train_epoch_start`` to ``on_train_epoch_end`` of a timing callback, so
the job's final checkpoint save (I/O the user would pay anyway) is outside
the measurement, while everything schedy does per epoch — collecting
metrics, recording history, pushing results to the store — is inside it.

    .venv/bin/python benchmarks/callback_overhead.py [--epochs 8] [--batches 100] [--repeats 3]

Target: median epoch time with the callback <= 1.05x the baseline.
"""

from __future__ import annotations

import argparse
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

import schedy
from schedy.integrations.lightning import SchedyCallback


class MLP(L.LightningModule):
    def __init__(self, learning_rate: float = 1e-3) -> None:
        super().__init__()
        self.learning_rate = learning_rate
        self.net = torch.nn.Sequential(
            torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 10)
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> torch.Tensor:
        x, y = batch
        loss = torch.nn.functional.cross_entropy(self.net(x), y)
        self.log("loss", loss)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], _: int) -> None:
        x, y = batch
        self.log("val_acc", (self.net(x).argmax(dim=1) == y).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=self.learning_rate)


class EpochTimer(L.Callback):
    """Wall time of each training epoch (validation included, final save excluded)."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self._start = 0.0

    def on_train_epoch_start(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, module: L.LightningModule) -> None:
        self.times.append(time.perf_counter() - self._start)


def loaders(batches: int) -> tuple[Any, Any]:
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batches * 32, 64, generator=generator)
    y = torch.randint(0, 10, (batches * 32,), generator=generator)
    dataset = torch.utils.data.TensorDataset(x, y)
    train = torch.utils.data.DataLoader(dataset, batch_size=32)
    val = torch.utils.data.DataLoader(torch.utils.data.Subset(dataset, range(256)), batch_size=64)
    return train, val


def run(epochs: int, batches: int, job: schedy.Job | None, folder: Path) -> list[float]:
    torch.manual_seed(0)
    timer = EpochTimer()
    callbacks: list[L.Callback] = [timer]
    if job is not None:
        callbacks.append(
            SchedyCallback(job, "val_acc", epochs_per_job=epochs, checkpoint_dir=folder)
        )
    trainer = L.Trainer(
        max_epochs=epochs,
        callbacks=callbacks,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    train, val = loaders(batches)
    trainer.fit(MLP(), train, val)
    return timer.times[1:]  # the first epoch carries warm-up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batches", type=int, default=100, help="training batches per epoch")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        db = schedy.SchedyDB(f"sqlite:///{folder}/bench.db")
        db.add_experiment(
            schedy.PopulationBasedTraining(
                "bench",
                schedy.pbt.MAXIMIZE,
                "val_acc",
                exploit=schedy.pbt.Truncate(),
                initial_distributions={"learning_rate": schedy.random.Constant(1e-3)},
                population_size=args.repeats,
            )
        )
        experiment = db.get_experiment("bench")
        baseline: list[float] = []
        with_callback: list[float] = []
        for _ in range(args.repeats):  # alternate, so drift hits both alike
            baseline += run(args.epochs, args.batches, None, folder)
            with experiment.next_job() as job:
                with_callback += run(args.epochs, args.batches, job, folder)
        base = statistics.median(baseline)
        schedy_time = statistics.median(with_callback)
        ratio = schedy_time / base
        print(f"command: {shlex.join([sys.executable, *sys.argv])}")
        print(f"{args.batches} batches/epoch, {len(baseline)} timed epochs per variant")
        print(f"baseline (plain Trainer)      median epoch {base * 1e3:8.2f} ms   1.000x")
        print(
            f"with SchedyCallback           median epoch {schedy_time * 1e3:8.2f} ms   {ratio:.3f}x"
        )
        verdict = "PASS" if ratio <= 1.05 else "MISS"
        print(f"overhead {100 * (ratio - 1):+.1f}%  (target <= +5%: {verdict})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
