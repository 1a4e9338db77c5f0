"""Lightning's own logs and checkpoints under schedy: named after jobs, not duplicated.

A default ``Trainer`` (``logger=True``, ``enable_checkpointing=True``)
writes ``lightning_logs/version_N/`` per ``fit`` -- numbered runs nothing
ties to a job or member -- and keeps its own latest checkpoint in each,
unpruned, beside the one schedy saves per job. For :class:`SchedyCallback`
(``schedy.integrations.lightning``), at the start of every ``fit``:

- :func:`name_default_logger`: Lightning's *default* logger (a
  ``TensorBoardLogger``, or ``CSVLogger`` without tensorboard, in
  ``<default_root_dir>/lightning_logs`` with an auto-numbered version) is
  replaced by the same logger whose version is the job's folder,
  ``lightning_logs/<experiment>/member_003/job_<id>/`` (a member's jobs group
  together; the logged step continues across them, since the restored loop
  counters go on), and the empty ``version_N`` folder it had already made is
  removed;
- :func:`drop_default_checkpoint`: Lightning's *default* ``ModelCheckpoint``
  (the one a Trainer adds when given none) is removed -- schedy's own
  checkpoint per job, pruned, replaces it.

A logger or ``ModelCheckpoint`` the user configured is left alone: one with
any argument set differently from Lightning's defaults (a ``save_dir``,
``name`` or ``version``; a ``dirpath``, ``monitor``, ``save_top_k``...). A
user's ``ModelCheckpoint`` without a ``dirpath`` then writes into the job's
log folder, which names its job.

Lightning creates its default logger's writer before any callback hook runs,
so the replaced logger's folder has to be cleaned up, not avoided: only files
holding no data (a TensorBoard event file with nothing but its header) and
then the folder if it is empty are removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from ._tracking import job_folder

__all__ = ["DEFAULT_LOGS", "drop_default_checkpoint", "name_default_logger"]

logger = logging.getLogger("schedy.integrations.lightning")

#: The folder (the loggers' ``name``) a default Trainer logs into.
DEFAULT_LOGS = "lightning_logs"
#: The modules Lightning's loggers and callbacks are defined in, in either package.
_MODULES = ("lightning.pytorch.", "pytorch_lightning.")
_DEFAULT_LOGGERS = frozenset({"TensorBoardLogger", "CSVLogger"})
#: Set on a logger this module installed, so a later fit of the same Trainer
#: (another job) renames it again.
_INSTALLED = "_schedy_job_logger"
#: ModelCheckpoint settings outside its ``state_key`` that a user may configure.
_CHECKPOINT_SETTINGS = ("dirpath", "filename", "save_last", "save_top_k", "save_weights_only")


def _is_lightning(obj: Any, names: frozenset[str]) -> bool:
    """``obj`` is an instance of exactly one of Lightning's classes ``names`` (no subclass)."""
    cls = type(obj)
    return cls.__name__ in names and cls.__module__.startswith(_MODULES)


def _same_path(left: Any, right: Any) -> bool:
    try:
        same: bool = os.path.abspath(os.fspath(left)) == os.path.abspath(os.fspath(right))
    except TypeError:  # not a path (None, or a stand-in's value)
        return False
    return same


def is_default_logger(each: Any, trainer: Any) -> bool:
    """Whether ``each`` is the logger ``Trainer(logger=True)`` made (or one this module made)."""
    if getattr(each, _INSTALLED, False):
        return True
    if not _is_lightning(each, _DEFAULT_LOGGERS):
        return False
    version = getattr(each, "version", None)
    return (
        getattr(each, "name", None) == DEFAULT_LOGS
        and getattr(each, "sub_dir", None) is None
        and (version is None or (isinstance(version, int) and not isinstance(version, bool)))
        and _same_path(getattr(each, "save_dir", None), getattr(trainer, "default_root_dir", ""))
    )


