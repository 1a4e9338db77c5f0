"""Lightning: one callback runs the whole PBT worker loop inside a ``Trainer``.

::

    from schedy.integrations.lightning import SchedyCallback

    with experiment.next_job() as job:
        model = LitNet(**job.hyperparameters)
        trainer = Trainer(max_epochs=1000, callbacks=[SchedyCallback(job, monitor='val_acc')])
        trainer.fit(model, datamodule)

For each job the callback

1. restores the checkpoint ``job.results['model_path']`` names, if any (the
   member's own last one, or a better member's after an exploit): weights,
   optimizer and LR-scheduler state, loop counters (epoch, global step),
   precision, datamodule and callback states -- what ``fit(ckpt_path=...)``
   restores, through public Trainer API only;
2. re-applies the job's optimizer hyperparameters on top (``learning_rate``
   or ``lr`` by default, more via ``optimizer_hyperparameters``), so a value
   PBT perturbed is never overwritten by restored state, and LR schedulers
   take it as their new base instead of snapping back;
3. stops the trainer after ``epochs_per_job`` epochs, whatever ``max_epochs``;
4. reports every logged metric (latest values, ``epoch``, ``step`` and a
   per-epoch ``history``) into ``job.results`` and pushes it after each epoch;
5. saves ``<checkpoint_dir>/<job id>.ckpt`` with ``trainer.save_checkpoint``
   and records it as ``job.results['model_path']`` for the next job;
6. logs the job to its ``trackers=`` (TensorBoard, MLflow), if any.

Lightning's own defaults are fitted to it (see
:mod:`schedy.integrations._lightning_defaults`): the default logger writes
``lightning_logs/<experiment>/member_003/job_<id>/`` instead of a numbered
``version_N``, with the step going on across a member's jobs, and the
default ``ModelCheckpoint`` -- an unpruned copy of schedy's checkpoint per
job -- is off; a logger or ``ModelCheckpoint`` the user configured is left
alone. A SIGTERM (preemption) ends the job as ``"preempted"`` at the next
batch even when Lightning's own SIGTERM handler stands in front of schedy's.

With ``strategy='ddp'`` over several devices, get the jobs with
``distributed_jobs(experiment)`` (or ``distributed_next_job``) on every rank:
rank 0 claims each job, the other ranks train the same one, and the callback
reports and saves from rank 0 only.

Works with ``lightning`` and ``pytorch_lightning`` alike: the callback is an
instance of the ``Callback`` class of each of them that is imported.
"""

from __future__ import annotations

import copy
import importlib
import logging
import sys
import warnings
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..jobs import Preempted
from . import _core, _distributed, _lightning_defaults
from ._core import (
    MODEL_PATH_KEY,
    JobLike,
    JobTracker,
    MissingMetricError,
    OptimizerMapping,
    PathLike,
)
from ._files import missing_checkpoint
from .torch import apply_optimizer_values, distributed_jobs, distributed_next_job

if TYPE_CHECKING:
    import lightning.pytorch as pl
    from lightning.pytorch import Callback as _CallbackBase

__all__ = [
    "CHECKPOINT_SUFFIX",
    "MissingMetricError",
    "SchedyCallback",
    "distributed_jobs",
    "distributed_next_job",
]

logger = logging.getLogger(__name__)

#: The callback saves ``<checkpoint_dir>/<job id>.ckpt``.
CHECKPOINT_SUFFIX = ".ckpt"

# The two distributions of Lightning, each with its own (identical) Callback class.
_PACKAGES = ("lightning.pytorch", "pytorch_lightning")


def _loaded_callback_classes() -> list[type]:
    """The ``Callback`` class of each Lightning package imported so far."""
    classes = []
    for name in _PACKAGES:
        # A None entry blocks an import; a module mid-import may lack Callback yet.
        callback = getattr(sys.modules.get(name), "Callback", None)
        if isinstance(callback, type):
            classes.append(callback)
    return classes


