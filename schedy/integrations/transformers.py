"""HuggingFace Transformers: one callback and one call run the PBT worker loop in a ``Trainer``.

::

    from schedy.integrations import transformers as schedy_hf

    with experiment.next_job() as job:
        hp = job.hyperparameters
        args = TrainingArguments(output_dir='out', learning_rate=hp['learning_rate'],
                                 weight_decay=hp['weight_decay'], eval_strategy='epoch',
                                 num_train_epochs=100, report_to=[], use_cpu=True)
        trainer = Trainer(model_init=make_model, args=args, train_dataset=train,
                          eval_dataset=val, compute_metrics=accuracy,
                          callbacks=[schedy_hf.SchedyCallback(job, monitor='eval_accuracy')])
        schedy_hf.train(trainer, job)

``train(trainer, job)`` is ``trainer.train(resume_from_checkpoint=...)`` with
the checkpoint the job continues from; calling it yourself is the same::

    with callback.resume_checkpoint() as folder:   # None for a fresh job
        trainer.train(resume_from_checkpoint=folder)

For each job:

1. **restore** -- Trainer's own ``resume_from_checkpoint`` machinery loads the
   checkpoint ``job.results['model_path']`` names (the member's last one, or a
   better member's after an exploit): weights, optimizer and LR-scheduler
   state, ``TrainerState`` (global step, epoch, log history) and RNG states;
   the data loader skips what was trained, as in any Trainer resume.
2. **re-apply** -- in ``on_train_begin``, which Trainer calls *after*
   ``_load_optimizer_and_scheduler``, the callback writes this job's
   ``TrainingArguments`` back into the restored optimizer: ``learning_rate``
   (as a new base: the param groups' ``lr``/``initial_lr`` and the scheduler's
   ``base_lrs`` scaled, so a warm-up or decay keeps its progress and does not
   snap back -- transformers #9099), ``adam_beta1``/``adam_beta2``,
   ``adam_epsilon`` and ``weight_decay`` (on the groups that decay only).
   Schedule settings such as ``warmup_steps`` or ``warmup_ratio`` take effect
   by themselves: Trainer builds the schedule from the current arguments and
   a resumed scheduler keeps only its step. Values of a custom optimizer come
   from the job's hyperparameters through ``optimizer_hyperparameters=``.
3. **budget** -- training stops after ``epochs_per_job`` epochs or
   ``steps_per_job`` optimizer steps counted from where the checkpoint left
   off (or at ``job.budget``, a lineage total, under successive halving), with
   an evaluation at that point when ``eval_strategy`` is not ``'no'``; keep
   ``num_train_epochs``/``max_steps`` at the length of the whole lineage, which
   the LR schedule spans.
4. **report** -- each evaluation's metrics (with the latest training logs),
   ``epoch``/``step`` and their ``history`` go to ``job.results``, pushed.
5. **save** -- at the end, ``<checkpoint_dir>/<job id>.tar``: one file holding
   the folder Trainer resumes from (``model.safetensors`` and ``config.json``
   through ``save_pretrained``, ``optimizer.pt``, ``scheduler.pt``,
   ``rng_state.pth``, ``trainer_state.json``, plus ``schedy.json``), written
   atomically (local folder or fsspec URL), recorded as ``model_path``, and
   the checkpoints no job needs are pruned (``keep_top_k``).
   :func:`checkpoint_folder` unpacks one, e.g. for ``from_pretrained``.

Refused with a message: DeepSpeed and FSDP (their checkpoints are sharded
folders this callback does not save), ``load_best_model_at_end`` (PBT's
checkpoint is where training stopped), and several processes that hold
different jobs (``torchrun`` re-runs the script, so every process claims one):
train one job per process and use ``schedy worker NAME --workers N``.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import tarfile
import tempfile
import warnings
from collections.abc import Iterable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

try:
    import torch
    import transformers
except ImportError as error:  # pragma: no cover - exercised only without them
    raise ImportError(
        "schedy.integrations.transformers needs transformers and PyTorch: "
        "pip install 'schedy[transformers]'"
    ) from error

from . import _core
from ._core import (
    MODEL_PATH_KEY,
    JobLike,
    JobTracker,
    MissingMetricError,
    OptimizerMapping,
    PathLike,
)
from ._files import atomic_write, local_copy
from .torch import apply_optimizer_values

if TYPE_CHECKING:
    from transformers import TrainerCallback as _CallbackBase
else:
    _CallbackBase = transformers.TrainerCallback

__all__ = [
    "CHECKPOINT_SUFFIX",
    "SCHEDY_STATE_NAME",
    "MissingMetricError",
    "SchedyCallback",
    "checkpoint_folder",
    "find_callback",
    "train",
]

logger = logging.getLogger(__name__)

#: The callback saves ``<checkpoint_dir>/<job id>.tar``.
CHECKPOINT_SUFFIX = ".tar"
#: What schedy records in a checkpoint folder: the job, its hyperparameters
#: and the optimizer values it trained with (read back when the next job resumes).
SCHEDY_STATE_NAME = "schedy.json"

# The file names Trainer's resume_from_checkpoint reads (transformers.trainer's constants).
_OPTIMIZER_NAME = "optimizer.pt"
_SCHEDULER_NAME = "scheduler.pt"
_TRAINER_STATE_NAME = "trainer_state.json"
_RNG_STATE_NAME = "rng_state.pth"
_WEIGHTS_NAME = "pytorch_model.bin"

#: TrainingArguments field(s) -> the optimizer param-group key they set.
_ARGUMENT_KEYS = {"lr": "learning_rate", "eps": "adam_epsilon", "weight_decay": "weight_decay"}


# -- checkpoints as one file -----------------------------------------------
def _pack(folder: str, target: str) -> None:
    """Write the files of ``folder`` to the tar archive ``target`` (uncompressed)."""
    with tarfile.open(target, "w") as archive:
        for name in sorted(os.listdir(folder)):
            archive.add(os.path.join(folder, name), arcname=name)


def _unpack(archive_path: str, folder: str, shown: str) -> None:
    """Extract a checkpoint archive into ``folder``: plain files and folders only, inside it."""
    try:
        with tarfile.open(archive_path, "r:*") as archive:
            members = archive.getmembers()
            for member in members:
                name = member.name
                if (
                    not (member.isfile() or member.isdir())
                    or os.path.isabs(name)
                    or ".." in name.replace("\\", "/").split("/")
                ):
                    raise ValueError(
                        f"checkpoint {shown} holds {name!r}, which is not a plain file inside it"
                    )
            if hasattr(tarfile, "data_filter"):
                archive.extractall(folder, members=members, filter="data")
            else:  # pragma: no cover - Python < 3.10.12: the members were checked above
                archive.extractall(folder, members=members)
    except tarfile.TarError as error:
        raise ValueError(
            f"{shown} is not a checkpoint written by schedy.integrations.transformers "
            f"(a tar archive of a Trainer checkpoint folder): {error}"
        ) from error


@contextlib.contextmanager
def checkpoint_folder(path: PathLike, job_id: str = "?") -> Iterator[str]:
    """A local folder holding the checkpoint ``path`` (a ``.tar`` this module wrote).

    The folder is what Trainer resumes from and what ``from_pretrained`` loads;
    it is temporary, removed on exit. ``path`` may be an fsspec URL.
    ``job_id`` names the job in a missing checkpoint's error.
    """
    shown = os.fspath(path)
    with (
        local_copy(shown, job_id) as local,
        tempfile.TemporaryDirectory(prefix="schedy-hf-") as folder,
    ):
        _unpack(local, folder, shown)
        yield folder


def _read_schedy_state(folder: str) -> dict[str, Any]:
    try:
        with open(os.path.join(folder, SCHEDY_STATE_NAME), encoding="utf-8") as file:
            state = json.load(file)
    except FileNotFoundError:
        return {}  # a Trainer checkpoint of another origin: no previous values known
    return state if isinstance(state, dict) else {}


# -- what the callback cannot do -------------------------------------------
def _refuse_unsupported(args: Any) -> None:
    """Refuse the ``TrainingArguments`` a PBT job cannot be run with, before it trains."""
    if getattr(args, "deepspeed", None):
        raise ValueError(
            "SchedyCallback does not support DeepSpeed (TrainingArguments(deepspeed=...)): its "
            "sharded checkpoints are not saved nor restored by schedy. Train one job per process "
            "and GPU (`schedy worker NAME --workers N -- python train.py`), without DeepSpeed."
        )
    if getattr(args, "fsdp", None):
        raise ValueError(
            "SchedyCallback does not support FSDP (TrainingArguments(fsdp=...)): its sharded "
            "checkpoints are not saved nor restored by schedy. Train one job per process and "
            "GPU (`schedy worker NAME --workers N -- python train.py`), without FSDP."
        )
    if getattr(args, "load_best_model_at_end", False):
        raise ValueError(
            "SchedyCallback cannot be used with load_best_model_at_end=True: each job's "
            "checkpoint must be the model where its training stopped (PBT keeps the best "
            "members itself, see experiment.best())"
        )


def _check_one_job(job: JobLike, args: Any) -> None:
    """Several processes (``torchrun``) must hold one job; refuse on every rank otherwise."""
    world_size = int(getattr(args, "world_size", 1) or 1)
    if world_size <= 1:
        return
    ids: list[Any] = [None] * world_size
    distributed = torch.distributed
    if distributed.is_available() and distributed.is_initialized():
        distributed.all_gather_object(ids, job.id)
    if len(set(ids)) == 1 and ids[0] == job.id:
        return
    raise RuntimeError(
        f"SchedyCallback: the {world_size} processes of this Trainer hold different jobs "
        f"(this one, rank {getattr(args, 'process_index', '?')}, job {job.id}; all: {ids}): each "
        "process ran experiment.next_job() and claimed its own. schedy trains one job per "
        "process: run one process per GPU (`schedy worker NAME --workers N -- python "
        "train.py`, or schedy.run_workers), which gives each worker its own GPU."
    )


# -- optimizer values --------------------------------------------------------
def _argument_values(args: Any) -> dict[str, Any]:
    """``{param-group key: value}`` the Trainer builds its optimizer from, read from ``args``."""
    values: dict[str, Any] = {}
    for key, field in _ARGUMENT_KEYS.items():
        value = getattr(args, field, None)
        if value is not None:
            values[key] = value
    beta1, beta2 = getattr(args, "adam_beta1", None), getattr(args, "adam_beta2", None)
    if beta1 is not None and beta2 is not None:
        values["betas"] = (beta1, beta2)
    return values


def _from_json(values: Any) -> dict[str, Any] | None:
    """Optimizer values read back from ``schedy.json`` (JSON lists back to tuples)."""
    if not isinstance(values, Mapping):
        return None
    return {str(k): tuple(v) if isinstance(v, list) else v for k, v in values.items()}


def _to_json(values: Mapping[str, Any]) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _decay_groups(optimizer: Any, model: Any, previous: Any) -> list[Any]:
    """The param groups Trainer gave ``weight_decay`` (its no-decay group holds 0.0).

    Known by value when the previous weight decay was not 0; else (all groups
    hold 0.0) by Trainer's own rule on parameter names (biases and norms do
    not decay).
    """
    groups = list(optimizer.param_groups)
    if _core.to_float(previous):
        return [group for group in groups if group.get("weight_decay") == previous]
    nonzero = [group for group in groups if group.get("weight_decay")]
    if nonzero:
        return nonzero
    try:
        # An instance method that uses nothing of the instance (4.40 to 5.x).
        names = set(transformers.Trainer.get_decay_parameter_names(None, model))  # type: ignore[arg-type]
    except Exception:  # pragma: no cover - a future Trainer that needs its instance
        logger.warning("could not tell which parameters decay: weight_decay left as restored")
        return []
    decaying = {id(param) for name, param in model.named_parameters() if name in names}
    return [
        group
        for group in groups
        if group["params"] and all(id(param) in decaying for param in group["params"])
    ]


def _epoch_value(epoch: Any) -> int | float:
    """Trainer's float epoch as a count: an int at an epoch's end, else a fraction."""
    number = float(epoch or 0.0)
    if math.isclose(number, round(number), abs_tol=1e-6):
        return round(number)
    return round(number, 4)


class SchedyCallback(_CallbackBase, _core.JobCallback):
    """Run one schedy job in a ``Trainer``: re-apply hyperparameters, train a budget, report, save.

    Args:
        job: the job from ``experiment.next_job()``.
        monitor: the metric PBT ranks by, as Trainer names it (``'eval_loss'``,
            ``'eval_accuracy'`` with a ``compute_metrics`` returning
            ``accuracy``); reported as ``job.results[monitor]``. Missing after
            an evaluation ran (or at the end of the job):
            :class:`~schedy.integrations.MissingMetricError` listing the
            metrics that exist.
        epochs_per_job: epochs each job trains, counted from where it resumed
            (the default, 1, unless ``steps_per_job`` is given).
        steps_per_job: optimizer steps each job trains instead. A job with a
            ``job.budget`` (successive halving) trains until its lineage
            epoch (or step, with ``steps_per_job``) reaches it.
        checkpoint_dir: folder (or fsspec URL) every worker can read; default
            ``$SCHEDY_CHECKPOINT_DIR``, else ``./checkpoints``.
        optimizer_hyperparameters: ``{job hyperparameter: param-group key}``
            re-applied after a restore on top of the ``TrainingArguments``
            values, for an optimizer Trainer did not build from them (e.g.
            ``{'momentum': 'momentum'}`` with ``optimizers=(SGD(...), None)``).
        keep_top_k: after saving, delete the experiment's checkpoints in
            ``checkpoint_dir`` that no job can need any more, keeping those of
            the ``keep_top_k`` best jobs too; ``None`` keeps everything.
        trackers: a :class:`~schedy.integrations.trackers.TensorBoard` or
            :class:`~schedy.integrations.trackers.MLflow` (or a list of them)
            each job is logged to once it has trained and saved: one run per
            member, hyperparameters as step-indexed metrics, exploits marked.

    Restoring needs the checkpoint passed to ``trainer.train`` -- :func:`train`
    or :meth:`resume_checkpoint` do it. Without a checkpoint (a fresh job) the
    optimizer is left as Trainer built it from the arguments.
    """

    _log_hint = (
        "(Trainer prefixes evaluation metrics with 'eval_'; a compute_metrics function "
        "returns the others.)"
    )
    _validation_hint = (
        "No evaluation ran in this job: pass eval_dataset and eval_strategy='epoch' or "
        "'steps' (schedy then evaluates at the end of each job)."
    )
    _drops_reserved_metrics = True

    def __init__(
        self,
        job: JobLike,
        monitor: str,
        *,
        epochs_per_job: int | None = None,
        steps_per_job: int | None = None,
        checkpoint_dir: PathLike | None = None,
        optimizer_hyperparameters: OptimizerMapping | None = None,
        keep_top_k: int | None = 1,
        trackers: JobTracker | Iterable[JobTracker] | None = None,
    ) -> None:
        super().__init__()
        if epochs_per_job is not None and steps_per_job is not None:
            raise ValueError("give epochs_per_job or steps_per_job, not both")
        if steps_per_job is not None and (
            not isinstance(steps_per_job, int)
            or isinstance(steps_per_job, bool)
            or steps_per_job < 1
        ):
            raise ValueError(
                f"steps_per_job must be an int >= 1 (optimizer steps each job trains), "
                f"not {steps_per_job!r}"
            )
        #: Optimizer steps each job trains (None: the budget is ``epochs_per_job``).
        self.steps_per_job: int | None = steps_per_job
        # TrainingArguments give the optimizer's lr: the job's `learning_rate`/`lr` do not
        # map to it by default here, only what the caller names.
        mapping: dict[str, str | None] = {"learning_rate": None, "lr": None}
        mapping.update(optimizer_hyperparameters or {})
        self._take_job(
            job,
            monitor,
            1 if epochs_per_job is None else epochs_per_job,
            checkpoint_dir,
            mapping,
            keep_top_k,
            CHECKPOINT_SUFFIX,
            trackers,
        )
        self._resume: tuple[str, dict[str, Any]] | None = None

    def _reset(self) -> None:
        super()._reset()
        #: Global step at which this job's budget started.
        self.start_step: int | None = None
        self._training = False
        self._logs: dict[str, float] = {}
        self._reported_step: int | None = None

    # -- restoring ---------------------------------------------------------
    @contextlib.contextmanager
    def resume_checkpoint(self) -> Iterator[str | None]:
        """The local folder to pass as ``trainer.train(resume_from_checkpoint=...)``.

        None for a job without ``model_path`` (a fresh start); else the job's
        checkpoint unpacked to a temporary folder, removed on exit.
        """
        path = self.job.results.get(MODEL_PATH_KEY)
        if not path:
            self._resume = None
            yield None
            return
        with checkpoint_folder(str(path), self.job.id) as folder:
            self._resume = (str(path), _read_schedy_state(folder))
            try:
                yield folder
            finally:
                self._resume = None

    # -- hooks -------------------------------------------------------------
    def on_init_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        _refuse_unsupported(args)  # when the Trainer is built, before any training
        return control

    def on_train_begin(
        self,
        args: Any,
        state: Any,
        control: Any,
        *,
        model: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> Any:
        # Trainer calls this after _load_optimizer_and_scheduler: the restored
        # optimizer holds the checkpoint's hyperparameters, which ours replace.
        _refuse_unsupported(args)
        _check_one_job(self.job, args)
        resume = self._resume
        self._reset()
        self._training = True
        schedy_state: dict[str, Any] = {}
        if resume is not None:
            self.restored_from, schedy_state = resume
        resumed = resume is not None or state.global_step > 0
        if resumed and optimizer is not None:
            self._reapply(args, model, optimizer, lr_scheduler, schedy_state)
        self.start_epoch = self._budget_start(schedy_state, _whole_epochs(state.epoch))
        start_step = schedy_state.get("start_step")
        same_job = schedy_state.get("job_id") == self.job.id
        self.start_step = (
            start_step if same_job and _core.is_count(start_step) else int(state.global_step)
        )
        if resumed and state.max_steps and state.global_step >= state.max_steps:
            warnings.warn(
                f"job {self.job.id} resumed at step {state.global_step}, which reaches the "
                f"Trainer's max_steps ({state.max_steps}, from num_train_epochs or max_steps): it "
                "will not train. schedy stops each job after its budget, so set "
                "num_train_epochs/max_steps to the length of the whole lineage",
                stacklevel=2,
            )
        if resumed:
            logger.info(
                "job %s: resumed at step %d (epoch %s)", self.job.id, state.global_step, state.epoch
            )
        return control

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.steps_per_job is not None:
            should_stop, reason = self._steps_decision(int(state.global_step))
            if should_stop:
                self._stop(args, control, reason)
        return control

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> Any:
        if self.stopping_reason is not None and self._reported_step == state.global_step:
            # A budget of steps ended this epoch early and was evaluated already.
            control.should_evaluate = False
        if self.steps_per_job is None and self.stopping_reason is None:
            epoch = _epoch_value(state.epoch)
            if isinstance(epoch, int):
                should_stop, reason = self.budget_decision(epoch)
                if should_stop:
                    self._stop(args, control, reason)
        return control

    def on_log(
        self,
        args: Any,
        state: Any,
        control: Any,
        logs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if self._training and logs:
            self._logs.update(_core.extract_metrics(logs))
        return control

    def on_evaluate(
        self,
        args: Any,
        state: Any,
        control: Any,
        metrics: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> Any:
        if not self._training:
            return control  # trainer.evaluate() outside train(): not this job's progress
        self._validated = True
        if self._reported_step == state.global_step:
            return control  # evaluated again at the same step: the same model
        self._report(state, {**self._logs, **_core.extract_metrics(metrics or {})}, final=False)
        return control

    def on_train_end(
        self,
        args: Any,
        state: Any,
        control: Any,
        *,
        model: Any = None,
        optimizer: Any = None,
        lr_scheduler: Any = None,
        **kwargs: Any,
    ) -> Any:
        if not self._training:
            return control
        self._training = False
        if self._reported_step != state.global_step or not self._validated:
            self._report(state, dict(self._logs), final=True)
        if state.is_world_process_zero:
            self._save(args, state, model, optimizer, lr_scheduler)
        return control

    # -- helpers -----------------------------------------------------------
    def _steps_decision(self, global_step: int) -> tuple[bool, str | None]:
        start = global_step if self.start_step is None else self.start_step
        budget = _core.job_budget(self.job)
        if budget is not None:
            if global_step >= budget:
                return True, f"reached the job's budget: step {global_step} >= job.budget {budget}"
            return False, None
        if global_step - start >= (self.steps_per_job or 1):
            return True, (
                f"trained {global_step - start} step(s) in this job (steps {start + 1} to "
                f"{global_step}; steps_per_job={self.steps_per_job})"
            )
        return False, None

    def _stop(self, args: Any, control: Any, reason: str | None) -> None:
        control.should_training_stop = True
        if _evaluates(args):
            control.should_evaluate = True  # the monitor, measured where the job ends
        self.stopped(reason)

    def _report(self, state: Any, logs: Mapping[str, Any], *, final: bool) -> None:
        logs = {name: value for name, value in logs.items() if name != "epoch"}  # Trainer's own
        metrics = self.epoch_metrics(logs, final=final)
        if not state.is_world_process_zero:
            return
        self._reported_step = int(state.global_step)
        # A fraction of an epoch when a budget of steps ends mid-epoch.
        epoch: Any = _epoch_value(state.epoch)
        _core.record_epoch(self.job.results, metrics, epoch=epoch, step=int(state.global_step))
        self.job.put()

    def _explored_values(self, args: Any) -> dict[str, Any]:
        return {**_argument_values(args), **self.optimizer_values}

    def _reapply(
        self,
        args: Any,
        model: Any,
        optimizer: Any,
        lr_scheduler: Any,
        schedy_state: Mapping[str, Any],
    ) -> None:
        """Write this job's optimizer values over the restored ones (see the module docstring)."""
        values = self._explored_values(args)
        previous = _from_json(schedy_state.get("optimizer"))
        mapped = self._previous_values(schedy_state)
        if previous is not None and mapped:
            previous.update(mapped)
        groups = list(optimizer.param_groups)
        shared = {
            key: value
            for key, value in values.items()
            if key != "weight_decay" and all(key in group for group in groups)
        }
        apply_optimizer_values(
            [optimizer], [] if lr_scheduler is None else [lr_scheduler], shared, previous
        )
        if isinstance(lr_scheduler, torch.optim.lr_scheduler.LambdaLR):
            _resync_lambda_schedule(lr_scheduler, groups)
        if "weight_decay" in values:
            old = None if previous is None else previous.get("weight_decay")
            if old is None or old != values["weight_decay"]:
                for group in _decay_groups(optimizer, model, old):
                    group["weight_decay"] = values["weight_decay"]

    def _save(self, args: Any, state: Any, model: Any, optimizer: Any, lr_scheduler: Any) -> None:
        """Write the folder Trainer resumes from as ``<job id>.tar``; record, push and prune."""
        schedy_state = {
            **self._checkpoint_state(),
            "start_step": self.start_step,
            "steps_per_job": self.steps_per_job,
            "optimizer": _to_json(_argument_values(args)),
        }

        def write(target: str) -> None:
            with tempfile.TemporaryDirectory(prefix="schedy-hf-") as folder:
                _write_trainer_checkpoint(folder, state, model, optimizer, lr_scheduler)
                with open(os.path.join(folder, SCHEDY_STATE_NAME), "w", encoding="utf-8") as file:
                    json.dump(schedy_state, file, indent=2, sort_keys=True)
                _pack(folder, target)

        with _quiet_progress(bool(getattr(args, "disable_tqdm", False))):
            atomic_write(self.checkpoint_path, write, suffix=CHECKPOINT_SUFFIX)
        logger.info(
            "job %s: saved %s at step %d", self.job.id, self.checkpoint_path, state.global_step
        )
        self._checkpoint_saved()