def name_default_logger(trainer: Any, job: Any) -> str | None:
    """Replace Lightning's default logger by one writing the job's folder; its log dir, or None.

    Call it in the callback's ``setup``: the replacement is in place before
    anything is logged, and before a ``ModelCheckpoint`` picks its folder.
    """
    loggers = list(getattr(trainer, "loggers", None) or ())  # (absent on test stand-ins)
    replaced = None
    for index, each in enumerate(loggers):
        if not is_default_logger(each, trainer):
            continue
        renamed = type(each)(save_dir=each.save_dir, name=DEFAULT_LOGS, version=job_folder(job))
        setattr(renamed, _INSTALLED, True)
        loggers[index] = renamed
        replaced = each
        break
    if replaced is None:
        return None
    trainer.loggers = loggers
    if trainer.is_global_zero:
        _discard(replaced)
    log_dir: str = loggers[index].log_dir
    logger.info("job %s: Lightning logs to %s", job.id, log_dir)
    return log_dir


def _discard(old: Any) -> None:
    """Close a replaced logger's writer and remove the empty run folder it made."""
    # Both loggers keep their writer (SummaryWriter, CSV writer) there; the
    # public `.experiment` would create one were it missing.
    writer = getattr(old, "_experiment", None)
    close = getattr(writer, "close", None)
    if callable(close):
        close()
    try:
        folder = old.log_dir
    except Exception:  # a logger of a Lightning we do not know: leave its files be
        return
    if not isinstance(folder, str) or not os.path.isdir(folder):
        return
    for entry in os.scandir(folder):
        if entry.is_file() and _holds_no_data(entry.path):
            # Gone already: another worker's cleanup of a shared folder.
            with contextlib.suppress(FileNotFoundError):
                os.remove(entry.path)
    with contextlib.suppress(OSError):  # not empty: something else wrote there
        os.rmdir(folder)


def _holds_no_data(path: str) -> bool:
    """Whether ``path`` is a TensorBoard event file with nothing but headers in it."""
    if not os.path.basename(path).startswith("events.out.tfevents."):
        return False
    try:
        from tensorboard.backend.event_processing.event_file_loader import RawEventFileLoader
        from tensorboard.compat.proto import event_pb2
    except ImportError:
        return False
    try:
        for record in RawEventFileLoader(path).Load():
            event = event_pb2.Event.FromString(record)
            if event.WhichOneof("what") not in (None, "file_version"):
                return False
    except Exception:  # unreadable: not provably empty
        return False
    return True


def is_default_checkpoint(callback: Any) -> bool:
    """Whether ``callback`` is a ``ModelCheckpoint`` with every setting at Lightning's default.

    That is the one a Trainer adds by itself (``enable_checkpointing=True``
    and no checkpoint callback given). A user's ``ModelCheckpoint()`` with no
    argument is indistinguishable from it, and as redundant.
    """
    if not _is_lightning(callback, frozenset({"ModelCheckpoint"})):
        return False
    fresh = type(callback)()
    return callback.state_key == fresh.state_key and all(
        getattr(callback, name, None) == getattr(fresh, name, None) for name in _CHECKPOINT_SETTINGS
    )


def drop_default_checkpoint(trainer: Any, job: Any) -> bool:
    """Remove Lightning's default ``ModelCheckpoint`` from ``trainer``; whether there was one.

    Call it in the callback's ``setup``: Lightning runs checkpoint callbacks
    after all others, so removing one then takes it out of every hook.
    """
    # A public attribute the Trainer's type stubs do not declare.
    callbacks = getattr(trainer, "callbacks", None)
    if not isinstance(callbacks, list):
        return False
    defaults = [callback for callback in callbacks if is_default_checkpoint(callback)]
    for callback in defaults:
        callbacks.remove(callback)
    if defaults:
        logger.info(
            "job %s: Lightning's default ModelCheckpoint is off: schedy saves the job's "
            "checkpoint itself (pass a configured ModelCheckpoint to keep one of your own)",
            job.id,
        )
    return bool(defaults)
