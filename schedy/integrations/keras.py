"""Keras 3: one callback runs the whole PBT worker loop inside ``model.fit``.

::

    from schedy.integrations.keras import SchedyCallback

    with experiment.next_job() as job:
        model = build_model(job.hyperparameters)  # compiled, lr from the job
        model.fit(x, y, epochs=1000, validation_data=(x_val, y_val),
                  callbacks=[SchedyCallback(job, monitor='val_accuracy')])

For each job the callback

1. restores the checkpoint ``job.results['model_path']`` names, if any (the
   member's own last one, or a better member's after an exploit) into the
   compiled model: weights *and* optimizer state (Adam moments, SGD momentum,
   the ``iterations`` counter), and the epoch counter of the lineage;
2. re-applies the job's optimizer hyperparameters on top (``learning_rate``
   or ``lr`` by default, more via ``optimizer_hyperparameters``), so a value
   PBT perturbed is never overwritten by the restored state;
3. stops ``fit`` after ``epochs_per_job`` epochs, whatever its ``epochs``;
4. reports every logged metric (latest values, ``epoch``, ``step`` and a
   per-epoch ``history``) into ``job.results`` and pushes it after each epoch;
5. saves ``<checkpoint_dir>/<job id>.weights.h5`` at the end of ``fit``,
   records it as ``job.results['model_path']`` for the next job, and prunes
   the checkpoints no job can need any more (``keep_top_k``).

Checkpoints are Keras weights files (``model.save_weights``), which hold the
model's variables and the optimizer's, plus a ``schedy`` attribute (JSON: the
epoch and step counters, the job id and the hyperparameters they were trained
with). They load into the model the worker built from the job's
hyperparameters, so any model works -- functional, ``Sequential`` or
subclassed -- without serializing its architecture, and loading runs no code
from the shared folder. To use a checkpoint outside schedy, build the model
and call ``model.load_weights(job.results['model_path'])``.

``epoch`` counts epochs along the lineage: a job that continues a checkpoint
trained 3 epochs reports epochs 4, 5, ... although ``fit`` counts from 0
again (``fit(initial_epoch=...)`` cannot be set from a callback). ``step`` is
``optimizer.iterations``, which the checkpoint carries on.

A learning rate given as a ``keras.optimizers.schedules.LearningRateSchedule``
(or a callable) cannot be set: the schedule owns it. Since the callback
restores ``optimizer.iterations``, the schedule goes on where the parent left
it. Build the schedule from the job's hyperparameter and tell schedy not to
touch it, with ``optimizer_hyperparameters={'learning_rate': None}``; without
that the callback refuses such an optimizer at the start of ``fit`` rather
than silently ignore the job's learning rate.

Works with any Keras 3 backend that ``model.fit`` supports (tested on torch);
this module imports ``keras`` but never chooses its backend.
"""

from __future__ import annotations

import json
import logging
import warnings
from collections.abc import Iterable, Mapping
from typing import Any

try:
    import keras
except ImportError as error:  # e.g. no KERAS_BACKEND set and no TensorFlow, Keras' default
    raise ImportError(
        "schedy.integrations.keras needs Keras 3 with a backend it can import: "
        "pip install keras torch, and set KERAS_BACKEND=torch (or jax) before keras is imported "
        f"({error})"
    ) from error
import h5py  # a dependency of Keras 3 itself: it writes the weights files

if int(keras.__version__.split(".", 1)[0]) < 3:
    raise ImportError(
        f"schedy.integrations.keras needs Keras 3 (found {keras.__version__}): pip install -U keras"
    )

from .. import _values
from . import _core
from ._core import (
    MODEL_PATH_KEY,
    JobLike,
    JobTracker,
    MissingMetricError,
    OptimizerMapping,
    PathLike,
    is_count,
)
from ._files import atomic_write, local_copy

__all__ = ["CHECKPOINT_SUFFIX", "MissingMetricError", "SchedyCallback"]

logger = logging.getLogger(__name__)

#: The callback saves ``<checkpoint_dir>/<job id>.weights.h5`` (the suffix
#: ``model.save_weights`` requires).
CHECKPOINT_SUFFIX = ".weights.h5"

# The HDF5 attribute of the checkpoint's root that holds schedy's JSON metadata.
_METADATA_ATTRIBUTE = "schedy"
# `_core` names the learning rate "lr" (torch's key); Keras calls it "learning_rate".
_LR = "lr"
_KERAS_LR = "learning_rate"

