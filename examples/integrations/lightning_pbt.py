"""PBT with a Lightning ``Trainer`` on synthetic data, run by ``schedy worker``.

    python examples/integrations/lightning_pbt.py --create      # the experiment
    schedy worker "lightning PBT" --workers 2 -- python examples/integrations/lightning_pbt.py

Explored: ``learning_rate`` and ``weight_decay``; the callback re-applies both
after restoring a checkpoint (``weight_decay`` because it is a key of the
optimizer's param groups). A default Trainer: its logs go to
``lightning_logs/lightning_PBT/member_NNN/job_<id>/``, its own checkpoints are
off (schedy keeps one per job in ``./checkpoints``, pruned); ``tensorboard
--logdir tb`` shows one continuing curve per member.
"""

from __future__ import annotations

import contextlib
import sys

import lightning.pytorch as pl
import torch

import schedy
from schedy.errors import ResourceExistsError
from schedy.integrations.lightning import SchedyCallback
from schedy.integrations.trackers import TensorBoard

NAME = "lightning PBT"


def create(db: schedy.SchedyDB) -> None:
    experiment = schedy.PopulationBasedTraining(
        NAME,
        schedy.pbt.MAXIMIZE,
        "val_acc",
        exploit=schedy.pbt.Truncate(),
        explore={"learning_rate": schedy.pbt.Perturb(), "weight_decay": schedy.pbt.Perturb()},
        initial_distributions={
            "learning_rate": schedy.random.LogUniform(1e-3, 1e-1),
            "weight_decay": schedy.random.LogUniform(1e-5, 1e-2),
        },
        population_size=4,
        max_generations=3,
        # Members compared at equal generations: with 4 members and 2 workers an
        # asynchronous run may end before a bottom member meets a finished peer.
        synchronous=True,
    )
    with contextlib.suppress(ResourceExistsError):  # made by another worker already
        db.add_experiment(experiment)


class LitNet(pl.LightningModule):
    def __init__(self, learning_rate: float, weight_decay: float) -> None:
        super().__init__()
        self.learning_rate, self.weight_decay = learning_rate, weight_decay
        self.net = torch.nn.Sequential(
            torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 2)
        )

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        inputs, targets = batch
        loss = torch.nn.functional.cross_entropy(self.net(inputs), targets)
        self.log("train_loss", loss, on_epoch=True, on_step=False)
        return loss

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> None:
        inputs, targets = batch
        self.log("val_acc", (self.net(inputs).argmax(1) == targets).float().mean())

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.AdamW(
            self.parameters(), lr=self.learning_rate, weight_decay=self.weight_decay
        )


def loaders() -> tuple[torch.utils.data.DataLoader, torch.utils.data.DataLoader]:
    """Is the sum of the first two features positive? 512 train, 128 validation rows."""
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(640, 8, generator=generator)
    targets = (inputs[:, 0] + inputs[:, 1] > 0).long()
    data = torch.utils.data.TensorDataset(inputs, targets)
    train, valid = torch.utils.data.random_split(data, [512, 128], generator=generator)
    return (
        torch.utils.data.DataLoader(train, batch_size=64, shuffle=True),
        torch.utils.data.DataLoader(valid, batch_size=128),
    )


def main() -> None:
    db = schedy.SchedyDB()  # $SCHEDY_URL (schedy worker sets it), else ./schedy.db
    if "--create" in sys.argv:
        create(db)
        return
    experiment = db.get_experiment(NAME)
    train, valid = loaders()
    with TensorBoard("tb") as tensorboard:
        for job in experiment.jobs():  # until the experiment is DONE
            with job:
                trainer = pl.Trainer(
                    max_epochs=1000,  # schedy stops each job after epochs_per_job
                    enable_progress_bar=False,
                    callbacks=[SchedyCallback(job, monitor="val_acc", trackers=tensorboard)],
                )
                trainer.fit(LitNet(**job.hyperparameters), train, valid)


if __name__ == "__main__":
    main()
