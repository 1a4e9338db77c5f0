"""Framework-agnostic core of schedy's training integrations.

Every integration (Lightning, plain torch, Keras, ...) runs the same PBT worker
loop -- restore the checkpoint the job's results name, re-apply the job's
hyperparameters to the optimizer, train ``epochs_per_job`` epochs, save, report
-- and differs only in how it reaches its framework's objects. What does not
depend on the framework lives here, once, as pure functions on plain Python
data, so each callback stays a thin layer of hooks:

- metrics: :func:`to_float`, :func:`extract_metrics`, :func:`without_reserved`,
  :func:`monitored_value` (raises :class:`MissingMetricError` listing the
  metrics that exist);
- the epoch budget: :func:`check_epochs_per_job`, :func:`budget_decision`,
  :func:`is_count` (an epoch or step counter read back from a checkpoint);
- optimizer hyperparameters: :func:`resolve_mapping`, :func:`optimizer_values`
  (job hyperparameters -> ``{optimizer_param: value}``),
  :func:`previous_optimizer_values` (the same for the hyperparameters a
  restored checkpoint was trained with) and :func:`update_param_group`
  (applies them to one torch-style param-group dict without undoing a
  learning-rate schedule);
- checkpoints: :func:`checkpoint_dir`, :func:`checkpoint_path` (local paths
  and fsspec URLs alike; reading and writing the files is
  :mod:`schedy.integrations._files`' job, pruning them
  :mod:`schedy.integrations._checkpoints`');
- reporting: :func:`record_epoch` (latest values, ``epoch``/``step`` and the
  per-epoch ``history`` in ``job.results``);
- :class:`JobCallback`: what the Lightning, Keras and Transformers callbacks
  share -- their arguments, checked once, the per-job state, the epoch
  budget, the per-epoch metrics and the monitor requirement, the state saved
  with a checkpoint and what follows a save (recording ``model_path``,
  pruning, logging the job to its ``trackers=``) -- so each keeps only the
  hooks of its framework.

Nothing here imports torch, Lightning or Keras; values are duck-typed
(anything with ``.item()``/``__float__`` is a number). Imports go one way:
``_files`` <- ``_checkpoints`` <- ``_core`` <- the framework modules.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, ClassVar, Protocol, TypeAlias, TypeGuard

from ..errors import SchedyError
from ._checkpoints import check_keep_top_k, prune_after_save
from ._files import MODEL_PATH_KEY, PathLike, artifact_location, fsspec_module, is_url

#: The integrations' own log (each framework module's records go under it too).
logger = logging.getLogger("schedy.integrations")

__all__ = [
    "CHECKPOINT_DIR_ENV",
    "DEFAULT_CHECKPOINT_DIR",
    "DEFAULT_OPTIMIZER_HYPERPARAMETERS",
    "EPOCH_KEY",
    "HISTORY_KEY",
    "MODEL_PATH_KEY",
    "RESERVED_RESULTS",
    "SCHEDULED_PARAMS",
    "STEP_KEY",
    "JobCallback",
    "JobLike",
    "JobTracker",
    "MissingMetricError",
    "OptimizerMapping",
    "PathLike",
    "budget_decision",
    "check_epochs_per_job",
    "check_monitor",
    "check_trackers",
    "checkpoint_dir",
    "checkpoint_path",
    "extract_metrics",
    "fsspec_module",
    "is_count",
    "is_url",
    "job_budget",
    "monitored_value",
    "optimizer_values",
    "previous_optimizer_values",
    "record_epoch",
    "report_unplaced",
    "resolve_mapping",
    "to_float",
    "total_budget_decision",
    "update_param_group",
    "with_named_settings",
    "without_reserved",
]

# MODEL_PATH_KEY (the result naming the checkpoint a job continues from),
# PathLike, is_url and fsspec_module come from ._files, and are re-exported.
#: Per-epoch history of every reported metric, ``{name: [value per epoch]}``.
HISTORY_KEY = "history"
#: Epochs trained so far along the lineage (not only in this job).
EPOCH_KEY = "epoch"
#: Optimizer steps taken so far along the lineage.
STEP_KEY = "step"
#: Result names the integrations write themselves; a metric may not use them.
RESERVED_RESULTS = frozenset({MODEL_PATH_KEY, HISTORY_KEY, EPOCH_KEY, STEP_KEY})

#: Where checkpoints go when no ``checkpoint_dir`` is given.
CHECKPOINT_DIR_ENV = "SCHEDY_CHECKPOINT_DIR"
#: ... and when that variable is not set either (relative to the working folder).
DEFAULT_CHECKPOINT_DIR = "checkpoints"

#: Job hyperparameter -> optimizer parameter, applied when the job has them.
DEFAULT_OPTIMIZER_HYPERPARAMETERS: Mapping[str, str] = {"learning_rate": "lr", "lr": "lr"}
#: Optimizer parameters that LR schedulers move during training: a new value is
#: applied as a new *base*, keeping the schedule's progress (see
#: :func:`update_param_group`).
SCHEDULED_PARAMS = frozenset({"lr"})

#: ``{job hyperparameter: optimizer parameter or None}``; None drops a default.
OptimizerMapping: TypeAlias = Mapping[str, str | None]


class JobLike(Protocol):
    """What the integrations need of a :class:`schedy.Job` (stubs in tests)."""

    @property
    def id(self) -> str: ...

    @property
    def hyperparameters(self) -> dict[str, Any]: ...

    @property
    def results(self) -> dict[str, Any]: ...

    def put(self) -> None: ...


class JobTracker(Protocol):
    """What a callback's ``trackers=`` take: :class:`~schedy.integrations.trackers.TensorBoard`,
    :class:`~schedy.integrations.trackers.MLflow`, or anything with ``log_job(job)``."""

    def log_job(self, job: Any) -> bool: ...


class MissingMetricError(SchedyError, KeyError, ValueError):
    """The monitored metric was not logged; the message lists those that were.

    A ``KeyError`` (a name that is not there) and a ``ValueError`` (a bad
    ``monitor`` argument) alike, so either ``except`` catches it. ``hint``
    is a framework's own advice, appended to the message.
    """

    def __init__(self, monitor: str, available: Iterable[str], hint: str = "") -> None:
        self.monitor = monitor
        self.available = sorted(available)
        names = ", ".join(repr(name) for name in self.available) or "none"
        message = (
            f"monitored metric {monitor!r} was not logged; metrics that exist: {names}. "
            f"Pass one of them as monitor=, or log {monitor!r}."
        )
        self.message = f"{message} {hint}".rstrip()
        super().__init__(self.message)

    def __str__(self) -> str:  # KeyError would show the message in quotes
        return self.message


# -- metrics ---------------------------------------------------------------
def to_float(value: Any) -> float | None:
    """``value`` as a float if it is one number (tensor, numpy scalar, ...), else None.

    Tensors and arrays must hold exactly one element; strings are not numbers
    here even when they parse as one.
    """
    if isinstance(value, (str, bytes)) or value is None:
        return None
    if isinstance(value, (bool, int, float)):
        return float(value)
    item = getattr(value, "item", None)
    if callable(item):
        numel = getattr(value, "numel", None)  # torch: a method; numpy: .size is an int
        size = numel() if callable(numel) else getattr(value, "size", 1)
        if size != 1:
            return None
        try:
            return float(item())
        except (TypeError, ValueError):
            return None
    try:
        return float(value)  # e.g. TensorFlow eager scalars, Decimal
    except (TypeError, ValueError):
        return None


def extract_metrics(logs: Mapping[str, Any]) -> dict[str, float]:
    """The scalar entries of a framework's metric dict, as plain floats."""
    metrics: dict[str, float] = {}
    for name, value in logs.items():
        number = to_float(value)
        if number is not None:
            metrics[str(name)] = number
    return metrics


