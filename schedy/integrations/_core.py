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
- the epoch budget: :func:`check_epochs_per_job`, :func:`budget_decision`;
- optimizer hyperparameters: :func:`resolve_mapping`, :func:`optimizer_values`
  (job hyperparameters -> ``{optimizer_param: value}``) and
  :func:`update_param_group` (applies them to one torch-style param-group
  dict without undoing a learning-rate schedule);
- checkpoints: :func:`checkpoint_dir`, :func:`checkpoint_path` (local paths
  and fsspec URLs alike);
- the arguments every callback takes, checked once: :class:`JobCallback`;
- reporting: :func:`record_epoch` (latest values, ``epoch``/``step`` and the
  per-epoch ``history`` in ``job.results``).

Nothing here imports torch, Lightning or Keras; values are duck-typed
(anything with ``.item()``/``__float__`` is a number).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping, MutableMapping
from typing import Any, Protocol, TypeAlias

from ..errors import SchedyError
from ._checkpoints import check_keep_top_k

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
    "JobLike",
    "MissingMetricError",
    "OptimizerMapping",
    "PathLike",
    "budget_decision",
    "check_epochs_per_job",
    "check_monitor",
    "checkpoint_dir",
    "checkpoint_path",
    "extract_metrics",
    "is_url",
    "monitored_value",
    "optimizer_values",
    "record_epoch",
    "resolve_mapping",
    "to_float",
    "update_param_group",
    "without_reserved",
]

#: The result that names the checkpoint a job continues from (the original
#: client's key: PBT copies it from the parent, so an exploited job reloads the
#: better member's checkpoint).
MODEL_PATH_KEY = "model_path"
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
PathLike: TypeAlias = str | os.PathLike[str]


class JobLike(Protocol):
    """What the integrations need of a :class:`schedy.Job` (stubs in tests)."""

    @property
    def id(self) -> str: ...

    @property
    def hyperparameters(self) -> dict[str, Any]: ...

    @property
    def results(self) -> dict[str, Any]: ...

    def put(self) -> None: ...


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
def is_url(path: PathLike) -> bool:
    """True for ``scheme://...`` paths (fsspec URLs such as ``s3://bucket/dir``)."""
    return "://" in os.fspath(path)


def fsspec_module() -> Any:
    """fsspec, imported only for URL checkpoint paths, with a clear error if absent."""
    try:
        import fsspec
    except ImportError:
        raise ImportError(
            "checkpoint paths that are URLs need fsspec (and its driver, e.g. s3fs): "
            "pip install fsspec"
        ) from None
    return fsspec


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
    """
    if not job_id or "/" in job_id or "\\" in job_id or job_id in (".", ".."):
        raise ValueError(f"job id {job_id!r} cannot name a checkpoint file")
    folder = checkpoint_dir(directory)
    name = f"{job_id}{suffix}"
    if is_url(folder):
        return f"{folder}/{name}"
    return os.path.join(folder, name)


class JobCallback:
    """What the Lightning and Keras callbacks are given, checked the same way
    when the callback is built, so a mistake fails before any training."""

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

    def _take_job(
        self,
        job: JobLike,
        monitor: str,
        epochs_per_job: int,
        directory: PathLike | None,
        optimizer_hyperparameters: OptimizerMapping | None,
        keep_top_k: int | None,
        suffix: str,
    ) -> None:
        self.job = job
        self.monitor = check_monitor(monitor)
        self.epochs_per_job = check_epochs_per_job(epochs_per_job)
        self.keep_top_k = check_keep_top_k(keep_top_k)
        self.optimizer_hyperparameters = optimizer_hyperparameters
        self.optimizer_values = optimizer_values(job.hyperparameters, optimizer_hyperparameters)
        self.checkpoint_dir = checkpoint_dir(directory)
        self.checkpoint_path = checkpoint_path(self.checkpoint_dir, job.id, suffix)


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