def _primary_callback_class() -> type:
    """The base ``SchedyCallback`` is defined on: an imported package's, else an installed one's.

    Preferring what is imported already spares a user of one package the
    seconds it takes to import the other.
    """
    loaded = _loaded_callback_classes()
    if loaded:
        return loaded[0]
    for name in _PACKAGES:
        try:
            return importlib.import_module(name).Callback  # type: ignore[no-any-return]
        except ImportError:
            continue
    raise ImportError(
        "schedy.integrations.lightning needs Lightning: pip install lightning "
        "(or pytorch-lightning)"
    )


if not TYPE_CHECKING:
    _CallbackBase = _primary_callback_class()


class SchedyCallback(_CallbackBase, _core.JobCallback):
    """Run one schedy job -- restore, re-apply hyperparameters, train a budget, save, report.

    Args:
        job: the job from ``experiment.next_job()``.
        monitor: the logged metric PBT ranks by (e.g. ``'val_acc'``); it is
            reported as ``job.results[monitor]``. Missing at an epoch end
            after validation ran (or at the end of the job):
            :class:`~schedy.integrations.MissingMetricError` listing the
            metrics that exist.
        epochs_per_job: epochs each job trains, counted from where it resumed.
            A job with a ``job.budget`` (successive halving, Hyperband) trains
            until its lineage epoch equals the budget instead.
        checkpoint_dir: folder (or fsspec URL) every worker can read; default
            ``$SCHEDY_CHECKPOINT_DIR``, else ``./checkpoints``.
        optimizer_hyperparameters: extra ``{job hyperparameter: optimizer
            param-group key}`` to re-apply after a restore, e.g.
            ``{'momentum': 'momentum', 'wd': 'weight_decay'}``; ``learning_rate``
            and ``lr`` map to ``lr`` by default (map one to ``None`` to drop it).
        keep_top_k: after saving, delete the experiment's checkpoints in
            ``checkpoint_dir`` that no job can need any more, keeping those of
            the ``keep_top_k`` best jobs too; ``None`` keeps everything.
        trackers: a :class:`~schedy.integrations.trackers.TensorBoard` or
            :class:`~schedy.integrations.trackers.MLflow` (or a list of them)
            each job is logged to once it has trained and saved: one run per
            member, hyperparameters as step-indexed metrics, exploits marked.

    If ``trainer.fit(..., ckpt_path=...)`` is given, that checkpoint is
    restored (by Lightning) instead of the job's; hyperparameters are
    re-applied on top either way. Without a checkpoint to restore, the
    optimizer is left as the module built it from the job's hyperparameters.
    """

    _log_hint = "(self.log({monitor}, ...) in the LightningModule.)"
    _validation_hint = (
        "No validation ran in this job: a validation metric needs validation_step, "
        "val data and check_val_every_n_epoch <= epochs_per_job."
    )
    # A LightningModule may well log its own `epoch` or `step`.
    _drops_reserved_metrics = True

    def __new__(cls, *args: Any, **kwargs: Any) -> SchedyCallback:
        # Be an instance of each imported package's Callback, so that a
        # `pytorch_lightning.Trainer` accepts it as readily as a `lightning` one.
        return super().__new__(_with_loaded_bases(cls))

    def __reduce__(self) -> tuple[Any, ...]:
        # Rebuilt from the class the user named, so a two-package variant made
        # by __new__ pickles and deep-copies (spawned DDP workers, copies).
        declared = getattr(type(self), "_schedy_declared", type(self))
        return (_new_instance, (declared,), self.__dict__)

    def __init__(
        self,
        job: JobLike,
        monitor: str,
        *,
        epochs_per_job: int = 1,
        checkpoint_dir: PathLike | None = None,
        optimizer_hyperparameters: OptimizerMapping | None = None,
        keep_top_k: int | None = 1,
        trackers: JobTracker | Iterable[JobTracker] | None = None,
    ) -> None:
        super().__init__()
        self._take_job(
            job,
            monitor,
            epochs_per_job,
            checkpoint_dir,
            optimizer_hyperparameters,
            keep_top_k,
            CHECKPOINT_SUFFIX,
            trackers,
        )

    def _reset(self) -> None:
        super()._reset()
        self._restored_state: dict[str, Any] | None = None
        self._pending: tuple[int, int] | None = None  # (epoch, step) of an epoch not reported yet

    @property
    def state_key(self) -> str:
        # Fixed, whichever Lightning package's class this instance was built on.
        return "SchedyCallback"

    # -- hooks -------------------------------------------------------------
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage == "fit":
            self._reset()
            if trainer.world_size > 1:
                self._check_one_job(trainer)
            _lightning_defaults.name_default_logger(trainer, self.job)
            _lightning_defaults.drop_default_checkpoint(trainer, self.job)

    def _check_one_job(self, trainer: pl.Trainer) -> None:
        """Under DDP every rank must train rank 0's job: hand its values to all, refuse otherwise.

        Ranks that got the job from ``distributed_jobs`` hold it; ranks that
        each ran ``experiment.next_job()`` hold jobs of their own and are
        refused, all together (see :func:`schedy.integrations._distributed.agree`).
        """
        _distributed.agree(self.job, trainer.strategy, trainer.global_rank, trainer.world_size)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Optimizers and schedulers exist from here on; Lightning itself
        # restores training state right after this hook.
        path = self.job.results.get(MODEL_PATH_KEY)
        if not path:
            return
        if trainer.ckpt_path:
            logger.info(
                "job %s: fit(ckpt_path=%s) given, so its results' %s=%s is not restored",
                self.job.id,
                trainer.ckpt_path,
                MODEL_PATH_KEY,
                path,
            )
            return
        self._restore(trainer, pl_module, str(path))

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # After every restore (ours, or Lightning's for ckpt_path): the job's values win.
        state = self._restored_state or {}
        # Hyperparameters named like a param-group key (weight_decay, momentum,
        # betas…) built the optimizer: re-applied after a restore like lr.
        settings = {
            key for opt in trainer.optimizers for group in opt.param_groups for key in group
        }
        self.check_settings(settings)
        if self.restored_from is not None or trainer.ckpt_path:
            values, previous = self.restored_values(state, settings)
            apply_optimizer_values(
                trainer.optimizers,
                [config.scheduler for config in trainer.lr_scheduler_configs],
                values,
                previous,
            )
        self.start_epoch = self._budget_start(state, trainer.current_epoch)

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # The previous epoch is reported here rather than at its end: callbacks
        # run before LightningModule.on_train_epoch_end, whose metrics would be missed.
        self._report(trainer, final=False)

    def on_train_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        _end_if_preempted(trainer)

    def on_validation_batch_end(
        self, trainer: pl.Trainer, pl_module: pl.LightningModule, *args: Any
    ) -> None:
        _end_if_preempted(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.sanity_checking:
            self._validated = True

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        _end_if_preempted(trainer)
        epochs_completed = trainer.current_epoch + 1
        self._pending = (epochs_completed, trainer.global_step)
        if self.budget_reached(epochs_completed):
            trainer.should_stop = True

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._report(trainer, final=True)
        trainer.save_checkpoint(self.checkpoint_path, weights_only=False)
        if trainer.is_global_zero:
            self._checkpoint_saved()

    def state_dict(self) -> dict[str, Any]:
        return self._checkpoint_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        # Kept for on_train_start: the hyperparameters the restored state was
        # trained with, and where the budget started if it is this same job.
        self._restored_state = dict(state_dict)

    # -- helpers -----------------------------------------------------------
    def _report(self, trainer: pl.Trainer, *, final: bool) -> None:
        if self._pending is None:
            return
        metrics = self.epoch_metrics(trainer.callback_metrics, final=final)
        epoch, step = self._pending
        self._pending = None
        if trainer.is_global_zero:
            _core.record_epoch(self.job.results, metrics, epoch=epoch, step=step)
            self.job.put()

    def _restore(self, trainer: pl.Trainer, pl_module: pl.LightningModule, path: str) -> None:
        """What ``fit(ckpt_path=path)`` restores, through public API."""
        try:
            checkpoint = trainer.strategy.load_checkpoint(path)
        except FileNotFoundError as error:  # Lightning reads local paths and URLs itself
            raise missing_checkpoint(self.job.id, path) from error
        pl_module.on_load_checkpoint(checkpoint)
        trainer.strategy.load_model_state_dict(
            checkpoint, strict=getattr(pl_module, "strict_loading", True)
        )
        # `datamodule` and `callbacks` are public Trainer attributes that its stubs do not declare.
        datamodule = getattr(trainer, "datamodule", None)
        if datamodule is not None and type(datamodule).__qualname__ in checkpoint:
            datamodule.load_state_dict(checkpoint[type(datamodule).__qualname__])
        callbacks = getattr(trainer, "callbacks", ())
        callback_states = checkpoint.get("callbacks") or {}
        for callback in callbacks:  # all hooks first, then all states, as Lightning does
            callback.on_load_checkpoint(trainer, pl_module, checkpoint)
        for callback in callbacks:
            state = callback_states.get(callback.state_key)
            if state:
                callback.load_state_dict(copy.deepcopy(state))
        precision = trainer.precision_plugin
        precision.on_load_checkpoint(checkpoint)
        if type(precision).__qualname__ in checkpoint:
            precision.load_state_dict(checkpoint[type(precision).__qualname__])
        if "loops" in checkpoint:
            trainer.fit_loop.load_state_dict(checkpoint["loops"]["fit_loop"])
        if trainer.strategy.lightning_restore_optimizer:
            states = checkpoint.get("optimizer_states")
            if states is None or len(states) != len(trainer.optimizers):
                raise ValueError(
                    f"checkpoint {path} holds {0 if states is None else len(states)} optimizer "
                    f"state(s) but the model has {len(trainer.optimizers)} optimizer(s); it must "
                    "be a full checkpoint of the same model (not weights_only)"
                )
            trainer.strategy.load_optimizer_state_dict(checkpoint)
        scheduler_states = checkpoint.get("lr_schedulers") or []
        for config, scheduler_state in zip(trainer.lr_scheduler_configs, scheduler_states):
            config.scheduler.load_state_dict(scheduler_state)
        self.restored_from = path
        max_epochs = trainer.max_epochs
        if max_epochs is not None and max_epochs >= 0 and trainer.current_epoch >= max_epochs:
            warnings.warn(
                f"job {self.job.id} resumed at epoch {trainer.current_epoch}, which reaches "
                f"Trainer(max_epochs={max_epochs}): it will not train. schedy stops each job "
                "after epochs_per_job epochs, so max_epochs can stay large; end the lineage "
                "with the experiment's max_generations instead",
                stacklevel=2,
            )
        logger.info("job %s: restored %s at epoch %d", self.job.id, path, trainer.current_epoch)


def _end_if_preempted(trainer: pl.Trainer) -> None:
    """Raise :class:`schedy.jobs.Preempted` once Lightning has seen a SIGTERM.

    Inside ``with job:`` schedy's SIGTERM handler raises it at once, and
    Lightning's own handler calls it. When schedy's is not in that chain (a
    SIGTERM handler was there before the job started), Lightning alone would
    only stop at the end of the epoch -- maybe past the grace period before
    SIGKILL, leaving the job RUNNING until its lease runs out -- and end it
    as a plain crash. Raised here, at the next batch, it ends the job as
    "preempted" and its member resumes elsewhere at once. With several
    processes Lightning's own synchronized stop is left to work.
    """
    if trainer.received_sigterm and trainer.world_size == 1:
        raise Preempted()


_variants: dict[type, type] = {}


def _with_loaded_bases(cls: type) -> type:
    """``cls``, or a subclass also deriving from the imported packages' ``Callback`` it lacks."""
    missing = tuple(base for base in _loaded_callback_classes() if not issubclass(cls, base))
    if not missing:
        return cls
    variant = _variants.get(cls)
    if variant is None or not all(issubclass(variant, base) for base in missing):
        namespace = {
            "__module__": cls.__module__,
            "__qualname__": cls.__qualname__,
            "_schedy_declared": cls,  # what __reduce__ rebuilds from
        }
        variant = type(cls.__name__, (cls, *missing), namespace)
        _variants[cls] = variant
    return variant


def _new_instance(cls: type[SchedyCallback]) -> SchedyCallback:
    """Unpickling: an empty instance of ``cls`` (or its variant for the packages imported now)."""
    return cls.__new__(cls)