def _resync_lambda_schedule(scheduler: Any, groups: list[Any]) -> None:
    """Set each group's lr to this job's schedule at the resumed step: ``base * lambda(step)``.

    Every Trainer schedule (``get_scheduler``) is a ``LambdaLR`` whose lambda
    Trainer builds from the current arguments (warm-up, total steps), while
    the restored group still holds the rate the old schedule gave this step;
    the scheduler's next step would fix it, one optimizer step late. For a
    plain continuation this is the value the group holds already.
    """
    lambdas = list(scheduler.lr_lambdas)
    base_lrs = list(scheduler.base_lrs)
    if len(lambdas) != len(groups) or len(base_lrs) != len(groups):
        return
    lrs = [base * fn(scheduler.last_epoch) for base, fn in zip(base_lrs, lambdas)]
    for group, lr in zip(groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)  # what Trainer logs as learning_rate until the next step


def _evaluates(args: Any) -> bool:
    """Whether ``args`` evaluate while training (``evaluation_strategy`` in 4.40)."""
    strategy = getattr(args, "eval_strategy", None) or getattr(args, "evaluation_strategy", "no")
    return str(getattr(strategy, "value", strategy)) != "no"


@contextlib.contextmanager
def _quiet_progress(quiet: bool) -> Iterator[None]:
    """Without transformers' progress bars (``save_pretrained``'s) when ``disable_tqdm``."""
    hf_logging: Any = transformers.utils.logging
    if not quiet or not hf_logging.is_progress_bar_enabled():
        yield
        return
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.enable_progress_bar()


