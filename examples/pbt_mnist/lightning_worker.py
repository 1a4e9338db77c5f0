"""A Lightning PBT worker: the whole job loop is one callback.

    python examples/pbt_mnist/lightning_worker.py --dataset digits

``SchedyCallback`` restores the checkpoint the job's results name (weights,
optimizer, epoch and step counters), re-applies the job's possibly
perturbed learning rate, stops after ``--epochs-per-job`` epochs, saves
``<job id>.ckpt``, reports the logged metrics and prunes old checkpoints.
"""

from __future__ import annotations

import logging
import warnings

import _common
import lightning as L
import torch
from model import torch_mlp

from schedy.integrations.lightning import SchedyCallback

args = _common.worker_arguments(__doc__ or "")
torch.set_num_threads(args.threads)
if not args.verbose:
    # The launcher prints one line per job; Lightning's notes on every Trainer (GPU/TPU
    # available, tips) and its hints about this small example's loaders stay out.
    for name in ("lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", module=r"lightning\.")
    warnings.filterwarnings("ignore", message=r".*does not have many workers")


class LitMLP(L.LightningModule):
    def __init__(self, num_features: int, num_classes: int, **hyperparameters: object) -> None:
        super().__init__()
        self.learning_rate = float(hyperparameters["learning_rate"])  # type: ignore[arg-type]
        self.net = torch_mlp(num_features, num_classes, hyperparameters)

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


def loader(x, y, shuffle: bool) -> torch.utils.data.DataLoader:  # type: ignore[no-untyped-def]
    dataset = torch.utils.data.TensorDataset(torch.from_numpy(x), torch.from_numpy(y))
    return torch.utils.data.DataLoader(dataset, batch_size=args.batch_size, shuffle=shuffle)


def train_job(job, data) -> None:  # type: ignore[no-untyped-def]
    L.seed_everything(hash(job.id) % 2**31, verbose=False)
    model = LitMLP(data.num_features, data.num_classes, **job.hyperparameters)
    callback = SchedyCallback(
        job,
        monitor="val_acc",
        epochs_per_job=args.epochs_per_job,
        checkpoint_dir=args.checkpoint_dir,
        keep_top_k=args.keep_top,
    )
    trainer = L.Trainer(
        max_epochs=1000,  # the callback stops after --epochs-per-job
        callbacks=[callback],
        accelerator="auto",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(
        model,
        loader(data.x_train, data.y_train, shuffle=True),
        loader(data.x_val, data.y_val, shuffle=False),
    )
    _common.record_max_accuracy(job, job.results["val_acc"])


if __name__ == "__main__":
    _common.job_loop(args, train_job)
