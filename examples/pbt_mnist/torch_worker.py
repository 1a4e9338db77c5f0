"""A plain-torch PBT worker: the guide's loop with schedy.integrations.torch helpers.

    python examples/pbt_mnist/torch_worker.py --dataset digits

Each job restores the checkpoint its results name (its member's last, or a
better member's after an exploit), re-applies the job's possibly perturbed
learning rate, trains ``--epochs-per-job`` epochs, reports and saves.
"""

from __future__ import annotations

import _common
import torch
from model import torch_mlp

from schedy.integrations._checkpoints import prune_checkpoints
from schedy.integrations.torch import report, restore, save

args = _common.worker_arguments(__doc__ or "")
torch.set_num_threads(args.threads)


def accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    with torch.no_grad():
        return float((model(x).argmax(dim=1) == y).float().mean())


def train_job(job, data) -> None:  # type: ignore[no-untyped-def]
    torch.manual_seed(hash(job.id) % 2**31)
    x, y = torch.from_numpy(data.x_train), torch.from_numpy(data.y_train)
    x_val, y_val = torch.from_numpy(data.x_val), torch.from_numpy(data.y_val)
    model = torch_mlp(data.num_features, data.num_classes, job.hyperparameters)
    optimizer = torch.optim.Adam(model.parameters(), lr=job.hyperparameters["learning_rate"])
    counters = restore(job, model, optimizer)
    epoch, step = counters.get("epoch", 0), counters.get("step", 0)
    for _ in range(args.epochs_per_job):
        model.train()
        for batch in torch.randperm(len(x)).split(args.batch_size):
            optimizer.zero_grad()
            loss = torch.nn.functional.cross_entropy(model(x[batch]), y[batch])
            loss.backward()
            optimizer.step()
            step += 1
        epoch += 1
        val_acc = accuracy(model, x_val, y_val)
        _common.record_max_accuracy(job, val_acc)
        report(job, {"val_acc": val_acc, "loss": loss}, epoch=epoch, step=step)
    save(job, model, optimizer, checkpoint_dir=args.checkpoint_dir, epoch=epoch, step=step)
    job.put()
    prune_checkpoints(job.experiment, args.checkpoint_dir, keep_top_k=args.keep_top)


if __name__ == "__main__":
    _common.job_loop(args, train_job)
