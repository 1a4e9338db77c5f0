"""Plain torch: the PBT worker loop in a few calls.

``restore`` reloads the checkpoint the job's results name (``model_path``:
the member's own last one, or a better member's after an exploit) and
re-applies the job's -- possibly perturbed -- hyperparameters on top of the
restored optimizer state; ``save`` writes ``<job id>.pt`` and records its
path; ``report`` writes metrics, ``epoch``/``step`` and their history into
the job's results and pushes them::

    from schedy.integrations.torch import report, restore, save

    with experiment.next_job() as job:
        model = Net()
        optimizer = torch.optim.SGD(model.parameters(), lr=job.hyperparameters['lr'])
        scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)
        start = restore(job, model, optimizer, scheduler).get('epoch', 0)
        for epoch in range(start, start + 2):  # this job's budget: 2 epochs
            train_one_epoch(model, optimizer)
            scheduler.step()
            report(job, {'val_acc': evaluate(model)}, epoch=epoch + 1)
        save(job, model, optimizer, scheduler, epoch=epoch + 1)

A member trained over several GPUs (torchrun, DDP) gets its jobs with
:func:`distributed_jobs` on every rank: rank 0 claims each job and the other
ranks train the same one, while ``report`` and ``save`` store only from rank
0 (see :mod:`schedy.integrations._distributed`)::

    for job in distributed_jobs(experiment):   # every rank, in step
        with job:
            ...  # the loop above, unchanged

Checkpoints are plain ``torch.save`` dicts (``model``, ``optimizer``,
``scheduler``, ``counters`` and ``schedy``: the job id and hyperparameters
they were trained with), loaded with ``weights_only=True`` by default so
that a checkpoint in a shared folder cannot run code. Paths may be fsspec
URLs (``s3://...``) when fsspec is installed; files are written and read
through :mod:`schedy.integrations._files` (atomically, and with one error for
a missing checkpoint).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

try:
    import torch
except ImportError as error:  # pragma: no cover - exercised only without torch
    raise ImportError(
        "schedy.integrations.torch needs PyTorch: pip install torch (see pytorch.org for "
        "the build that matches your accelerator)"
    ) from error
from torch.optim.lr_scheduler import LRScheduler

from .. import _values
from . import _core, _distributed
from ._core import (
    MODEL_PATH_KEY,
    SCHEDULED_PARAMS,
    JobLike,
    OptimizerMapping,
    PathLike,
    checkpoint_path,
    optimizer_values,
    previous_optimizer_values,
    record_epoch,
    to_float,
    update_param_group,
)
from ._distributed import ReplicaJob
from ._files import atomic_write, local_copy

if TYPE_CHECKING:
    from ..experiments import Experiment
    from ..jobs import Job

__all__ = [
    "CHECKPOINT_SUFFIX",
    "ReplicaJob",
    "apply_hyperparameters",
    "apply_optimizer_values",
    "distributed_jobs",
    "distributed_next_job",
    "report",
    "restore",
    "save",
]

#: ``save`` writes ``<checkpoint_dir>/<job id>.pt``.
CHECKPOINT_SUFFIX = ".pt"


def apply_hyperparameters(
    job: JobLike,
    optimizer: torch.optim.Optimizer,
    mapping: OptimizerMapping | None = None,
    *,
    scheduler: LRScheduler | None = None,
) -> dict[str, Any]:
    """Write the job's optimizer hyperparameters into every param group; return them.

    By default ``learning_rate`` or ``lr`` sets ``lr``; ``mapping`` adds
    others, e.g. ``{'momentum': 'momentum', 'wd': 'weight_decay'}``. A group
    that follows an LR schedule (torch schedulers record its ``initial_lr``)
    gets the value as its new base with the schedule's progress kept, and
    ``scheduler.base_lrs`` follow, so the next ``scheduler.step()`` does not
    snap back to the old rate. Call it after loading optimizer state yourself;
    :func:`restore` calls it for you.
    """
    values = optimizer_values(job.hyperparameters, mapping)
    apply_optimizer_values([optimizer], [] if scheduler is None else [scheduler], values)
    return values


def apply_optimizer_values(
    optimizers: Iterable[torch.optim.Optimizer],
    schedulers: Iterable[Any],
    values: Mapping[str, Any],
    previous: Mapping[str, Any] | None = None,
) -> None:
    """Apply ``{param: value}`` to optimizers and keep their schedulers' ``base_lrs`` in step.

    ``previous``: the values the restored state was trained with, when known
    (see :func:`schedy.integrations._core.update_param_group`). Shared with
    the Lightning callback, whose trainer holds several optimizers.
    """
    for optimizer in optimizers:
        for group in optimizer.param_groups:
            update_param_group(group, values, previous)
    if not SCHEDULED_PARAMS & set(values):
        return
    for scheduler in schedulers:
        _sync_base_lrs(scheduler)


def _sync_base_lrs(scheduler: Any) -> None:
    """Set ``scheduler.base_lrs`` from its groups' ``initial_lr`` (what it was built from)."""
    base_lrs = getattr(scheduler, "base_lrs", None)
    optimizer = getattr(scheduler, "optimizer", None)
    if base_lrs is None or optimizer is None:
        return  # e.g. ReduceLROnPlateau: it only scales the current lr
    groups = optimizer.param_groups
    if len(groups) != len(base_lrs) or not all("initial_lr" in group for group in groups):
        return
    scheduler.base_lrs = [
        group["initial_lr"].clone()
        if isinstance(group["initial_lr"], torch.Tensor)
        else group["initial_lr"]
        for group in groups
    ]


