"""Checkpoint lifecycle: delete what no job can need any more, never more.

PBT writes one checkpoint per job, so left alone disk use grows without bound
(Ray Tune #4287); deleting naively breaks exploitation, when a copy starts
from a checkpoint that was just removed (Ray Tune #9036). A checkpoint is
kept while any of these may still read it: a member's resume point (its last
DONE job), a QUEUED or RUNNING job (which continues a parent's checkpoint or
is writing its own), or one of the ``keep_top_k`` best jobs.

Safety against a concurrent claim: the folder is listed *before* the store
is read, in one consistent snapshot. A checkpoint written after the listing
is not a candidate; one written before it belongs to a job that was still
RUNNING, or whose DONE made it a member's head, at snapshot time — both kept.

:func:`prune_checkpoints` is the policy, for any worker loop;
:func:`prune_after_save` is what the callbacks call after each save, and
:func:`check_keep_top_k` validates their ``keep_top_k`` argument. Files are
listed and removed through :mod:`schedy.integrations._files`.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from .._retention import deletable
from ..errors import NotFoundError
from ._files import MODEL_PATH_KEY, fsspec_available, is_url, list_files, remove_file

if TYPE_CHECKING:
    from ..experiments import Experiment

logger = logging.getLogger(__name__)

__all__ = ["check_keep_top_k", "prune_after_save", "prune_checkpoints"]


def _normalize(path: str) -> str:
    if is_url(path):
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
    key: str = MODEL_PATH_KEY,
    keep_top_k: int | None = 1,
) -> list[str]:
    """Delete the checkpoints in ``directory`` that no job can need; return them.

    Only files named ``<job id>.<ext>`` after a job of this ``experiment``
    are considered, so a folder shared with other experiments or other files
    is safe. ``key`` is the result naming a job's checkpoint; ``keep_top_k``
    keeps the checkpoints of that many best jobs too (``None`` keeps
    everything: nothing is deleted), as the callbacks' argument of that name.
    """
    keep_top_k = check_keep_top_k(keep_top_k)
    if keep_top_k is None:
        return []
    directory = os.fspath(directory)
    listed = list_files(directory)  # before the snapshot: see the module docstring
    if not listed:
        return []
    in_use = experiment._storage.jobs_in_use(experiment.name, keep_top_k)
    candidates = deletable(
        ((_job_id_of(path), path) for path in listed),
        in_use,
        key=key,
        normalize=_normalize,
        is_ours=lambda job_id: _is_job_of(experiment, job_id),
    )
    removed = [path for path in candidates if remove_file(path)]
    if removed:
        logger.debug("pruned %d checkpoints of %r", len(removed), experiment.name)
    return removed


def _is_job_of(experiment: Experiment, job_id: str) -> bool:
    try:
        experiment.get_job(job_id)
    except NotFoundError:
        return False  # not one of ours: never touch it
    return True


def check_keep_top_k(keep_top_k: Any) -> int | None:
    """Validate a ``keep_top_k`` argument: an int >= 0, or ``None`` (keep every checkpoint)."""
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
    if is_url(directory) and not fsspec_available():
        return
    try:
        prune_checkpoints(experiment, directory, keep_top_k=keep_top_k)
    except Exception:  # housekeeping: the job's training and results stand
        logger.warning(
            "job %s: could not prune the checkpoints in %s", job.id, directory, exc_info=True
        )