def _whole_epochs(epoch: Any) -> int:
    value = _epoch_value(epoch)
    return value if isinstance(value, int) else math.floor(value)


def _write_trainer_checkpoint(
    folder: str, state: Any, model: Any, optimizer: Any, lr_scheduler: Any
) -> None:
    """What ``Trainer._save_checkpoint`` writes for one process, through public API."""
    if model is None or optimizer is None or lr_scheduler is None:
        raise RuntimeError("the Trainer passed no model, optimizer or scheduler to on_train_end")
    save_pretrained = getattr(model, "save_pretrained", None)
    if callable(save_pretrained):
        save_pretrained(folder)
    else:  # a plain torch module: the state dict Trainer would load
        torch.save(model.state_dict(), os.path.join(folder, _WEIGHTS_NAME))
    torch.save(optimizer.state_dict(), os.path.join(folder, _OPTIMIZER_NAME))
    torch.save(lr_scheduler.state_dict(), os.path.join(folder, _SCHEDULER_NAME))
    torch.save(_rng_states(), os.path.join(folder, _RNG_STATE_NAME))
    state.save_to_json(os.path.join(folder, _TRAINER_STATE_NAME))


def _rng_states() -> dict[str, Any]:
    import numpy as np

    states: dict[str, Any] = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "cpu": torch.random.get_rng_state(),
    }
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.random.get_rng_state_all()
    return states