def restore(
    job: JobLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    map_location: Any = None,
    *,
    mapping: OptimizerMapping | None = None,
    weights_only: bool = True,
) -> dict[str, Any]:
    """Load the checkpoint ``job.results['model_path']`` names; return its counters.

    Restores the model, and the optimizer and scheduler when given, then
    re-applies the job's optimizer hyperparameters (see
    :func:`apply_hyperparameters`; ``mapping`` as there): a value PBT
    perturbed wins over the restored optimizer state, while an unchanged one
    leaves the restored state exactly as it was. Returns the counters passed
    to :func:`save` (e.g. ``{'epoch': 3, 'step': 1200}``); ``{}`` and nothing
    touched when the job starts fresh (no ``model_path``).
    """
    path = job.results.get(MODEL_PATH_KEY)
    if not path:
        return {}
    checkpoint = _load(str(path), map_location, weights_only, job)
    model.load_state_dict(checkpoint["model"])
    for name, target in (("optimizer", optimizer), ("scheduler", scheduler)):
        if target is None:
            continue
        state = checkpoint.get(name)
        if state is None:
            raise ValueError(
                f"checkpoint {path} has no {name} state (it was saved without one), but a "
                f"{name} was passed to restore(); pass {name}=None or save the {name} too"
            )
        target.load_state_dict(state)
    if optimizer is not None:
        # Hyperparameters named like a param-group key (weight_decay, momentum,
        # betas…) built the optimizer: re-applied after the restore like lr.
        settings = {key for group in optimizer.param_groups for key in group}
        before = checkpoint.get("schedy", {}).get("hyperparameters")
        values = _core.with_named_settings(
            optimizer_values(job.hyperparameters, mapping), job.hyperparameters, settings, mapping
        )
        previous = previous_optimizer_values(before, mapping)
        if previous is not None and isinstance(before, Mapping):
            previous = _core.with_named_settings(previous, before, settings, mapping)
        apply_optimizer_values(
            [optimizer], [] if scheduler is None else [scheduler], values, previous
        )
    return dict(checkpoint.get("counters", {}))


