"""The one storage interface every backend implements.

A backend stores experiments, jobs and the compact population summary PBT
schedules from, and runs :meth:`Storage.claim_job` — the scheduling decision —
inside one transaction. The decision itself lives in the experiment classes
(``schedy.experiments``); a backend only gathers the state it needs and
applies the result, so SQLite, PostgreSQL and the HTTP server schedule
identically.

Contract (checked by ``tests/test_storage_conformance.py`` for every backend):

* Thread and process safe: any number of workers may call any method
  concurrently. ``claim_job`` never hands the same job to two callers.
* Every write is durable when the method returns, and all-or-nothing: a
  method that raises has changed nothing.
* Records returned are snapshots; changing them changes nothing stored.
* Errors: ``NotFoundError`` for unknown experiments/jobs,
  ``ResourceExistsError`` for a taken experiment name, ``UnsafeUpdateError``
  for a lost lease, ``StorageError`` when the store is unreachable/unusable.
"""

from __future__ import annotations

import abc
from collections.abc import Iterator
from typing import Any

from .._records import Claim, ExperimentRecord, JobRecord, JobUpdate, MemberRecord, TokenRecord
from ..errors import StorageError

__all__ = ["Storage"]


class Storage(abc.ABC):
    """Abstract store. See the module docstring for the contract."""

    url: str

    # -- experiments -------------------------------------------------------
    @abc.abstractmethod
    def create_experiment(self, record: ExperimentRecord) -> None:
        """Store a new experiment; ``ResourceExistsError`` if the name is taken."""

    @abc.abstractmethod
    def get_experiment(self, name: str) -> ExperimentRecord:
        """Return the experiment; ``NotFoundError`` if there is none."""

    @abc.abstractmethod
    def list_experiments(self) -> list[ExperimentRecord]:
        """All experiments, oldest first."""

    @abc.abstractmethod
    def update_experiment(self, name: str, status: str, config: dict[str, Any]) -> None:
        """Replace status and configuration; ``NotFoundError`` if it is gone."""

    @abc.abstractmethod
    def delete_experiment(self, name: str) -> None:
        """Delete the experiment and all its jobs; ``NotFoundError`` if absent."""

    # -- jobs --------------------------------------------------------------
    @abc.abstractmethod
    def add_job(
        self,
        experiment: str,
        status: str,
        hyperparameters: dict[str, Any],
        results: dict[str, Any],
    ) -> JobRecord:
        """Add a job by hand (a queued job is handed out by ``claim_job`` first)."""

    @abc.abstractmethod
    def get_job(self, experiment: str, job_id: str) -> JobRecord:
        """Return one job; ``NotFoundError`` if absent."""

    @abc.abstractmethod
    def list_jobs(
        self, experiment: str, *, after: str | None = None, limit: int = 1000
    ) -> list[JobRecord]:
        """One page of jobs in creation order, starting after job ``after``."""

    def iter_jobs(self, experiment: str, page_size: int = 1000) -> Iterator[JobRecord]:
        """Every job, fetched page by page so memory stays flat."""
        after: str | None = None
        while True:
            page = self.list_jobs(experiment, after=after, limit=page_size)
            yield from page
            if len(page) < page_size:
                return
            after = page[-1].id

    @abc.abstractmethod
    def update_job(
        self,
        experiment: str,
        job_id: str,
        update: JobUpdate,
        lease_token: str | None = None,
    ) -> JobRecord:
        """Write a job back and update its member's summary when it ends.

        With ``lease_token`` the write only succeeds while the caller still
        holds the job's lease (job RUNNING, same token); otherwise it raises
        ``UnsafeUpdateError`` and changes nothing.
        """

    @abc.abstractmethod
    def delete_job(self, experiment: str, job_id: str) -> None:
        """Delete one job; ``NotFoundError`` if absent."""

    # -- scheduling --------------------------------------------------------
    @abc.abstractmethod
    def claim_job(
        self, experiment: str, lease_seconds: float, request_id: str | None = None
    ) -> Claim:
        """Atomically decide and claim the next job (status RUNNING, leased).

        ``request_id`` makes a retried claim idempotent: when a job of this
        experiment was already handed out under that id and is still
        RUNNING, it is returned again (with its lease) instead of claiming a
        second one -- a claim whose answer was lost on the way is retried.
        """

    @abc.abstractmethod
    def renew_lease(
        self, experiment: str, job_id: str, lease_token: str, lease_seconds: float
    ) -> bool:
        """Extend a held lease; False when it was lost (expired and taken)."""

    @abc.abstractmethod
    def jobs_in_use(self, experiment: str, top_k: int) -> list[JobRecord]:
        """One consistent snapshot of the jobs whose checkpoints must be kept.

        Every member's resume point (head), every QUEUED or RUNNING job
        (they continue a parent's checkpoint, or are writing their own) and
        the ``top_k`` best-scored jobs. Checkpoint clean-up keeps exactly
        what these reference.
        """

    @abc.abstractmethod
    def top_jobs(self, experiment: str, k: int) -> list[JobRecord]:
        """The ``k`` DONE jobs with the best score, best first (ties: oldest first)."""

    @abc.abstractmethod
    def get_members(self, experiment: str) -> list[MemberRecord]:
        """The population summary (empty for experiments without members)."""

    # -- server tokens ------------------------------------------------------
    def create_token(self, name: str, role: str, secret_hash: str) -> TokenRecord:
        """Store a token (its secret's SHA-256); ``ResourceExistsError`` if the name is taken."""
        raise StorageError(f"{self.url} does not keep server tokens")

    def list_tokens(self) -> list[TokenRecord]:
        """Every token, revoked ones included, oldest first."""
        raise StorageError(f"{self.url} does not keep server tokens")

    def revoke_token(self, name: str) -> None:
        """Revoke a token for good; ``NotFoundError`` if there is no active one of that name."""
        raise StorageError(f"{self.url} does not keep server tokens")

    def find_token(self, secret_hash: str) -> TokenRecord | None:
        """The active (not revoked) token whose secret hashes to ``secret_hash``."""
        raise StorageError(f"{self.url} does not keep server tokens")

    def close(self) -> None:  # noqa: B027 - optional hook, most backends need nothing
        """Release connections."""