# -- the one call ------------------------------------------------------------
def find_callback(trainer: Any, job: JobLike | None = None) -> SchedyCallback:
    """The :class:`SchedyCallback` among ``trainer``'s callbacks (the one of ``job``, if given)."""
    callbacks = [
        callback
        for callback in trainer.callback_handler.callbacks
        if isinstance(callback, SchedyCallback)
    ]
    if job is not None:
        callbacks = [callback for callback in callbacks if callback.job.id == job.id]
    if len(callbacks) != 1:
        which = "" if job is None else f" for job {job.id}"
        raise ValueError(
            f"the Trainer has {len(callbacks)} SchedyCallback(s){which}; it needs exactly one: "
            "Trainer(..., callbacks=[SchedyCallback(job, monitor=...)])"
        )
    return callbacks[0]


def train(trainer: Any, job: JobLike | None = None, **kwargs: Any) -> Any:
    """``trainer.train(resume_from_checkpoint=<the job's checkpoint>, **kwargs)``.

    The Trainer's :class:`SchedyCallback` (of ``job``, if given) names the
    checkpoint; a fresh job trains from the model as built. Returns
    Trainer's ``TrainOutput``.
    """
    if "resume_from_checkpoint" in kwargs:
        raise TypeError(
            "train() resumes from the job's checkpoint itself; to pass another one, call "
            "trainer.train(resume_from_checkpoint=...) (hyperparameters are re-applied either way)"
        )
    callback = find_callback(trainer, job)
    with callback.resume_checkpoint() as folder:
        return trainer.train(resume_from_checkpoint=folder, **kwargs)
