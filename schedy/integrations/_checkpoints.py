"""Checkpoint lifecycle: delete what no job can need any more, never more.

PBT writes one checkpoint per job, so left alone disk use grows without bound
(Ray Tune #4287); deleting naively breaks exploitation, when a copy starts
from a checkpoint that was just removed (Ray Tune #9036). A checkpoint is
kept while any of these may still read it: a member's resume point (its last
DONE job), a QUEUED or RUNNING job (which continues a parent's checkpoint or
is writing its own), or one of the ``keep_top`` best jobs.

Safety against a concurrent claim: the folder is listed *before* the store
is read, in one consistent snapshot. A checkpoint written after the listing
is not a candidate; one written before it belongs to a job that was still
RUNNING, or whose DONE made it a member's head, at snapshot time — both kept.
"""

from __future__ import annotations

import importlib.util
import logging
import os
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..errors import NotFoundError

if TYPE_CHECKING:
    from ..experiments import Experiment

logger = logging.getLogger(__name__)

__all__ = ["check_keep_top_k", "prune_after_save", "prune_checkpoints"]


def _is_url(path: str) -> bool:
    return "://" in path


def _filesystem(directory: str) -> Any:
    """The fsspec filesystem of a URL (``s3://…``, ``memory://…``)."""
    from ._core import fsspec_module

    return fsspec_module().filesystem(directory.split("://", 1)[0])


def _list(directory: str) -> list[str]:
    if _is_url(directory):
        fs = _filesystem(directory)
        protocol = directory.split("://", 1)[0]
        entries = fs.ls(directory, detail=False)
        return [e if _is_url(e) else f"{protocol}://{e.lstrip('/')}" for e in entries]
    if not os.path.isdir(directory):
        return []
    paths = (os.path.join(directory, name) for name in os.listdir(directory))
    return [path for path in paths if os.path.isfile(path)]


def _remove(path: str) -> bool:
    try:
        if _is_url(path):
            _filesystem(path).rm(path)
        else:
            os.remove(path)
    except FileNotFoundError:
        return False  # another worker pruned it first
    return True


def _normalize(path: str) -> str:
    if _is_url(path):
        protocol, rest = path.split("://", 1)
        return f"{protocol}://{rest.lstrip('/')}"
    return os.path.realpath(path)


def _job_id_of(path: str) -> str:
    name = path.rstrip("/").rsplit("/", 1)[-1]
    return name.split(".", 1)[0]


def prune_checkpoints(
    experiment: Experiment,
    directory: str | os.PathLike[str],
    *,
    key: str = "model_path",
    keep_top: int = 1,
) -> list[str]:
    """Delete the checkpoints in ``directory`` that no job can need; return them.

    Only files named ``<job id>.<ext>`` after a job of this ``experiment``
    are considered, so a folder shared with other experiments or other files
    is safe. ``key`` is the result naming a job's checkpoint; ``keep_top``
    keeps the checkpoints of that many best jobs (``keep_top < 0`` keeps
    everything: nothing is deleted).
    """
    if keep_top < 0:
        return []
    directory = os.fspath(directory)
    listed = _list(directory)  # before the snapshot: see the module docstring
    if not listed:
        return []
    in_use = experiment._storage.jobs_in_use(experiment.name, keep_top)
    kept_paths = {_normalize(str(job.results[key])) for job in in_use if job.results.get(key)}
    kept_ids = {job.id for job in in_use}
    removed = []
    for path in _candidates(experiment, listed, kept_paths, kept_ids):
        if _remove(path):
            removed.append(path)
    if removed:
        logger.debug("pruned %d checkpoints of %r", len(removed), experiment.name)
    return removed


def _candidates(
    experiment: Experiment, listed: Iterable[str], kept_paths: set[str], kept_ids: set[str]
) -> Iterable[str]:
    for path in listed:
        job_id = _job_id_of(path)
        if job_id in kept_ids or _normalize(path) in kept_paths:
            continue
        try:
            experiment.get_job(job_id)
        except NotFoundError:
            continue  # not one of ours: never touch it
        yield path


def check_keep_top_k(keep_top_k: Any) -> int | None:
    """Validate a callback's ``keep_top_k`` (``None``: keep every checkpoint)."""
    if keep_top_k is None:
        return None
    if not isinstance(keep_top_k, int) or isinstance(keep_top_k, bool) or keep_top_k < 0:
        raise ValueError(
            "keep_top_k must be an int >= 0 (checkpoints of the best jobs to keep besides "
            f"those jobs may continue from) or None (keep every checkpoint), not {keep_top_k!r}"
        )
    return keep_top_k


def prune_after_save(job: Any, directory: str, keep_top_k: int | None) -> None:
    """What a callback does after saving a job's checkpoint: prune, never fail the job.

    Skipped for ``keep_top_k=None``, for a job object without an experiment
    (a stub), and for a URL folder when fsspec is missing.
    """
    experiment = getattr(job, "experiment", None)
    if keep_top_k is None or experiment is None:
        return
    if _is_url(directory) and importlib.util.find_spec("fsspec") is None:
        return
    try:
        prune_checkpoints(experiment, directory, keep_top=keep_top_k)
    except Exception:  # housekeeping: the job's training and results stand
        logger.warning(
            "job %s: could not prune the checkpoints in %s", job.id, directory, exc_info=True
        )