_VALIDATION_HINT = (
    "No validation ran in this job: a 'val_' metric needs validation_data= (or "
    "validation_split=) in model.fit, and validation_freq <= epochs_per_job."
)


class SchedyCallback(keras.callbacks.Callback, _core.JobCallback):  # type: ignore[misc]  # keras is untyped
    """Run one schedy job in ``model.fit`` -- restore, re-apply hyperparameters, train, save.

    Args:
        job: the job from ``experiment.next_job()``.
        monitor: the logged metric PBT ranks by (e.g. ``'val_accuracy'``); it
            is reported as ``job.results[monitor]``. Missing at an epoch end
            after validation ran in this job (or at the end of the job):
            :class:`~schedy.integrations.MissingMetricError` listing the
            metrics that exist.
        epochs_per_job: epochs each job trains, counted from where it resumed;
            ``fit``'s ``epochs`` can stay large. A job with a ``job.budget``
            (successive halving, Hyperband) trains until its lineage epoch
            equals the budget instead.
        checkpoint_dir: folder (or fsspec URL) every worker can read; default
            ``$SCHEDY_CHECKPOINT_DIR``, else ``./checkpoints``.
        optimizer_hyperparameters: extra ``{job hyperparameter: optimizer
            attribute}`` to re-apply after a restore, e.g. ``{'wd':
            'weight_decay', 'b1': 'beta_1'}``; ``learning_rate`` and ``lr``
            set the optimizer's ``learning_rate`` by default (map one to
            ``None`` to drop it). Attributes the optimizer lacks are refused
            at the start of ``fit``.
        keep_top_k: after saving, delete the checkpoints of the experiment in
            ``checkpoint_dir`` that no job may continue from, keeping those of
            the ``keep_top_k`` best jobs too; ``None`` keeps everything.
        trackers: a :class:`~schedy.integrations.trackers.TensorBoard` or
            :class:`~schedy.integrations.trackers.MLflow` (or a list of them)
            each job is logged to once it has trained and saved: one run per
            member, hyperparameters as step-indexed metrics, exploits marked.
            Needs a job from a store (a ``job.experiment``).

    Re-applying follows :func:`schedy.integrations._core.update_param_group`:
    a value equal to the one the checkpoint was trained with leaves the
    restored state as it is (so a plain continuation is uninterrupted
    training, a rate lowered by ``ReduceLROnPlateau`` included); a changed
    learning rate scales the restored one by ``new / old``; other values are
    set. Without a checkpoint to restore, the optimizer is left as the model
    was compiled from the job's hyperparameters.
    """

    _validation_hint = _VALIDATION_HINT

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
        #: Lineage epoch at which this ``fit`` started (the restored checkpoint's).
        self.initial_epoch = 0
        #: Epochs this ``fit`` completed so far.
        self.epochs_run = 0
        self._training = False
        self._last_metrics: dict[str, float] | None = None

    def _optimizer_names(self, values: Mapping[str, Any]) -> dict[str, Any]:
        return _keras_names(values)

    # -- hooks -------------------------------------------------------------
    def on_train_begin(self, logs: Mapping[str, Any] | None = None) -> None:
        self._reset()
        self._training = True
        model = self.model
        optimizer = _optimizer_of(model)
        _check_targets(optimizer, self.optimizer_values)
        # Hyperparameters named like an optimizer setting (weight_decay, beta_1,
        # momentum…) built it: re-applied after a restore like the learning rate.
        settings = {name for name in optimizer.get_config() if _owner(optimizer, name) is not None}
        self.check_settings(settings)
        path = self.job.results.get(MODEL_PATH_KEY)
        if not path:
            self.start_epoch = self.initial_epoch = 0
            return
        metadata = self._restore(model, optimizer, str(path))
        # The rate is `lr` here, already in optimizer_values under its own name.
        values, previous = self.restored_values(metadata, settings, skip=_KERAS_LR)
        apply_optimizer_values(optimizer, values, previous)
        self.initial_epoch = _lineage_epoch(metadata, self.job.results)
        self.start_epoch = self._budget_start(metadata, self.initial_epoch)

    def on_test_end(self, logs: Mapping[str, Any] | None = None) -> None:
        # fit() runs validation through evaluate() with the same callbacks.
        if self._training:
            self._validated = True

    def on_epoch_end(self, epoch: int, logs: Mapping[str, Any] | None = None) -> None:
        # `epoch` is fit's own index (from its initial_epoch); the lineage's is ours.
        self.epochs_run += 1
        epochs_completed = self.initial_epoch + self.epochs_run
        should_stop = self.budget_reached(epochs_completed)
        metrics = self.epoch_metrics(logs or {}, final=should_stop)
        self._last_metrics = metrics
        step = _iterations(_optimizer_of(self.model))
        _core.record_epoch(self.job.results, metrics, epoch=epochs_completed, step=step)
        self.job.put()
        if should_stop:
            self.model.stop_training = True

    def on_train_end(self, logs: Mapping[str, Any] | None = None) -> None:
        self._training = False
        if self._last_metrics is None:
            warnings.warn(
                f"job {self.job.id}: model.fit ran no epoch (epochs <= initial_epoch?); "
                "its checkpoint is saved unchanged",
                stacklevel=2,
            )
        elif self.monitor not in self._last_metrics:
            # fit ended before the budget (its `epochs`, EarlyStopping) on an
            # epoch without the monitor: PBT could not rank this job.
            raise self._missing_monitor(self._last_metrics)
        self._save(self.model)
        self._checkpoint_saved()

    # -- helpers -----------------------------------------------------------
    def _restore(self, model: Any, optimizer: Any, path: str) -> dict[str, Any]:
        """Load weights and optimizer state from ``path``; return its schedy metadata."""
        if not model.built:
            raise ValueError(
                f"job {self.job.id}: the model must be built before its checkpoint {path} is "
                "restored (model.fit builds it; or call it on a batch of data)"
            )
        if not optimizer.built:
            # Without its variables the optimizer state would be skipped, with a mere warning.
            optimizer.build(model.trainable_variables)
        with local_copy(path, self.job.id) as local:  # Keras reads local files only
            metadata = _read_metadata(local)
            model.load_weights(local)
        step = metadata.get("step")
        if is_count(step) and _iterations(optimizer) != step:
            raise ValueError(
                f"checkpoint {path} was saved after {step} optimizer steps, but the optimizer "
                f"restored {_iterations(optimizer)}: its state was not loaded (Keras skips an "
                "optimizer whose variables differ, with a mere warning). Compile the model with "
                "the kind of optimizer the checkpoint was trained with "
                f"({type(optimizer).__name__} here), and a learning rate of the same kind (a "
                "float, or a schedule: only a float one is a variable of the optimizer)"
            )
        self.restored_from = path
        logger.info(
            "job %s: restored %s at epoch %s",
            self.job.id,
            path,
            metadata.get("epoch", "(unknown)"),
        )
        return metadata

    def _save(self, model: Any) -> None:
        """Write this job's checkpoint, whole or not at all."""
        epoch = self.initial_epoch + self.epochs_run
        state = self._checkpoint_state()
        metadata = {
            **state,
            # JSON in an HDF5 attribute: plain values only.
            "hyperparameters": _values.normalize(state["hyperparameters"], "hyperparameters"),
            "epoch": epoch,
            "step": _iterations(_optimizer_of(model)),
        }
        atomic_write(
            self.checkpoint_path,
            lambda local: _save_weights(model, local, metadata),
            suffix=CHECKPOINT_SUFFIX,
        )
        logger.info("job %s: saved %s at epoch %d", self.job.id, self.checkpoint_path, epoch)


