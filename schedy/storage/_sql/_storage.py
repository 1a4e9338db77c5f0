"""The SQL storage: each :class:`~schedy.storage._base.Storage` method as one transaction.

Scheduling happens here only in the sense of *applying* decisions: a claim
gathers the compact state (the experiment row, the running jobs whose lease
to expire, the oldest queued job, the population summary and at most two
jobs by primary key — never the job history), asks the experiment's
scheduler (``schedy._scheduling``) for a plan, and writes it; a job's end,
a lease expiry or a deletion asks the scheduler for the member's next state
and writes the columns that changed.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from typing import Any

from ... import _values
from ..._records import (
    Claim,
    ExperimentRecord,
    ExperimentStatus,
    JobRecord,
    JobStatus,
    JobUpdate,
    MemberRecord,
    TokenRecord,
    TokenRole,
    check_lease_seconds,
    check_name,
    experiment_status,
    is_valid_name,
    job_status,
)
from ..._scheduling import (
    ClaimPlan,
    CreateJob,
    Exhausted,
    Scheduler,
    SchedulingState,
    TakeQueued,
    Wait,
    lease_expired_error,
    scheduler_for,
)
from ...errors import NotFoundError, ResourceExistsError, SchemaVersionError, UnsafeUpdateError
from .._base import Storage
from . import _statements as sql
from ._schema import SCHEMA_VERSION, create_or_migrate, read_version
from ._statements import Transaction
from ._transactions import Database, IntegrityConflict

__all__ = ["SQLStorage"]

logger = logging.getLogger(__name__)

_ENDED = (JobStatus.DONE, JobStatus.CRASHED, JobStatus.PRUNED)
#: A stored status as its enum (one dict lookup on the hot path).
_STATUS = {status.value: status for status in JobStatus}
#: Job ids are schedy's own short texts; request ids and lease tokens at most twice as long.
_MAX_ID_LENGTH = 32
_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"
#: The first lease of a job run by hand; its heartbeat renews it at once to its own.
_HAND_LEASE_S = 60.0
#: The largest finite double: MariaDB/MySQL cannot store an infinite score.
_FLOAT_MAX = 1.7976931348623157e308


def _new_job_id() -> str:
    """10 base62 characters (~59 bits): short like the original ids, never starting with '-'."""
    number = int.from_bytes(secrets.token_bytes(8), "big")
    chars = []
    for _ in range(10):
        number, digit = divmod(number, 62)
        chars.append(_ALPHABET[digit])
    return "".join(chars)


def _encoded(
    values: dict[str, Any], what: str, stored_text: dict[int, str]
) -> tuple[dict[str, Any], str]:
    """``values`` checked and as JSON text; reused as stored when it was loaded unchanged."""
    text = stored_text.get(id(values))
    if text is not None:
        return values, text
    normalized = _values.normalize_mapping(values, what)
    return normalized, _values.dumps(normalized)


class SQLStorage(Storage):
    """Storage on any SQLAlchemy URL: SQLite (the embedded default), PostgreSQL,
    MariaDB/MySQL."""

    def __init__(
        self, url: str, *, echo: bool = False, create: bool = False, **engine_options: Any
    ) -> None:
        self.url = url
        # create: an existing empty or non-schedy SQLite file may be initialised.
        self._db = Database(url, echo, engine_options, create=create)
        #: Locked? -> the statement reading an experiment row (and the clock).
        self._experiment_statements = {
            lock: sql.experiment_statement(self._db.dialect, lock) for lock in (False, True)
        }
        self._schedulers: dict[tuple[str, str], Scheduler] = {}
        self._cache_lock = threading.Lock()
        self._ensure_schema()

    def close(self) -> None:
        self._db.close()

    def _safe_url(self) -> str:
        return self._db.safe_url()

    # -- schema --------------------------------------------------------------------
    def _ensure_schema(self) -> None:
        version = self._db.run_core(read_version, write=False)
        if version == SCHEMA_VERSION:
            return
        if version is not None and version > SCHEMA_VERSION:
            raise SchemaVersionError(
                f"{self._safe_url()} was written by a newer schedy (schema {version}, this "
                f"schedy knows {SCHEMA_VERSION}); upgrade schedy: pip install -U schedy"
            )
        self._db.run_core(create_or_migrate)
        if version is not None:
            logger.info(
                "migrated %s from schema %d to %d", self._safe_url(), version, SCHEMA_VERSION
            )

    # -- helpers -------------------------------------------------------------------
    def _experiment_row(self, transaction: Transaction, name: str, lock: bool) -> Any:
        # A name no backend could have stored is not looked up (PostgreSQL would
        # refuse a NUL with a database error): it is simply not there.
        row = (
            self._experiment_statements[lock].first(transaction, {"name": name})
            if is_valid_name(name)
            else None
        )
        if row is None:
            raise NotFoundError(
                f"no experiment named {name!r} in {self._safe_url()}; "
                "list them with `schedy list` or create it with db.add_experiment()."
            )
        return row

    def _scheduler(self, row: Any) -> Scheduler:
        """Parse an experiment's config once per (kind, config) and reuse it."""
        key = (row.kind, row.config)
        cached = self._schedulers.get(key)
        if cached is not None:
            return cached
        scheduler = scheduler_for(self._experiment_record(row))
        with self._cache_lock:
            if len(self._schedulers) > 256:
                self._schedulers.clear()
            self._schedulers[key] = scheduler
        return scheduler

    @staticmethod
    def _experiment_record(row: Any) -> ExperimentRecord:
        # A configuration that is not JSON (written by hand) is passed on as its
        # text: the scheduler refuses it, so that one experiment is unreadable
        # while the rest of the store lists, claims and removes as ever.
        try:
            config = _values.loads(row.config)
        except ValueError:
            config = row.config
        return ExperimentRecord(name=row.name, kind=row.kind, status=row.status, config=config)

    @staticmethod
    def _job_record(row: Any, experiment: str) -> JobRecord:
        return JobRecord(
            id=row.id,
            experiment=experiment,
            status=_STATUS.get(row.status, row.status),
            hyperparameters=_values.loads(row.hyperparameters),
            results=_values.loads(row.results),
            member=row.member,
            generation=row.generation,
            parent_id=row.parent_id,
            exploited_from=row.exploited_from,
            error=row.error,
            created_at=row.created_at,
            updated_at=row.updated_at,
        )

    def _job_row(self, transaction: Transaction, experiment_id: int, name: str, job_id: str) -> Any:
        row = (
            sql.JOB.first(transaction, {"id": job_id, "experiment_id": experiment_id})
            if is_valid_name(job_id, _MAX_ID_LENGTH)
            else None
        )
        if row is None:
            raise NotFoundError(
                f"experiment {name!r} has no job {job_id!r}; "
                f"list its jobs with `schedy list {name!r}`."
            )
        return row

    def _insert_job(self, transaction: Transaction, values: dict[str, Any]) -> str:
        """Insert a job under ``values['id']`` or a fresh random id; return it.

        Ids have ~59 random bits, so a clash is astronomically rare; the
        unique index would turn one into an IntegrityError, retried by ``run``.
        """
        row: dict[str, Any] = {
            "member": None,
            "generation": None,
            "parent_id": None,
            "exploited_from": None,
            "lease_token": None,
            "lease_expires_at": None,
            "start_results": None,
            "claim_key": None,
        }
        row.update(values)
        if row.get("id") is None:
            row["id"] = _new_job_id()
        sql.INSERT_JOB.run(transaction, row)
        return str(row["id"])

    def _score_value(self, score: float | None) -> float | None:
        """A score as the database can store it (MariaDB/MySQL have no infinity)."""
        if score is None or self._db.family != "mysql":
            return score
        return max(-_FLOAT_MAX, min(_FLOAT_MAX, score))

    def _write_member(
        self,
        transaction: Transaction,
        experiment_id: int,
        before: MemberRecord | None,
        after: MemberRecord,
    ) -> None:
        if after.score is not None and self._db.family == "mysql":
            after = after._replace(score=self._score_value(after.score))
        sql.write_member(transaction, experiment_id, before, after)

    # -- experiments ---------------------------------------------------------------
    def create_experiment(self, record: ExperimentRecord) -> None:
        check_name(record.name)
        status = experiment_status(record.status)
        # The same validation as the Python constructors: a store never holds
        # an experiment it cannot schedule (or list).
        scheduler_for(record)
        config = _values.dumps(_values.normalize(record.config, "experiment config"))

        def body(transaction: Transaction) -> None:
            if sql.EXPERIMENT_EXISTS.first(transaction, {"name": record.name}) is not None:
                raise ResourceExistsError(
                    f"an experiment named {record.name!r} already exists in {self._safe_url()}; "
                    "use db.get_experiment() to reuse it, or delete it first "
                    f"(`schedy rm {record.name!r}`)."
                )
            sql.INSERT_EXPERIMENT.run(
                transaction,
                {
                    "name": record.name,
                    "kind": record.kind,
                    "status": status.value,
                    "config": config,
                    "created_at": time.time(),
                },
            )

        try:
            self._db.run(body)
        except IntegrityConflict:
            raise ResourceExistsError(
                f"an experiment named {record.name!r} already exists in {self._safe_url()}."
            ) from None

    def get_experiment(self, name: str) -> ExperimentRecord:
        return self._db.run(
            lambda t: self._experiment_record(self._experiment_row(t, name, False)), write=False
        )

    def list_experiments(self) -> list[ExperimentRecord]:
        return self._db.run(
            lambda t: [self._experiment_record(row) for row in sql.ALL_EXPERIMENTS.rows(t, {})],
            write=False,
        )

    def update_experiment(self, name: str, status: str, config: dict[str, Any]) -> None:
        checked = experiment_status(status)
        text = _values.dumps(_values.normalize(config, "experiment config"))

        def body(transaction: Transaction) -> None:
            row = self._experiment_row(transaction, name, True)
            scheduler_for(ExperimentRecord(name, row.kind, checked, _values.loads(text)))
            sql.update(
                transaction,
                "schedy_experiments",
                "id = :key_id",
                {"status": checked.value, "config": text, "key_id": row.id},
            )

        self._db.run(body)

    def delete_experiment(self, name: str) -> None:
        def body(transaction: Transaction) -> None:
            row = self._experiment_row(transaction, name, True)
            for statement in sql.DELETE_EXPERIMENT:
                statement.run(transaction, {"experiment_id": row.id})

        self._db.run(body)

    # -- jobs ----------------------------------------------------------------------
    def add_job(
        self,
        experiment: str,
        status: str,
        hyperparameters: dict[str, Any],
        results: dict[str, Any],
    ) -> JobRecord:
        checked = job_status(status)
        if checked == JobStatus.RUNNING:
            raise ValueError(
                "a job cannot be added RUNNING: nobody would hold its lease, so it would never "
                "end. Add it QUEUED (next_job() hands it out with a lease), or DONE, CRASHED or "
                "PRUNED to record a run made elsewhere"
            )
        hyperparameters = _values.normalize_mapping(hyperparameters, "hyperparameters")
        results = _values.normalize_mapping(results, "results")
        hp_text, results_text = _values.dumps(hyperparameters), _values.dumps(results)

        def body(transaction: Transaction) -> JobRecord:
            row = self._experiment_row(transaction, experiment, True)
            self._scheduler(row).check_new_job(hyperparameters)
            now = time.time()
            job_id = self._insert_job(
                transaction,
                {
                    "experiment_id": row.id,
                    "status": checked.value,
                    "hyperparameters": hp_text,
                    "results": results_text,
                    "start_results": results_text,
                    "created_at": now,
                    "updated_at": now,
                },
            )
            return JobRecord(
                id=job_id,
                experiment=experiment,
                status=checked,
                hyperparameters=hyperparameters,
                results=results,
                created_at=now,
                updated_at=now,
            )

        return self._db.run(body)

    def get_job(self, experiment: str, job_id: str) -> JobRecord:
        def body(transaction: Transaction) -> JobRecord:
            row = self._experiment_row(transaction, experiment, False)
            return self._job_record(
                self._job_row(transaction, row.id, experiment, job_id), experiment
            )

        return self._db.run(body, write=False)

    def list_jobs(
        self, experiment: str, *, after: str | None = None, limit: int = 1000
    ) -> list[JobRecord]:
        def body(transaction: Transaction) -> list[JobRecord]:
            row = self._experiment_row(transaction, experiment, False)
            start = 0
            if after is not None:
                valid = is_valid_name(after, _MAX_ID_LENGTH)
                found = (
                    sql.JOB_SEQ.first(transaction, {"id": after, "experiment_id": row.id})
                    if valid
                    else None
                )
                if found is None:
                    raise NotFoundError(f"experiment {experiment!r} has no job {after!r}")
                start = found[0]
            rows = sql.JOBS_PAGE.rows(
                transaction, {"experiment_id": row.id, "after": start, "limit": limit}
            )
            return [self._job_record(job, experiment) for job in rows]

        return self._db.run(body, write=False)

    def update_job(
        self,
        experiment: str,
        job_id: str,
        update: JobUpdate,
        lease_token: str | None = None,
    ) -> JobRecord:
        new_status = None if update.status is None else job_status(update.status)
        # Normalize before the transaction: an unstorable value writes nothing.
        values: dict[str, Any] = {}
        hyperparameters = results = None
        if update.hyperparameters is not None:
            hyperparameters = _values.normalize_mapping(update.hyperparameters, "hyperparameters")
            values["hyperparameters"] = _values.dumps(hyperparameters)
        if update.results is not None:
            results = _values.normalize_mapping(update.results, "results")
            values["results"] = _values.dumps(results)
        if update.error is not None:
            values["error"] = _values.storable_text(update.error)

        def body(transaction: Transaction) -> JobRecord:
            exp_row = self._experiment_row(transaction, experiment, True)
            row = self._job_row(transaction, exp_row.id, experiment, job_id)
            if lease_token is not None and (
                row.status != JobStatus.RUNNING or row.lease_token != lease_token
            ):
                raise UnsafeUpdateError(
                    f"job {job_id} of {experiment!r} is no longer yours: it is {row.status} "
                    f"({row.error or 'taken over by another writer'}). Its lease expired because "
                    "no heartbeat reached the store in time; another worker carries on its "
                    "population member. Nothing was written."
                )
            now = self._db.now(transaction, exp_row)
            old_status = job_status(row.status)
            status = new_status or old_status
            self._check_status_change(row, old_status, status, lease_token is not None)
            new_values = dict(values, updated_at=now, status=status.value)
            granted = None
            if status != JobStatus.RUNNING:
                new_values["lease_token"] = None
                new_values["lease_expires_at"] = None
            elif old_status != JobStatus.RUNNING:
                # Run by hand (`with job:` on a job one added): it holds a lease
                # like a claimed job, so a lost worker frees it; the worker's
                # heartbeat renews it to its own lease length.
                granted = secrets.token_hex(16)
                new_values["lease_token"] = granted
                new_values["lease_expires_at"] = now + _HAND_LEASE_S
            record = JobRecord(
                id=row.id,
                experiment=experiment,
                status=status,
                # Parse only what this update does not replace.
                hyperparameters=(
                    _values.loads(row.hyperparameters)
                    if hyperparameters is None
                    else hyperparameters
                ),
                results=_values.loads(row.results) if results is None else results,
                member=row.member,
                generation=row.generation,
                parent_id=row.parent_id,
                exploited_from=row.exploited_from,
                error=row.error if update.error is None else values["error"],
                lease_token=granted,
                created_at=row.created_at,
                updated_at=now,
            )
            scheduler = self._scheduler(exp_row)
            if status == JobStatus.DONE:
                new_values["score"] = self._score_value(scheduler.score(record.results))
            sql.update(
                transaction, "schedy_jobs", "seq = :key_seq", dict(new_values, key_seq=row.seq)
            )
            if row.member is not None and status != row.status and status in _ENDED:
                self._job_ended(transaction, exp_row.id, scheduler, record, status, now)
            return record

        return self._db.run(body)

    @staticmethod
    def _check_status_change(row: Any, old: JobStatus, new: JobStatus, holds_lease: bool) -> None:
        """Refuse status edits that would break a population (ValueError, nothing written).

        A member's finished job is part of its lineage: a continuation or a
        copy may start from it, so its status stays; and a member's job does
        not go back to the queue (it would stay the member's busy job).
        """
        if row.member is None or new == old or holds_lease:
            return
        if old in _ENDED:
            raise ValueError(
                f"job {row.id} is a finished job of population member {row.member} "
                f"(generation {row.generation}, {old}): later jobs may continue from it, so its "
                "status cannot change. Its results may still be edited"
            )
        if new == JobStatus.QUEUED:
            raise ValueError(
                f"job {row.id} belongs to population member {row.member}: it cannot go back "
                "to the queue; mark it CRASHED to have the member retried"
            )

    def _job_ended(
        self,
        transaction: Transaction,
        experiment_id: int,
        scheduler: Scheduler,
        job: JobRecord,
        status: JobStatus,
        now: float,
    ) -> None:
        """Fold a member's ended job into the population summary (the scheduler says how)."""
        member = sql.MEMBER.first(transaction, {"experiment_id": experiment_id, "idx": job.member})
        if member is None:
            return
        after = scheduler.job_ended(member, job, status, job.results, now)
        if after != member:
            self._write_member(transaction, experiment_id, member, after)

    def delete_job(self, experiment: str, job_id: str) -> None:
        def body(transaction: Transaction) -> None:
            exp_row = self._experiment_row(transaction, experiment, True)
            row = self._job_row(transaction, exp_row.id, experiment, job_id)
            child = sql.CHILD.first(transaction, {"experiment_id": exp_row.id, "id": job_id})
            if child is not None:
                raise ValueError(
                    f"job {job_id} is the parent of job {child[0]}: deleting it would cut the "
                    "lineage (the hyperparameter schedule) of every job after it. Delete its "
                    "descendants first, or the whole experiment"
                )
            sql.DELETE_JOB.run(transaction, {"seq": row.seq})
            if row.member is None:
                return
            member = sql.MEMBER.first(transaction, {"experiment_id": exp_row.id, "idx": row.member})
            if member is not None:
                after = self._scheduler(exp_row).job_deleted(member, job_id)
                if after != member:
                    self._write_member(transaction, exp_row.id, member, after)

        self._db.run(body)

    # -- scheduling ----------------------------------------------------------------
    def claim_job(
        self, experiment: str, lease_seconds: float, request_id: str | None = None
    ) -> Claim:
        lease_seconds = check_lease_seconds(lease_seconds)
        if request_id is not None:
            check_name(request_id, "a claim's request id", _MAX_ID_LENGTH * 2)
        return self._db.run(lambda t: self._claim(t, experiment, lease_seconds, request_id))

    def _claim(
        self, transaction: Transaction, name: str, lease_seconds: float, request_id: str | None
    ) -> Claim:
        exp_row = self._experiment_row(transaction, name, True)
        now = self._db.now(transaction, exp_row)
        scheduler = self._scheduler(exp_row)
        self._expire_leases(transaction, exp_row.id, name, scheduler, now)
        if request_id is not None:
            # The same claim again (its answer was lost): the same job, if still ours.
            row = sql.CLAIMED_BY.first(
                transaction, {"experiment_id": exp_row.id, "claim_key": request_id}
            )
            if row is not None and row.status == JobStatus.RUNNING.value:
                record = self._job_record(row, name)
                record.lease_token = row.lease_token
                return Claim(record)
        if exp_row.status == ExperimentStatus.DONE:
            return Claim(None, reason=f"experiment {name!r} is DONE")
        by_experiment = {"experiment_id": exp_row.id}
        queued_row = sql.OLDEST_QUEUED.first(transaction, by_experiment)
        rng = scheduler.rng(exp_row.claims)
        members, size = self._members_for_claim(transaction, exp_row.id, scheduler, rng)

        # JSON text of the dicts decisions copy unchanged into a new job (a
        # continuation's hyperparameters, a copied member's results): written
        # back as is, not parsed, re-checked and re-encoded inside the lock —
        # results carrying a long per-epoch history would make that costly.
        loaded: list[Any] = []  # keeps the dicts alive, so their ids stay unique
        stored_text: dict[int, str] = {}

        def load_job(job_id: str) -> JobRecord:
            row = self._job_row(transaction, exp_row.id, name, job_id)
            record = self._job_record(row, name)
            loaded.append(record)
            stored_text[id(record.hyperparameters)] = row.hyperparameters
            stored_text[id(record.results)] = row.results
            return record

        def start_results(job: JobRecord) -> dict[str, Any]:
            # Stored for jobs added by hand; a created job started from its parent's.
            text = sql.JOB_START_RESULTS.first(transaction, {"id": job.id})
            if text is not None and text[0] is not None:
                results: dict[str, Any] = _values.loads(text[0])
                loaded.append(results)
                stored_text[id(results)] = text[0]
                return results
            return {} if job.parent_id is None else load_job(job.parent_id).results

        state = SchedulingState(
            queued=None if queued_row is None else self._job_record(queued_row, name),
            members=members,
            load_job=load_job,
            rng=rng,
            start_results=start_results,
            new_job_id=_new_job_id(),
            size=size,
        )
        if scheduler.seed is not None:
            sql.COUNT_CLAIM.run(transaction, {"id": exp_row.id})
        plan = scheduler.plan_claim(state)
        return self._apply(
            transaction, exp_row.id, name, plan, now, lease_seconds, stored_text, request_id
        )

    @staticmethod
    def _members_for_claim(
        transaction: Transaction, experiment_id: int, scheduler: Scheduler, rng: Any
    ) -> tuple[list[MemberRecord], int | None]:
        """The members a claim's decision sees, and the population's size when
        that is a sample (``Scheduler.sample_members``): then the ready member
        that waited longest (or, none ready, a live one) and the sampled ones,
        read by index -- a cost independent of the population's size."""
        by_experiment = {"experiment_id": experiment_id}
        if scheduler.member_sample is not None:
            last = sql.LAST_MEMBER.first(transaction, by_experiment)
            size = 0 if last is None or last[0] is None else int(last[0]) + 1
            indices = scheduler.sample_members(size, rng)
            if indices is not None:
                live = dict(by_experiment, ended=False)
                first = sql.OLDEST_READY.first(transaction, live) or sql.A_LIVE_MEMBER.first(
                    transaction, live
                )
                params: dict[str, Any] = dict(by_experiment)
                params.update((f"i{i}", index) for i, index in enumerate(indices))
                sampled: list[MemberRecord] = sql.members_in(len(indices)).rows(transaction, params)
                if first is not None and all(m.index != first.index for m in sampled):
                    sampled.append(first)
                return sampled, size
        return sql.MEMBERS.rows(transaction, by_experiment), None

    def _expire_leases(
        self,
        transaction: Transaction,
        experiment_id: int,
        name: str,
        scheduler: Scheduler,
        now: float,
    ) -> None:
        """Mark RUNNING jobs whose worker stopped heartbeating CRASHED."""
        expired = sql.EXPIRED.rows(transaction, {"experiment_id": experiment_id, "now": now})
        for row in expired:
            error = lease_expired_error(now - row.lease_expires_at)
            values = {
                "status": JobStatus.CRASHED.value,
                "lease_token": None,
                "lease_expires_at": None,
                "updated_at": now,
                "error": error,
                "key_seq": row.seq,
            }
            sql.update(transaction, "schedy_jobs", "seq = :key_seq", values)
            if row.member is not None:
                job = JobRecord(
                    row.id,
                    name,
                    JobStatus.CRASHED,
                    {},
                    {},
                    member=row.member,
                    generation=row.generation,
                    error=error,
                )
                self._job_ended(transaction, experiment_id, scheduler, job, JobStatus.CRASHED, now)

    def _apply(
        self,
        transaction: Transaction,
        experiment_id: int,
        name: str,
        plan: ClaimPlan,
        now: float,
        lease_seconds: float,
        stored_text: dict[int, str],
        request_id: str | None,
    ) -> Claim:
        for retired in plan.retired:
            logger.warning(
                "experiment %r retires member %d: %s", name, retired.member, retired.reason
            )
        for old, new in plan.members:
            self._write_member(transaction, experiment_id, old, new)
        decision = plan.decision
        if isinstance(decision, Wait):
            return Claim(None, wait=True, reason=decision.reason)
        if isinstance(decision, Exhausted):
            if decision.finish:
                sql.update(
                    transaction,
                    "schedy_experiments",
                    "id = :key_id",
                    {"status": ExperimentStatus.DONE.value, "key_id": experiment_id},
                )
            return Claim(None, reason=decision.reason)
        lease: dict[str, Any] = {
            "lease_token": secrets.token_hex(16),
            "lease_expires_at": now + lease_seconds,
            "updated_at": now,
            "claim_key": request_id,
        }
        if isinstance(decision, TakeQueued):
            row = self._job_row(transaction, experiment_id, name, decision.job_id)
            sql.TAKE_QUEUED.run(
                transaction,
                dict(
                    lease,
                    id=decision.job_id,
                    member=decision.member,
                    generation=decision.generation,
                ),
            )
            record = self._job_record(row, name)
            record.member, record.generation = decision.member, decision.generation
        elif isinstance(decision, CreateJob):
            hyperparameters, hyperparameters_text = _encoded(
                decision.hyperparameters, "hyperparameters", stored_text
            )
            results, results_text = _encoded(decision.results, "results", stored_text)
            job_id = self._insert_job(
                transaction,
                dict(
                    lease,
                    id=plan.job_id,
                    experiment_id=experiment_id,
                    status=JobStatus.RUNNING.value,
                    hyperparameters=hyperparameters_text,
                    results=results_text,
                    member=decision.member,
                    generation=decision.generation,
                    parent_id=decision.parent_id,
                    exploited_from=decision.exploited_from,
                    created_at=now,
                ),
            )
            record = JobRecord(
                id=job_id,
                experiment=name,
                status=JobStatus.RUNNING,
                hyperparameters=hyperparameters,
                results=results,
                member=decision.member,
                generation=decision.generation,
                parent_id=decision.parent_id,
                exploited_from=decision.exploited_from,
                created_at=now,
            )
        else:  # pragma: no cover - plan_claim resolves EndMember
            raise AssertionError(f"unexpected decision {decision!r}")
        record.status = JobStatus.RUNNING
        record.lease_token = lease["lease_token"]
        record.updated_at = now
        return Claim(record)

    def renew_lease(
        self, experiment: str, job_id: str, lease_token: str, lease_seconds: float
    ) -> bool:
        lease_seconds = check_lease_seconds(lease_seconds)

        def body(transaction: Transaction) -> bool:
            exp_row = self._experiment_row(transaction, experiment, False)
            if not (
                is_valid_name(job_id, _MAX_ID_LENGTH)
                and is_valid_name(lease_token, _MAX_ID_LENGTH * 2)
            ):
                return False  # no such job or lease could have been stored
            expires = self._db.now(transaction, exp_row) + lease_seconds
            params = {
                "id": job_id,
                "experiment_id": exp_row.id,
                "token": lease_token,
                "expires": expires,
            }
            return bool(sql.RENEW.run(transaction, params))

        return self._db.run(body)

    def jobs_in_use(self, experiment: str, top_k: int) -> list[JobRecord]:
        def body(transaction: Transaction) -> list[JobRecord]:
            exp_row = self._experiment_row(transaction, experiment, False)
            by_experiment = {"experiment_id": exp_row.id}
            found: dict[str, JobRecord] = {}
            rows = sql.ACTIVE_JOBS.rows(transaction, by_experiment)
            if top_k > 0:
                rows += sql.TOP_JOBS.rows(transaction, dict(by_experiment, limit=top_k))
            for row in rows:
                found[row.id] = self._job_record(row, experiment)
            return list(found.values())

        return self._db.run(body, write=False)

    def top_jobs(self, experiment: str, k: int) -> list[JobRecord]:
        def body(transaction: Transaction) -> list[JobRecord]:
            exp_row = self._experiment_row(transaction, experiment, False)
            rows = sql.TOP_JOBS.rows(transaction, {"experiment_id": exp_row.id, "limit": k})
            return [self._job_record(row, experiment) for row in rows]

        return self._db.run(body, write=False)

    # -- server tokens ---------------------------------------------------------------
    def create_token(self, name: str, role: str, secret_hash: str) -> TokenRecord:
        checked = TokenRole(role) if role in tuple(TokenRole) else None
        if checked is None:
            raise ValueError(f"a token's role is one of {', '.join(TokenRole)}, not {role!r}")
        name = check_name(name, "a token name")

        def body(transaction: Transaction) -> TokenRecord:
            if sql.TOKEN_NAMED.first(transaction, {"name": name}) is not None:
                raise ResourceExistsError(
                    f"a token named {name!r} exists already (revoked tokens keep their name); "
                    "pick another name"
                )
            now = time.time()
            sql.INSERT_TOKEN.run(
                transaction,
                {
                    "name": name,
                    "role": checked.value,
                    "secret_hash": secret_hash,
                    "created_at": now,
                },
            )
            return TokenRecord(name, checked, now)

        try:
            return self._db.run(body)
        except IntegrityConflict:
            raise ResourceExistsError(f"a token named {name!r} exists already") from None

    def list_tokens(self) -> list[TokenRecord]:
        return self._db.run(
            lambda t: [TokenRecord(*row) for row in sql.ALL_TOKENS.rows(t, {})], write=False
        )

    def revoke_token(self, name: str) -> None:
        def body(transaction: Transaction) -> None:
            if not is_valid_name(name) or not sql.REVOKE_TOKEN.run(
                transaction, {"name": name, "now": time.time()}
            ):
                raise NotFoundError(
                    f"no active token named {name!r}; list them with `schedy token list`"
                )

        self._db.run(body)

    def find_token(self, secret_hash: str) -> TokenRecord | None:
        if not is_valid_name(secret_hash, _MAX_ID_LENGTH * 2):
            return None  # no SHA-256 in hex
        row = self._db.run(
            lambda t: sql.ACTIVE_TOKEN.first(t, {"secret_hash": secret_hash}), write=False
        )
        return None if row is None else TokenRecord(*row)

    def get_members(self, experiment: str) -> list[MemberRecord]:
        def body(transaction: Transaction) -> list[MemberRecord]:
            row = self._experiment_row(transaction, experiment, False)
            rows = sql.MEMBERS.rows(transaction, {"experiment_id": row.id})
            return [member._replace(ended=bool(member.ended)) for member in rows]

        return self._db.run(body, write=False)