def save(
    job: JobLike,
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: LRScheduler | None = None,
    checkpoint_dir: PathLike | None = None,
    **counters: Any,
) -> str:
    """Write ``<checkpoint_dir>/<job id>.pt``; record it as ``job.results['model_path']``.

    ``checkpoint_dir`` defaults to ``$SCHEDY_CHECKPOINT_DIR``, else
    ``./checkpoints``; it must be readable by every worker (a shared folder
    or an fsspec URL). ``counters`` (JSON values, e.g. ``epoch=3``) come back
    from :func:`restore`. Local files are replaced atomically, so a worker
    killed mid-save leaves no truncated checkpoint behind. On a rank other
    than 0 of a distributed job (a :class:`ReplicaJob`) nothing is written:
    rank 0 saves the same model.
    """
    path = checkpoint_path(checkpoint_dir, job.id, CHECKPOINT_SUFFIX)
    if _distributed.is_replica(job):  # rank 0 writes the one checkpoint of a distributed job
        job.results[MODEL_PATH_KEY] = path
        return path
    checkpoint: dict[str, Any] = {
        "model": model.state_dict(),
        "counters": {
            name: _values.normalize(value, f"counters[{name!r}]")
            for name, value in counters.items()
        },
        "schedy": {"job_id": job.id, "hyperparameters": dict(job.hyperparameters)},
    }
    if optimizer is not None:
        checkpoint["optimizer"] = optimizer.state_dict()
    if scheduler is not None:
        checkpoint["scheduler"] = scheduler.state_dict()
    atomic_write(path, lambda local: torch.save(checkpoint, local), suffix=CHECKPOINT_SUFFIX)
    job.results[MODEL_PATH_KEY] = path
    return path


def report(
    job: JobLike,
    metrics: Mapping[str, Any],
    *,
    epoch: int,
    step: int | None = None,
    push: bool = True,
) -> dict[str, float]:
    """Record one epoch's metrics in ``job.results`` (latest values and history); push them.

    ``epoch`` counts epochs trained along the lineage (continue from the
    ``epoch`` counter :func:`restore` returned). Values may be tensors or
    numpy scalars; pushing (``job.put()``) makes progress visible while the
    job runs.
    """
    values: dict[str, float] = {}
    for name, value in metrics.items():
        number = to_float(value)
        if number is None:
            raise TypeError(f"metric {name!r} = {value!r} is not a single number")
        values[str(name)] = number
    record_epoch(job.results, values, epoch=epoch, step=step)
    if push:
        job.put()
    return values


def distributed_next_job(
    experiment: Experiment, timeout: float | None = None, lease: float | None = None
) -> Job | ReplicaJob:
    """``experiment.next_job()`` for a member trained by several ranks: call it on every rank.

    Rank 0 claims the job and holds its lease; every other rank gets a
    :class:`ReplicaJob` with the same id, hyperparameters, results (so the
    same ``model_path`` to restore) and budget, sent over torch.distributed's
    default process group (initialised from torchrun's environment if it is
    not yet; under Lightning's own DDP launcher the first job reaches the
    ranks it starts through their environment, and ``SchedyCallback``
    checks it). Rank 0's :class:`~schedy.errors.NoJobError` (the experiment
    is done) is raised on every rank. Use it as ``with ... as job:`` on every
    rank: rank 0 ends the job, the others' ``with`` and ``put`` store nothing.
    """
    return _distributed.next_job(experiment, timeout, lease)


def distributed_jobs(
    experiment: Experiment, timeout: float | None = None, lease: float | None = None
) -> Iterator[Job | ReplicaJob]:
    """``experiment.jobs()`` for a member trained by several ranks: every rank loops in step.

    Each job as :func:`distributed_next_job` gives it, until nothing can come
    (then the loop ends on every rank)::

        for job in distributed_jobs(experiment):
            with job:
                model = Net(**job.hyperparameters)
                start = restore(job, model, optimizer).get('epoch', 0)
                ...  # train; report(job, ...) and save(job, ...) store from rank 0 only
    """
    return _distributed.jobs(experiment, timeout, lease)


def _load(path: str, map_location: Any, weights_only: bool, job: JobLike) -> dict[str, Any]:
    with local_copy(path, job.id) as local:  # a URL is fetched first
        checkpoint = torch.load(local, map_location=map_location, weights_only=weights_only)
    if not isinstance(checkpoint, dict) or "model" not in checkpoint:
        raise ValueError(
            f"{path} is not a checkpoint written by schedy.integrations.torch.save "
            "(a dict with a 'model' state)"
        )
    return checkpoint