# -- optimizer hyperparameters ---------------------------------------------
def apply_optimizer_values(
    optimizer: Any, values: Mapping[str, Any], previous: Mapping[str, Any] | None = None
) -> None:
    """Apply ``{attribute: value}`` (``'lr'``: the learning rate) to a Keras optimizer.

    ``previous``: the values the restored state was trained with, when known;
    as :func:`schedy.integrations._core.update_param_group` decides for a
    torch param group: an unchanged value is left alone, a new learning rate
    scales the current one by ``new / previous``, anything else is set.
    """
    group = {param: _read(optimizer, param) for param in values}
    before = dict(group)
    _core.update_param_group(group, values, previous)
    for param, value in group.items():
        if value is not before[param]:
            _write(optimizer, param, value)


def _keras_names(values: Mapping[str, Any]) -> dict[str, Any]:
    """``values`` with Keras' ``learning_rate`` folded into ``_core``'s ``lr``."""
    renamed = dict(values)
    if _KERAS_LR in renamed:
        value = renamed.pop(_KERAS_LR)
        if _LR in renamed and renamed[_LR] != value:
            raise ValueError(
                f"the job sets the optimizer's learning rate twice ({renamed[_LR]!r} and "
                f"{value!r}): map only one hyperparameter to it"
            )
        renamed[_LR] = value
    return renamed


