"""The retention rule: which stored checkpoints no job can need any more.

One rule for every place checkpoints are kept -- a worker's (shared) folder,
pruned by the integrations (``integrations._checkpoints``), and the server's
artifact store, pruned by the server (``server._artifacts``) -- so the two
can never disagree about what is safe to delete. A checkpoint is kept while
any of these may still read it: a member's resume point (its last DONE job),
a QUEUED or RUNNING job (it continues a parent's checkpoint, or is writing
its own), or one of the ``top_k`` best jobs -- exactly the jobs
``Storage.jobs_in_use`` returns, in one snapshot.

Safety against a concurrent claim is the caller's half: list the stored
checkpoints *before* reading that snapshot. A checkpoint written after the
listing is not a candidate; one written before it belongs to a job that was
still RUNNING, or whose DONE made it a member's head, at snapshot time --
both kept.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from ._records import JobRecord

__all__ = ["deletable"]


def deletable(
    listed: Iterable[tuple[str, str]],
    in_use: Iterable[JobRecord],
    *,
    key: str,
    normalize: Callable[[str], str] = str,
    is_ours: Callable[[str], bool] = lambda job_id: True,
) -> list[str]:
    """The stored checkpoints no job in ``in_use`` can need, in listing order.

    ``listed`` holds ``(job id, location)`` of each stored checkpoint (listed
    before ``in_use`` was read); ``key`` is the result naming a job's
    checkpoint; ``normalize`` makes a location comparable with what results
    name; ``is_ours(job_id)`` is False for a file that belongs to no job of
    the experiment (a folder shared with other experiments), never touched.
    """
    in_use = list(in_use)
    kept_ids = {job.id for job in in_use}
    kept = {normalize(str(job.results[key])) for job in in_use if job.results.get(key)}
    return [
        location
        for job_id, location in listed
        if job_id not in kept_ids and normalize(location) not in kept and is_ours(job_id)
    ]