def without_reserved(metrics: Mapping[str, float]) -> tuple[dict[str, float], list[str]]:
    """``(metrics, dropped)``: a framework's own ``epoch``/``step`` (etc.) metrics set aside.

    Callbacks report whatever the user logged; a metric named like a result
    schedy writes itself (e.g. ``self.log('step', ...)``) cannot be stored
    under that name, and must not crash the job either.
    """
    dropped = sorted(name for name in metrics if name in RESERVED_RESULTS)
    kept = {name: value for name, value in metrics.items() if name not in RESERVED_RESULTS}
    return kept, dropped


def check_monitor(monitor: Any) -> str:
    """Validate a ``monitor`` argument (a metric name schedy does not write itself)."""
    if not isinstance(monitor, str) or not monitor:
        raise ValueError(f"monitor must name a logged metric (e.g. 'val_acc'), not {monitor!r}")
    if monitor in RESERVED_RESULTS:
        raise ValueError(
            f"monitor={monitor!r} is a result schedy writes itself "
            f"({sorted(RESERVED_RESULTS)}); log the metric under another name"
        )
    return monitor


def monitored_value(metrics: Mapping[str, float], monitor: str, hint: str = "") -> float:
    """The monitored metric; :class:`MissingMetricError` listing the others if absent."""
    if monitor not in metrics:
        raise MissingMetricError(monitor, metrics, hint)
    return metrics[monitor]