def _owner(optimizer: Any, param: str) -> Any:
    """The optimizer holding attribute ``param`` (itself, or the one a LossScaleOptimizer wraps)."""
    for candidate in (optimizer, getattr(optimizer, "inner_optimizer", None)):
        if candidate is None or not hasattr(candidate, param):
            continue
        value = getattr(candidate, param)
        if callable(value) and not isinstance(value, keras.Variable):
            continue  # a method, not a hyperparameter
        return candidate
    return None


def _check_targets(optimizer: Any, values: Mapping[str, Any]) -> None:
    """Refuse values this optimizer cannot take, before anything is trained."""
    for param in values:
        if param == _LR:
            if not isinstance(optimizer.learning_rate, keras.Variable):
                raise ValueError(
                    f"the optimizer's learning_rate is a LearningRateSchedule (or a callable), "
                    f"which owns the rate: schedy cannot set the job's learning rate "
                    f"{values[param]!r} on it. Build the schedule from the job's hyperparameter "
                    "(e.g. ExponentialDecay(job.hyperparameters['learning_rate'], ...); it goes "
                    "on from the restored optimizer.iterations) and pass "
                    "optimizer_hyperparameters={'learning_rate': None} (or {'lr': None}), "
                    "or compile with a float learning rate"
                )
        elif _owner(optimizer, param) is None:
            known = sorted(name for name in optimizer.get_config() if _owner(optimizer, name))
            raise ValueError(
                f"optimizer {type(optimizer).__name__} has no hyperparameter {param!r} to set "
                f"from the job; its hyperparameters: {known}"
            )


def _read(optimizer: Any, param: str) -> Any:
    value = optimizer.learning_rate if param == _LR else getattr(_owner(optimizer, param), param)
    if isinstance(value, keras.Variable):
        return float(keras.ops.convert_to_numpy(value))
    return value


def _write(optimizer: Any, param: str, value: Any) -> None:
    if param == _LR:
        optimizer.learning_rate = value  # assigns its variable
        return
    owner = _owner(optimizer, param)
    current = getattr(owner, param)
    if isinstance(current, keras.Variable):
        current.assign(value)
    else:
        setattr(owner, param, value)


def _optimizer_of(model: Any) -> Any:
    optimizer = getattr(model, "optimizer", None)
    if optimizer is None:
        raise ValueError(
            "SchedyCallback needs a compiled model: call model.compile(optimizer=...) before fit"
        )
    return optimizer


def _iterations(optimizer: Any) -> int:
    return int(keras.ops.convert_to_numpy(optimizer.iterations))


# -- counters --------------------------------------------------------------
def _lineage_epoch(metadata: Mapping[str, Any], results: Mapping[str, Any]) -> int:
    """Epochs trained behind a restored checkpoint: its own record, else the results'."""
    for candidate in (metadata.get(_core.EPOCH_KEY), results.get(_core.EPOCH_KEY)):
        if is_count(candidate):
            return candidate
    return 0


# -- checkpoint files -------------------------------------------------------
def _read_metadata(path: str) -> dict[str, Any]:
    """schedy's metadata in a weights file; ``{}`` for other files (e.g. a ``.keras`` model)."""
    if not h5py.is_hdf5(path):
        return {}
    with h5py.File(path, "r") as file:
        raw = file.attrs.get(_METADATA_ATTRIBUTE)
    if raw is None:
        return {}
    metadata = json.loads(raw.decode() if isinstance(raw, bytes) else str(raw))
    return metadata if isinstance(metadata, dict) else {}


def _save_weights(model: Any, path: str, metadata: Mapping[str, Any]) -> None:
    model.save_weights(path, overwrite=True)
    with h5py.File(path, "a") as file:
        file.attrs[_METADATA_ATTRIBUTE] = _values.dumps(metadata)