def check_trackers(trackers: Any) -> tuple[JobTracker, ...]:
    """Validate a callback's ``trackers=``: None, one tracker, or several."""
    if trackers is None:
        return ()
    candidates = (
        [trackers]
        if callable(getattr(trackers, "log_job", None))
        or isinstance(trackers, (str, bytes))
        or not isinstance(trackers, Iterable)
        else list(trackers)
    )
    for tracker in candidates:
        if not callable(getattr(tracker, "log_job", None)):
            raise TypeError(
                "trackers= takes experiment trackers (schedy.integrations.trackers.TensorBoard"
                "('tb/NAME') or MLflow('sqlite:///mlflow.db'), or anything with a "
                f"log_job(job) method), one or a list of them, not {tracker!r}"
            )
    return tuple(candidates)


# -- epoch budget ----------------------------------------------------------
def check_epochs_per_job(epochs_per_job: Any) -> int:
    """Validate ``epochs_per_job``: an int >= 1."""
    if (
        not isinstance(epochs_per_job, int)
        or isinstance(epochs_per_job, bool)
        or epochs_per_job < 1
    ):
        raise ValueError(
            f"epochs_per_job must be an int >= 1 (epochs each job trains), not {epochs_per_job!r}"
        )
    return epochs_per_job


def is_count(value: Any) -> TypeGuard[int]:
    """Whether ``value`` is an epoch or step counter: an int >= 0 (not a bool)."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def budget_decision(
    start_epoch: int, epochs_completed: int, epochs_per_job: int
) -> tuple[bool, str | None]:
    """Whether a job that started at ``start_epoch`` has trained its budget.

    Epochs count along the lineage (a restored checkpoint's counter goes on),
    so the budget is measured from where this job resumed, not from zero.
    Returns ``(should_stop, reason)``.
    """
    trained = epochs_completed - start_epoch
    if trained >= epochs_per_job:
        return True, (
            f"trained {trained} epoch(s) in this job (epochs {start_epoch} to "
            f"{epochs_completed - 1}; epochs_per_job={epochs_per_job})"
        )
    return False, None


def job_budget(job: Any) -> int | None:
    """The lineage epoch ``job`` must reach (``job.budget``, successive halving's
    rung), as an epoch count; None when its experiment sets no budget."""
    budget = getattr(job, "budget", None)
    if budget is None or not _is_positive_number(budget):
        return None
    return max(1, math.ceil(float(budget) - 1e-9))


def total_budget_decision(
    start_epoch: int, epochs_completed: int, budget: int
) -> tuple[bool, str | None]:
    """Whether a job whose model must reach lineage epoch ``budget`` is there.

    Successive halving gives each rung a *total* resource: a promoted
    configuration trains from its checkpoint until its epoch counter equals
    the rung's budget, however many epochs that is in this job.
    """
    if epochs_completed >= budget:
        return True, (
            f"reached the job's budget: lineage epoch {epochs_completed} >= job.budget "
            f"{budget} (trained epochs {start_epoch} to {epochs_completed - 1} in this job)"
        )
    return False, None


# -- optimizer hyperparameters ---------------------------------------------
def resolve_mapping(mapping: OptimizerMapping | None = None) -> dict[str, str]:
    """The defaults (``learning_rate``/``lr`` -> ``lr``) updated with ``mapping``.

    ``mapping`` adds ``{job hyperparameter: optimizer parameter}`` entries; an
    entry mapped to ``None`` removes a default (e.g. ``{'lr': None}`` when the
    hyperparameter named ``lr`` is not the optimizer's).
    """
    resolved = dict(DEFAULT_OPTIMIZER_HYPERPARAMETERS)
    if mapping is None:
        return resolved
    if not isinstance(mapping, Mapping):
        raise TypeError(
            "optimizer hyperparameters must be a dict {job hyperparameter: optimizer "
            f"parameter}}, e.g. {{'wd': 'weight_decay'}}, not {mapping!r}"
        )
    for hyperparameter, param in mapping.items():
        if not isinstance(hyperparameter, str) or not (param is None or isinstance(param, str)):
            raise TypeError(
                "optimizer hyperparameters map names to names (or None to drop a default), "
                f"got {hyperparameter!r}: {param!r}"
            )
        if param is None:
            resolved.pop(hyperparameter, None)
        else:
            resolved[hyperparameter] = param
    return resolved


def optimizer_values(
    hyperparameters: Mapping[str, Any],
    mapping: OptimizerMapping | None = None,
    *,
    strict: bool = True,
) -> dict[str, Any]:
    """``{optimizer parameter: value}`` that the job's hyperparameters set.

    Default entries apply when the job has the hyperparameter. Entries the
    caller named in ``mapping`` are required when ``strict`` (a typo must not
    leave the optimizer silently untouched). Two hyperparameters that set one
    parameter to different values are an error.
    """
    resolved = resolve_mapping(mapping)  # first: a TypeError for a non-mapping
    explicit = {k for k, v in (mapping or {}).items() if v is not None}
    values: dict[str, Any] = {}
    source: dict[str, str] = {}
    for hyperparameter, param in resolved.items():
        if hyperparameter not in hyperparameters:
            if strict and hyperparameter in explicit:
                raise ValueError(
                    f"optimizer hyperparameter {hyperparameter!r} (-> {param!r}) is not among "
                    f"the job's hyperparameters: {sorted(hyperparameters)}"
                )
            continue
        value = hyperparameters[hyperparameter]
        if param in values and values[param] != value:
            raise ValueError(
                f"hyperparameters {source[param]!r} = {values[param]!r} and {hyperparameter!r} = "
                f"{value!r} both set the optimizer's {param!r}; drop one from the mapping "
                f"(e.g. {{{hyperparameter!r}: None}})"
            )
        values[param] = value
        source[param] = hyperparameter
    return values


def previous_optimizer_values(
    hyperparameters: Any, mapping: OptimizerMapping | None = None
) -> dict[str, Any] | None:
    """:func:`optimizer_values` of the hyperparameters a restored checkpoint was trained with.

    ``hyperparameters`` is what the checkpoint recorded; None (unknown) when
    it is not a mapping. Not strict: that job may lack a hyperparameter the
    mapping names.
    """
    if not isinstance(hyperparameters, Mapping):
        return None
    return optimizer_values(hyperparameters, mapping, strict=False)


#: Optimizer keys never taken from a job by name: not hyperparameters.
_NOT_SETTINGS = frozenset({"params", "initial_lr", "max_lr", "min_lr", "name"})
_reported_unplaced: set[tuple[str, str]] = set()


def with_named_settings(
    values: Mapping[str, Any],
    hyperparameters: Mapping[str, Any],
    settings: Iterable[str],
    mapping: OptimizerMapping | None = None,
) -> dict[str, Any]:
    """``values`` plus every job hyperparameter named like one of the
    optimizer's own ``settings`` (``weight_decay``, ``momentum``, ``betas``,
    ``eps``…, its param-group keys or attributes).

    Such a hyperparameter built the optimizer; after a restore its value is
    the restored one, so a perturbed value must be re-applied like the
    learning rate, or PBT's schedule would only exist on paper. A name the
    caller mapped to None in ``mapping`` is left alone.
    """
    dropped = {name for name, param in (mapping or {}).items() if param is None}
    named = dict(values)
    for name in settings:
        if name in _NOT_SETTINGS or name in named or name in dropped:
            continue
        if name in hyperparameters:
            named[name] = hyperparameters[name]
    return named


def report_unplaced(job: Any, placed: Iterable[str], what: str) -> list[str]:
    """Say once (per experiment and name) which *explored* hyperparameters the
    callback does not apply itself, so nobody believes a perturbation changed
    an optimizer it never reached; return them.

    Those must be applied by the user's code (a model built from
    ``job.hyperparameters`` each job applies its own); the explored names
    come from the experiment (PBT's ``explore``, PB2's ``bounds``).
    """
    scheduler = getattr(getattr(job, "experiment", None), "_scheduler", None)
    explored = set(getattr(scheduler, "explore", None) or ())
    explored |= set(getattr(scheduler, "bounds", None) or ())
    placed = set(placed)
    unplaced = sorted(
        name for name in explored - placed if name not in DEFAULT_OPTIMIZER_HYPERPARAMETERS
    )
    experiment = str(getattr(getattr(job, "experiment", None), "name", ""))
    for name in unplaced:
        if (experiment, name) in _reported_unplaced:
            continue
        _reported_unplaced.add((experiment, name))
        logger.warning(
            "explored hyperparameter %r is not a setting of the %s, so schedy does not "
            "re-apply it after a restore: build what it sets from job.hyperparameters[%r] in "
            "each job (a model built per job does), or map it with "
            "optimizer_hyperparameters={%r: '<optimizer key>'}",
            name,
            what,
            name,
            name,
        )
    return unplaced


#: Param-group keys torch LR schedulers derive the rate from (``initial_lr``:
#: every scheduler's base; ``max_lr``/``min_lr``: OneCycleLR's): a new base
#: rate scales them all, so the whole remaining schedule scales.
_SCHEDULE_KEYS = ("initial_lr", "max_lr", "min_lr")


def _is_positive_number(value: Any) -> bool:
    number = to_float(value)
    return number is not None and math.isfinite(number) and number > 0


def _scaled(current: Any, factor: float) -> Any:
    """``current * factor``; in place for tensors, which fused/capturable optimizers hold on to."""
    mul_ = getattr(current, "mul_", None)
    if callable(mul_):
        mul_(factor)
        return current
    return current * factor


def _assigned(current: Any, value: Any) -> Any:
    fill_ = getattr(current, "fill_", None)
    if callable(fill_) and to_float(value) is not None:
        fill_(value)
        return current
    return value


def update_param_group(
    group: MutableMapping[str, Any],
    values: Mapping[str, Any],
    previous: Mapping[str, Any] | None = None,
) -> None:
    """Apply ``values`` to one torch-style param group, in place.

    ``previous`` holds the values the restored checkpoint was trained with
    (``optimizer_values`` of its job), when known. A value equal to the
    previous one is left alone, so a plain continuation is exactly
    uninterrupted training. A changed learning rate is applied as a new
    *base* that keeps the schedule's progress: the group's ``lr`` and the
    keys schedulers derive it from (``initial_lr``, the base every torch LR
    scheduler starts from; OneCycleLR's ``max_lr``/``min_lr``) are scaled by
    ``new / old base``, where the old base is the previous value or, when
    unknown, ``initial_lr`` -- the rest of the schedule is the one a run
    started with the new value would follow. Without a known base (no
    scheduler, no previous) and for every other parameter the value is
    simply set. So a perturbed value is never overwritten by restored
    optimizer state, and a scheduler given the group's ``initial_lr`` as its
    ``base_lrs`` does not snap back.
    """
    for param, value in values.items():
        if previous is not None and param in previous and previous[param] == value:
            continue
        new = to_float(value)
        if param not in SCHEDULED_PARAMS or new is None:
            group[param] = _assigned(group.get(param), value)
            continue
        old: Any = previous.get(param) if previous is not None else None
        if not _is_positive_number(old):
            old = group.get("initial_lr")
        if _is_positive_number(old) and param in group:
            factor = new / float(old)
            for key in (param, *_SCHEDULE_KEYS):
                if key in group:
                    group[key] = _scaled(group[key], factor)
        else:
            group[param] = _assigned(group.get(param), new)
            if "initial_lr" in group:
                group["initial_lr"] = _assigned(group["initial_lr"], new)


# -- checkpoints -----------------------------------------------------------
def checkpoint_dir(directory: PathLike | None = None) -> str:
    """The checkpoint folder: ``directory``, else ``$SCHEDY_CHECKPOINT_DIR``, else ``checkpoints``.

    Local folders are made absolute (the path is recorded in the job's results
    and read by other workers, whose working folder may differ); URLs are kept
    as they are.
    """
    chosen = os.fspath(directory) if directory is not None else None
    if not chosen:
        chosen = os.environ.get(CHECKPOINT_DIR_ENV) or DEFAULT_CHECKPOINT_DIR
    if is_url(chosen):
        return chosen.rstrip("/")
    return os.path.abspath(os.path.expanduser(chosen))


def checkpoint_path(directory: PathLike | None, job_id: str, suffix: str) -> str:
    """``<checkpoint_dir>/<job_id><suffix>``: one checkpoint per job, never overwritten by another.

    A job id that could climb out of the folder (separators, ``..``) is refused.
    With no folder given or in ``$SCHEDY_CHECKPOINT_DIR``, a job handed out by
    a schedy server that keeps artifacts gets ``schedy://<experiment>/<job
    id>/<job id><suffix>`` instead: written through the server, readable on
    every worker (see :mod:`schedy.integrations._files`).
    """
    if not job_id or "/" in job_id or "\\" in job_id or job_id in (".", ".."):
        raise ValueError(f"job id {job_id!r} cannot name a checkpoint file")
    if not (directory and os.fspath(directory)) and not os.environ.get(CHECKPOINT_DIR_ENV):
        url = artifact_location(job_id, suffix)
        if url is not None:
            return url
    folder = checkpoint_dir(directory)
    name = f"{job_id}{suffix}"
    if is_url(folder):
        return f"{folder}/{name}"
    return os.path.join(folder, name)


# -- reporting -------------------------------------------------------------
def record_epoch(
    results: MutableMapping[str, Any],
    metrics: Mapping[str, float],
    *,
    epoch: int,
    step: int | None = None,
) -> MutableMapping[str, Any]:
    """Write one epoch's metrics into ``results`` (a job's results), in place.

    Sets each metric's latest value, ``epoch`` and ``step`` (when given), and
    appends to ``results['history']``: ``{name: [value per recorded epoch]}``
    including ``epoch`` and ``step`` lists, padded with ``None`` so that every list has
    one entry per recorded epoch. The history is inherited with the results
    (PBT copies them), so it spans the whole lineage.
    """
    for name in metrics:
        if name in RESERVED_RESULTS:
            raise ValueError(
                f"metric {name!r} clashes with a result schedy writes itself "
                f"({sorted(RESERVED_RESULTS)}); log it under another name"
            )
    history = results.get(HISTORY_KEY)
    if not isinstance(history, dict) or not all(isinstance(v, list) for v in history.values()):
        history = {}
    else:
        history = {name: list(values) for name, values in history.items()}
    counters: dict[str, Any] = {EPOCH_KEY: epoch}
    if step is not None:
        counters[STEP_KEY] = step
    row = {**metrics, **counters}
    length = max((len(values) for values in history.values()), default=0)
    for name in [*history, *(name for name in row if name not in history)]:
        column = history.setdefault(name, [])
        column.extend([None] * (length - len(column)))
        column.append(row.get(name))
    results.update(row)
    results[HISTORY_KEY] = history
    return results


# -- what the callbacks share ----------------------------------------------
class JobCallback:
    """The framework-agnostic half of the Lightning and Keras ``SchedyCallback``.

    A callback derives from its framework's ``Callback`` and from this class,
    calls :meth:`_take_job` in its ``__init__`` (every argument checked when
    the callback is built, so a mistake fails before any training) and
    :meth:`_reset` when ``fit`` starts, and keeps the hooks of its framework:
    restoring and saving, reading counters and metrics, stopping training.
    It tells this class about its framework through the class attributes
    below and :meth:`_optimizer_names`.
    """

    #: How to log the monitor in this framework, appended to a
    #: :class:`MissingMetricError` (``{monitor}``: the monitor's repr).
    _log_hint: ClassVar[str] = ""
    #: What a validation metric needs in this framework, appended to a
    #: :class:`MissingMetricError` when no validation ran in this job.
    _validation_hint: ClassVar[str] = ""
    #: Whether logged metrics named like a result schedy writes (``epoch``,
    #: ``step``...) are set aside with a warning; else :func:`record_epoch`
    #: refuses them.
    _drops_reserved_metrics: ClassVar[bool] = False

    job: JobLike
    monitor: str
    epochs_per_job: int
    keep_top_k: int | None
    optimizer_hyperparameters: OptimizerMapping | None
    #: ``{optimizer parameter: value}`` re-applied after a restore.
    optimizer_values: dict[str, Any]
    #: The folder (or URL) checkpoints are saved in and pruned from.
    checkpoint_dir: str
    #: Where this job's checkpoint is saved (``job.results['model_path']`` afterwards).
    checkpoint_path: str
    #: Lineage epoch at which this job's budget started (None until ``fit`` starts).
    start_epoch: int | None
    #: The checkpoint this callback restored (None: a fresh start, or a
    #: checkpoint the framework restored itself).
    restored_from: str | None
    #: Why training was stopped, once the budget is spent.
    stopping_reason: str | None
    #: Whether a validation run ended in this ``fit``.
    _validated: bool
    #: Where each job is logged once it has trained and saved (``trackers=``).
    trackers: tuple[JobTracker, ...]

    def _take_job(
        self,
        job: JobLike,
        monitor: str,
        epochs_per_job: int,
        directory: PathLike | None,
        optimizer_hyperparameters: OptimizerMapping | None,
        keep_top_k: int | None,
        suffix: str,
        trackers: Any = None,
    ) -> None:
        """Check and keep the callback's arguments, then :meth:`_reset`."""
        self.job = job
        self.trackers = check_trackers(trackers)
        self.monitor = check_monitor(monitor)
        self.epochs_per_job = check_epochs_per_job(epochs_per_job)
        self.keep_top_k = check_keep_top_k(keep_top_k)
        self.optimizer_hyperparameters = optimizer_hyperparameters
        self.optimizer_values = self._optimizer_names(
            optimizer_values(job.hyperparameters, optimizer_hyperparameters)
        )
        self.checkpoint_dir = checkpoint_dir(directory)
        self.checkpoint_path = checkpoint_path(directory, job.id, suffix)
        self._reset()

    def _optimizer_names(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Hook: ``{optimizer parameter: value}`` in the framework's names (torch's by default)."""
        return dict(values)

    def _reset(self) -> None:
        """Forget the state of a previous job or ``fit``; a callback extends it with its own."""
        self.start_epoch = None
        self.restored_from = None
        self.stopping_reason = None
        self._validated = False

    # -- pure decisions ----------------------------------------------------
    def budget_decision(self, epochs_completed: int) -> tuple[bool, str | None]:
        """``(should_stop, reason)`` once ``epochs_completed`` lineage epochs are done:
        the job's total ``job.budget`` when its experiment sets one (successive
        halving, Hyperband), else ``epochs_per_job`` more epochs."""
        start = epochs_completed - 1 if self.start_epoch is None else self.start_epoch
        budget = job_budget(self.job)
        if budget is not None:
            return total_budget_decision(start, epochs_completed, budget)
        return budget_decision(start, epochs_completed, self.epochs_per_job)  # the function

    def budget_reached(self, epochs_completed: int) -> bool:
        """:meth:`budget_decision`, its reason kept in ``stopping_reason`` and
        logged once: each framework then only raises its own stop flag."""
        should_stop, reason = self.budget_decision(epochs_completed)
        if should_stop:
            self.stopped(reason)
        return should_stop

    def stopped(self, reason: str | None) -> None:
        """Record why this job's training stops (said once in the log)."""
        self.stopping_reason = reason
        logger.info("job %s: stopping: %s", self.job.id, reason)

    def epoch_metrics(self, logs: Mapping[str, Any], *, final: bool) -> dict[str, float]:
        """The scalar metrics to report for an epoch, as floats.

        The monitor is required once a validation run has ended in this job,
        or at its end: then it is misnamed, not merely early (when validation
        runs every other epoch, the first epoch has no validation metrics
        yet, and is reported without them).
        """
        metrics = extract_metrics(logs)
        if self._drops_reserved_metrics:
            metrics, dropped = without_reserved(metrics)
            if dropped:
                warnings.warn(
                    f"logged metrics {dropped} are not reported: schedy writes results of "
                    f"those names itself ({sorted(RESERVED_RESULTS)}); log them under "
                    "other names to have them in job.results",
                    stacklevel=2,
                )
        if self.monitor not in metrics and (self._validated or final):
            raise self._missing_monitor(metrics)
        return metrics

    def _missing_monitor(self, metrics: Mapping[str, float]) -> MissingMetricError:
        """The error for a monitor absent from ``metrics``, with the framework's hints."""
        hints = [self._log_hint.format(monitor=repr(self.monitor))] if self._log_hint else []
        if not self._validated and self._validation_hint:
            hints.append(self._validation_hint)
        return MissingMetricError(self.monitor, metrics, " ".join(hints))

    # -- restoring and saving ----------------------------------------------
    def _checkpoint_state(self) -> dict[str, Any]:
        """What a checkpoint records about the job that saved it (read back on restore)."""
        return {
            "job_id": self.job.id,
            "hyperparameters": dict(self.job.hyperparameters),
            "start_epoch": self.start_epoch,
            "monitor": self.monitor,
            "epochs_per_job": self.epochs_per_job,
        }

    def _budget_start(self, state: Mapping[str, Any], resumed_epoch: int) -> int:
        """Where this job's budget starts, after restoring a checkpoint that recorded ``state``.

        The checkpoint's own ``start_epoch`` if this very job saved it (it
        resumes mid-budget), else ``resumed_epoch``: the lineage epoch the
        checkpoint was saved at.
        """
        start = state.get("start_epoch")
        if state.get("job_id") == self.job.id and is_count(start):
            return start
        return resumed_epoch

    def check_settings(self, settings: set[str]) -> None:
        """Warn about hyperparameters that reach neither the optimizer's own
        settings (``settings``: its param-group keys or config names) nor the
        ``optimizer_hyperparameters`` mapping."""
        report_unplaced(
            self.job, settings | set(resolve_mapping(self.optimizer_hyperparameters)), "optimizer"
        )

    def restored_values(
        self, state: Mapping[str, Any], settings: set[str], skip: str | None = None
    ) -> tuple[dict[str, Any], dict[str, Any] | None]:
        """After a restore: ``(values, previous)`` -- the optimizer values this
        job must train with, hyperparameters named like one of the optimizer's
        ``settings`` included, and those the restored checkpoint was trained
        with (None: unknown), so that an unchanged value leaves the restored
        state as it was. ``skip`` is a setting applied another way."""
        values = with_named_settings(
            self.optimizer_values,
            self.job.hyperparameters,
            settings,
            self.optimizer_hyperparameters,
        )
        previous = self._previous_values(state)
        before = state.get("hyperparameters")
        if previous is not None and isinstance(before, Mapping):
            previous = with_named_settings(
                previous, before, settings, self.optimizer_hyperparameters
            )
        if skip is not None:
            values.pop(skip, None)
            if previous is not None:
                previous.pop(skip, None)
        return values, previous

    def _previous_values(self, state: Mapping[str, Any]) -> dict[str, Any] | None:
        """The optimizer values the restored checkpoint's job trained with (None: unknown)."""
        previous = previous_optimizer_values(
            state.get("hyperparameters"), self.optimizer_hyperparameters
        )
        return None if previous is None else self._optimizer_names(previous)

    def _checkpoint_saved(self) -> None:
        """After saving (a job's last act, on one process): record the checkpoint
        as the job's ``model_path``, push, prune, log the job to its trackers."""
        self.job.results[MODEL_PATH_KEY] = self.checkpoint_path
        self.job.put()
        prune_after_save(self.job, self.checkpoint_dir, self.keep_top_k)
        self._log_to_trackers()

    def _log_to_trackers(self) -> None:
        """Log the job that just ended to each tracker.

        A tracker that fails (a tracking server away, a deleted MLflow
        experiment) is reported in a warning, not raised: the job trained and
        saved, and crashing it now would throw that away and retry the same
        training; ``schedy export`` logs what was missed later (it skips what
        is there).
        """
        for tracker in self.trackers:
            try:
                tracker.log_job(self.job)
            except Exception as error:  # any tracker failure, see above
                where = getattr(tracker, "destination", repr(tracker))
                warnings.warn(
                    f"job {self.job.id} was not logged to {where}: {type(error).__name__}: "
                    f"{error}. Training goes on; `schedy export NAME` logs the jobs missed "
                    "(it skips those already there)",
                    stacklevel=2,
                )
