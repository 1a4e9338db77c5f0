"""Scheduling overhead of schedy's PBT on the embedded SQLite store.

What it measures (DESIGN.md §3 "Cost": scheduling cost per ``next_job`` must
not grow with the number of past jobs):

1. The median time of one full cycle -- ``experiment.next_job()`` plus
   finishing the job as DONE on leaving ``with`` -- for a PBT experiment with
   population 32 on a SQLite file, at 1,000 existing jobs (the *baseline*,
   built by running real cycles through the public API), at 1,000 jobs built
   like the big history (a control) and at 100,000 existing jobs of the same
   experiment. The three stores are timed in interleaved rounds, so machine
   noise hits them alike. Targets: median cycle <= 1 ms; 100k/1k <= 1.3.
2. Aggregate cycles/s of 8 local worker processes, each opening its own
   ``SchedyDB`` on one SQLite file and running cycles for a fixed wall time
   after a common barrier; it also checks that no job id was handed out
   twice, that every claimed job ended DONE and that no exception escaped.
   Target: >= 1,000 cycles/s (bounded by the machine's cores: read the
   CPU count printed with the results).
3. The same workload with Optuna's ask/tell on SQLite (``study.ask()``,
   ``trial.suggest_float('lr', 1e-4, 1e-1, log=True)``, ``study.tell()``) at
   1,000 existing trials, with Optuna's default sampler (TPE) and, for the
   storage cost alone, its RandomSampler -- interleaved with schedy baseline
   cycles. Target: Optuna's cycle >= 20x schedy's. Skipped when optuna is not
   importable (``pip install 'schedy[bench]'``).

4. With ``--postgres ADMIN_URL``: the same cycle on a scratch PostgreSQL
   database created (and dropped) through that URL, interleaved with the
   SQLite baseline, and the multi-process run there (no target: PostgreSQL
   is for many machines; it shows the cost of a network database).
5. With ``--server``: the same through ``schedy server`` (a separate
   process over a SQLite file), its clients talking HTTP.
6. With ``--populations 32,1000,10000``: one cycle on a full PBT population
   of each size (bulk-built, 2 generations deep), on SQLite and, with
   ``--postgres``, on PostgreSQL, all timed in the same interleaved rounds and
   printed side by side. Target: the largest population's median cycle <= 2x
   the smallest's on each backend. ``--only-populations`` runs just this.

Every number is also printed as a ratio against the baseline run in the same
process. Run it from the repository root::

    .venv/bin/python benchmarks/scheduler_overhead.py            # full (minutes)
    .venv/bin/python benchmarks/scheduler_overhead.py --quick    # smoke run (< 20 s)
    .venv/bin/python benchmarks/scheduler_overhead.py --json results.json
    .venv/bin/python benchmarks/scheduler_overhead.py --server \
        --postgres postgresql+psycopg://postgres@127.0.0.1/postgres
    .venv/bin/python benchmarks/scheduler_overhead.py --only-populations \
        --populations 32,1000,10000 --postgres postgresql+psycopg://postgres@127.0.0.1/postgres

``--cycles``, ``--history``, ``--workers`` and ``--seconds`` change the sizes;
see ``--help``.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import multiprocessing
import os
import platform
import queue
import random
import re
import shlex
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import sqlalchemy as sa

import schedy
from schedy import _values
from schedy.storage._sql._schema import _experiments, _jobs, _members

EXPERIMENT = "pbt-overhead"
POPULATION = 32
SEED = 0
LR_LOW, LR_HIGH = 1e-4, 1e-1

#: (name, value, target description, passed) rows for the final table.
Row = tuple[str, str, str, str]


# -- the workload -------------------------------------------------------------
def make_experiment() -> schedy.PopulationBasedTraining:
    return schedy.PopulationBasedTraining(
        EXPERIMENT,
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={"lr": schedy.random.LogUniform(LR_LOW, LR_HIGH)},
        population_size=POPULATION,
        seed=SEED,
    )


def accuracy(lr: float, generation: int, rng: random.Random) -> float:
    """A made-up but plausible objective: best near lr=1e-2, improving with time."""
    closeness = 1.0 - min(abs(math.log10(lr) + 2.0) / 3.0, 1.0)
    progress = 1.0 - 1.0 / (2.0 + generation)
    return round(0.5 * closeness + 0.4 * progress + 0.1 * rng.random(), 6)


def schedy_cycle(experiment: schedy.Experiment, rng: random.Random) -> str:
    """One full cycle: claim the next job, report a result, finish it as DONE."""
    with experiment.next_job() as job:
        job.results["acc"] = accuracy(float(job.hyperparameters["lr"]), job.generation or 0, rng)
    return job.id


def open_store(url: str) -> tuple[schedy.SchedyDB, schedy.Experiment]:
    db = schedy.SchedyDB(url)
    experiment = make_experiment()
    db.add_experiment(experiment)
    return db, experiment


def build_by_cycles(url: str, history: int) -> tuple[schedy.SchedyDB, schedy.Experiment]:
    """A store whose history was made by ``history`` real cycles (public API only)."""
    db, experiment = open_store(url)
    rng = random.Random(SEED + 1)
    for _ in range(history):
        schedy_cycle(experiment, rng)
    return db, experiment


_ALPHABET = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz"


def _job_id(rng: random.Random) -> str:
    """Ids in schedy's format (10 base62 characters), but seeded."""
    return "".join(rng.choice(_ALPHABET) for _ in range(10))


def build_by_bulk_insert(path: str, history: int) -> tuple[schedy.SchedyDB, schedy.Experiment]:
    """A store holding ``history`` DONE jobs of one PBT experiment, built fast.

    Running 100,000 real cycles takes minutes, and ``add_job`` in a loop is
    one transaction per job and cannot set the PBT lineage. So the experiment
    is created through the public API, then the history is written with
    SQLAlchemy straight into schedy's tables in ONE transaction, as real
    cycles would have left it: generation after generation of the 32
    members, every job DONE with member, generation, parent_id (and
    exploited_from when a bottom member copied a top one), its score, JSON
    text from ``schedy._values.dumps`` and timestamps; plus the population
    summary (``schedy_members``: each member's head and last job, score and
    recent score history) and the experiment's claim counter. ``next_job``
    then continues that population (checked by :func:`check_continues`).
    Columns are filled only where this schedy's schema has them.
    """
    db, experiment = open_store(f"sqlite:///{path}")
    assert isinstance(experiment, schedy.PopulationBasedTraining)
    member_history = _member_history()
    rng = random.Random(SEED + 2)
    ids = random.Random(SEED + 3)
    initial = schedy.random.LogUniform(LR_LOW, LR_HIGH)
    perturb = schedy.pbt.Perturb()
    cutoff = experiment.exploit._cutoff(POPULATION)
    start = time.time() - history  # one job a second, ending now
    jobs: list[dict[str, Any]] = []
    heads: list[dict[str, Any]] = []  # latest job of each member
    previous: list[dict[str, Any]] = []  # heads at the end of the last generation
    bottom: set[int] = set()
    top: list[int] = []
    for index in range(history):
        member, generation = index % POPULATION, index // POPULATION
        parent: dict[str, Any] | None = None
        exploited_from = None
        scores = None  # the member's recent (generation, score) pairs, as JSON text
        if generation == 0:
            lr = float(initial.sample(rng))
        else:
            if member == 0:  # a new generation: rank the members as PBT does
                previous = list(heads)
                ranked = sorted(range(POPULATION), key=lambda m: -previous[m]["acc"])
                bottom, top = set(ranked[POPULATION - cutoff :]), ranked[:cutoff]
            parent = previous[member]
            if member in bottom:  # exploit a top member, explore its hyperparameters
                parent = previous[rng.choice(top)]
                exploited_from = parent["id"]
                lr = float(perturb.explore(parent["lr"], rng))
            else:
                lr = parent["lr"]
            scores = parent["scores"]
        acc = accuracy(lr, generation, rng)
        score = experiment._scheduler.score({"acc": acc})
        if member_history is not None:
            scores = member_history.extend(scores, generation, score)
        now = start + index
        job = {
            "id": _job_id(ids),
            "experiment_id": None,  # filled in below
            "status": schedy.Job.DONE,
            "hyperparameters": _values.dumps({"lr": lr}),
            "results": _values.dumps({"acc": acc}),
            "member": member,
            "generation": generation,
            "parent_id": None if parent is None else parent["id"],
            "exploited_from": exploited_from,
            "error": None,
            "lease_token": None,
            "lease_expires_at": None,
            "created_at": now - 0.9,
            "updated_at": now,
            "score": score,
        }
        jobs.append({key: value for key, value in job.items() if key in _jobs.c})
        head = {
            "id": job["id"],
            "lr": lr,
            "acc": acc,
            "score": score,
            "scores": scores,
            "generation": generation,
            "at": now,
        }
        if generation == 0:
            heads.append(head)
        else:
            heads[member] = head
    engine = sa.create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as connection:
            experiment_id = connection.execute(
                sa.select(_experiments.c.id).where(_experiments.c.name == EXPERIMENT)
            ).scalar_one()
            for row in jobs:
                row["experiment_id"] = experiment_id
            if jobs:
                connection.execute(sa.insert(_jobs), jobs)
            members = [
                {
                    "experiment_id": experiment_id,
                    "idx": member,
                    "head_id": head["id"],
                    "head_generation": head["generation"],
                    "score": head["score"],
                    "busy_id": None,
                    "last_id": head["id"],
                    "crashes": 0,
                    "ended": False,
                    "ready_since": head["at"],
                    "history": head["scores"],
                }
                for member, head in enumerate(heads)
            ]
            if members:
                connection.execute(
                    sa.insert(_members),
                    [{k: v for k, v in row.items() if k in _members.c} for row in members],
                )
            connection.execute(
                sa.update(_experiments)
                .where(_experiments.c.id == experiment_id)
                .values(claims=history)
            )
    finally:
        engine.dispose()
    return db, experiment


def _member_history() -> Any:
    """schedy's member score history module, wherever this schedy keeps it (None: none)."""
    if "history" not in _members.c:
        return None
    for name in ("schedy._scheduling._history", "schedy._history"):
        try:
            if importlib.util.find_spec(name):
                return importlib.import_module(name)
        except ModuleNotFoundError:
            continue
    return None


def make_population_experiment(population: int) -> schedy.PopulationBasedTraining:
    return schedy.PopulationBasedTraining(
        f"pbt-population-{population}",
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={"lr": schedy.random.LogUniform(LR_LOW, LR_HIGH)},
        population_size=population,
        seed=SEED,
    )


def build_population(
    url: str, population: int, generations: int = 2
) -> tuple[schedy.SchedyDB, schedy.Experiment]:
    """A full PBT population of ``population`` members, each ``generations``
    DONE jobs deep (member by member, generation by generation, scores and
    score histories as real cycles leave them), bulk-written with SQLAlchemy
    into any SQL store in one transaction: 10,000 members by real claims
    would take minutes on the code this measures the fix of."""
    db = schedy.SchedyDB(url)
    experiment = make_population_experiment(population)
    db.add_experiment(experiment)
    assert isinstance(experiment, schedy.PopulationBasedTraining)
    history = _member_history()
    rng = random.Random(SEED + 5)
    ids = random.Random(f"{SEED}:{population}:ids")  # one database may hold several sizes
    initial = schedy.random.LogUniform(LR_LOW, LR_HIGH)
    start = time.time() - population * generations
    jobs: list[dict[str, Any]] = []
    members: list[dict[str, Any]] = []
    for member in range(population):
        lr = float(initial.sample(rng))
        parent = None
        scores = None
        for generation in range(generations):
            acc = accuracy(lr, generation, rng)
            score = experiment._scheduler.score({"acc": acc})
            if history is not None:
                scores = history.extend(scores, generation, score)
            now = start + generation * population + member
            job = {
                "id": _job_id(ids),
                "status": schedy.Job.DONE,
                "hyperparameters": _values.dumps({"lr": lr}),
                "results": _values.dumps({"acc": acc}),
                "member": member,
                "generation": generation,
                "parent_id": parent,
                "exploited_from": None,
                "error": None,
                "lease_token": None,
                "lease_expires_at": None,
                "created_at": now - 0.9,
                "updated_at": now,
                "score": score,
            }
            jobs.append({key: value for key, value in job.items() if key in _jobs.c})
            parent = job["id"]
        members.append(
            {
                "idx": member,
                "head_id": parent,
                "head_generation": generations - 1,
                "score": score,
                "busy_id": None,
                "last_id": parent,
                "crashes": 0,
                "ended": False,
                "ready_since": now,
                "history": scores,
            }
        )
    engine = sa.create_engine(url)
    try:
        with engine.begin() as connection:
            experiment_id = connection.execute(
                sa.select(_experiments.c.id).where(_experiments.c.name == experiment.name)
            ).scalar_one()
            connection.execute(
                sa.insert(_jobs), [dict(row, experiment_id=experiment_id) for row in jobs]
            )
            connection.execute(
                sa.insert(_members),
                [
                    {
                        k: v
                        for k, v in dict(row, experiment_id=experiment_id).items()
                        if k in _members.c
                    }
                    for row in members
                ],
            )
            connection.execute(
                sa.update(_experiments)
                .where(_experiments.c.id == experiment_id)
                .values(claims=population * generations)
            )
            if connection.dialect.name == "postgresql":
                connection.exec_driver_sql("ANALYZE")  # plans as a long-running store has them
    finally:
        engine.dispose()
    return db, experiment


def count_jobs(path: str) -> int:
    with sqlite3.connect(path) as connection:
        return int(connection.execute("SELECT count(*) FROM schedy_jobs").fetchone()[0])


def check_continues(experiment: schedy.Experiment, history: int) -> None:
    """The bulk-built population must be continued, not restarted: the next
    job's parent is a stored job one generation earlier."""
    members = experiment.population()
    if len(members) != min(POPULATION, history):
        raise RuntimeError(f"expected {POPULATION} members, found {len(members)}")
    if history < POPULATION:
        return
    with experiment.next_job() as job:
        job.results["acc"] = 0.5
    parent = None if job.parent_id is None else experiment.get_job(job.parent_id)
    if parent is None or job.generation is None or parent.generation != job.generation - 1:
        raise RuntimeError(
            f"the bulk-built history is not continued: the first new job is member "
            f"{job.member}, generation {job.generation}, parent {job.parent_id} "
            f"(generation {None if parent is None else parent.generation})"
        )


# -- timing -------------------------------------------------------------------
@dataclass
class Timed:
    """One thing to time: ``cycle()`` runs one full cycle."""

    name: str
    cycle: Callable[[], object]
    count: int
    samples: list[float] = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    def quantile(self, q: float) -> float:
        ordered = sorted(self.samples)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def interleave(entries: Sequence[Timed], rounds: int) -> None:
    """Time every entry's cycles in ``rounds`` interleaved blocks (rotating order),
    so a burst of load from elsewhere on the machine hits them all alike."""
    rounds = max(1, min(rounds, min(entry.count for entry in entries)))
    for round_index in range(rounds):
        shift = round_index % len(entries)
        for entry in [*entries[shift:], *entries[:shift]]:
            block = entry.count // rounds + (1 if round_index < entry.count % rounds else 0)
            cycle, samples, clock = entry.cycle, entry.samples, time.perf_counter
            for _ in range(block):
                started = clock()
                cycle()
                samples.append(clock() - started)


def warm_up(cycle: Callable[[], object], count: int) -> None:
    for _ in range(count):
        cycle()


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f} ms"


# -- 1. single process: 1k vs 100k history ------------------------------------
def bench_history(args: argparse.Namespace, folder: str, out: dict[str, Any]) -> Timed:
    print(f"\n[1] one cycle, PBT population {POPULATION}, SQLite, single process")
    stores: list[tuple[str, schedy.SchedyDB, schedy.Experiment, str]] = []
    started = time.perf_counter()
    path = os.path.join(folder, "baseline.db")
    db, experiment = build_by_cycles(f"sqlite:///{path}", args.baseline_history)
    stores.append((f"{args.baseline_history:,} jobs, real cycles (baseline)", db, experiment, path))
    print(
        f"  built {args.baseline_history:,} jobs by real cycles in "
        f"{time.perf_counter() - started:.1f} s"
    )
    for history, label in (
        (args.baseline_history, "bulk-built (control)"),
        (args.history, "bulk-built"),
    ):
        started = time.perf_counter()
        path = os.path.join(folder, f"bulk{history}.db")
        db, experiment = build_by_bulk_insert(path, history)
        check_continues(experiment, history)
        stores.append((f"{history:,} jobs, {label}", db, experiment, path))
        print(f"  bulk-inserted {history:,} jobs in {time.perf_counter() - started:.1f} s")
    entries: list[Timed] = []
    for index, (label, _db, experiment, _path) in enumerate(stores):
        rng = random.Random(SEED + 10 + index)

        def cycle(experiment: schedy.Experiment = experiment, rng: random.Random = rng) -> str:
            return schedy_cycle(experiment, rng)

        warm_up(cycle, args.warmup)
        entries.append(Timed(label, cycle, args.cycles))
    before = [count_jobs(path) for *_, path in stores]
    interleave(entries, args.rounds)
    after = [count_jobs(path) for *_, path in stores]
    baseline = entries[0]
    print(
        f"  {'store':<36} {'jobs before..after':>19} {'median':>10} {'p90':>10} "
        f"{'p99':>10} {'x baseline':>10}"
    )
    for entry, first, last in zip(entries, before, after):
        print(
            f"  {entry.name:<36} {f'{first:,}..{last:,}':>19} {ms(entry.median):>10} "
            f"{ms(entry.quantile(0.9)):>10} {ms(entry.quantile(0.99)):>10} "
            f"{entry.median / baseline.median:>10.3f}"
        )
        out["history"].append(
            {
                "store": entry.name,
                "jobs_before": first,
                "jobs_after": last,
                "cycles": len(entry.samples),
                "median_s": entry.median,
                "p90_s": entry.quantile(0.9),
                "p99_s": entry.quantile(0.99),
                "ratio_vs_baseline": entry.median / baseline.median,
            }
        )
    print(
        "  (a store's history grows by the warm-up and timed cycles: see jobs before..after;"
        " p99 includes SQLite WAL checkpoints)"
    )
    for _label, db, _experiment, _path in stores[1:]:
        db.close()
    return baseline


# -- 2. several worker processes ----------------------------------------------
def worker(url: str, index: int, seconds: float, start_event: Any, messages: Any) -> None:
    """One worker process: open its own SchedyDB, run one untimed cycle, report
    ready, then cycle for ``seconds`` once ``start_event`` is set."""
    report: dict[str, Any] = {"index": index, "ids": [], "warmup_ids": [], "durations": []}
    try:
        db = schedy.SchedyDB(url)
        experiment = db.get_experiment(EXPERIMENT)
        rng = random.Random(SEED + 100 + index)
        report["warmup_ids"].append(schedy_cycle(experiment, rng))
        messages.put(("ready", index))
        if not start_event.wait(timeout=300):
            raise TimeoutError("the start signal never came")
        clock = time.perf_counter
        start = clock()
        deadline = start + seconds
        ids, durations = report["ids"], report["durations"]
        now = start
        while now < deadline:
            ids.append(schedy_cycle(experiment, rng))
            finished = clock()
            durations.append(finished - now)
            now = finished
        report["start"], report["end"] = start, now
        db.close()
    except BaseException:
        report["error"] = traceback.format_exc()
    messages.put(("report", report))


def _collect(
    processes: Sequence[Any], messages: Any, kind: str, deadline: float, done: set[int]
) -> tuple[list[Any], list[str]]:
    """Messages of ``kind`` (``ready`` or ``report``) from every worker not in
    ``done``; a worker that reports early (it failed) or dies is added to
    ``done`` and not waited for again."""
    found: list[Any] = []
    errors: list[str] = []
    heard: set[int] = set()
    waiting = set(range(len(processes))) - done
    while waiting - heard and time.monotonic() < deadline:
        try:
            message_kind, payload = messages.get(timeout=0.2)
        except queue.Empty:  # nothing pending: a worker that is gone will not write
            for i in sorted(waiting - heard):
                if not processes[i].is_alive():
                    errors.append(f"worker {i} exited (code {processes[i].exitcode}) silently")
                    heard.add(i)
                    done.add(i)
            continue
        if message_kind == kind:
            found.append(payload)
            heard.add(payload if kind == "ready" else payload["index"])
        else:  # a report while waiting for "ready": that worker failed early
            errors.append(f"worker {payload['index']}:\n{payload.get('error')}")
            heard.add(payload["index"])
            done.add(payload["index"])
    if waiting - heard:
        errors.append(f"no {kind!r} message in time from workers {sorted(waiting - heard)}")
    return found, errors


def bench_workers(
    args: argparse.Namespace, url: str, baseline: Timed, heading: str
) -> dict[str, Any]:
    """``args.workers`` processes cycling on the store at ``url`` (built here)."""
    print(
        f"\n{heading}: {args.workers} worker processes ({args.start_method}), "
        f"{args.seconds:g} s after a common start; {os.cpu_count()} CPUs"
    )
    db, experiment = build_by_cycles(url, args.baseline_history)
    before = sum(1 for _ in experiment.all_jobs())
    context = multiprocessing.get_context(args.start_method)
    start_event = context.Event()
    messages = context.Queue()
    processes = [
        context.Process(
            target=worker, args=(url, i, args.seconds, start_event, messages), daemon=True
        )
        for i in range(args.workers)
    ]
    try:
        for process in processes:
            process.start()
        failed: set[int] = set()
        _ready, errors = _collect(processes, messages, "ready", time.monotonic() + 300, failed)
        start_event.set()  # every worker is ready (or failed): go
        reports, more = _collect(
            processes, messages, "report", time.monotonic() + args.seconds + 300, failed
        )
        errors.extend(more)
        for process in processes:
            process.join(timeout=60)
            if process.exitcode != 0:
                errors.append(f"worker pid {process.pid} exit code {process.exitcode}")
    finally:
        for process in processes:  # never leave a worker behind
            if process.is_alive():
                process.terminate()
                process.join(timeout=10)
    errors.extend(f"worker {r['index']}:\n{r['error']}" for r in reports if r.get("error"))
    timed = [r for r in reports if "start" in r]
    cycles = sum(len(r["ids"]) for r in timed)
    span = (max(r["end"] for r in timed) - min(r["start"] for r in timed)) if timed else math.nan
    rate = cycles / span if timed else 0.0
    claimed = [job_id for r in reports for job_id in (*r["warmup_ids"], *r["ids"])]
    duplicates = len(claimed) - len(set(claimed))
    statuses: dict[str, str] = {job.id: job.status for job in experiment.all_jobs()}
    not_done = [i for i in claimed if statuses.get(i) != schedy.Job.DONE]
    running = sum(1 for status in statuses.values() if status == schedy.Job.RUNNING)
    new_jobs = len(statuses) - before
    db.close()
    durations = [d for r in timed for d in r["durations"]]
    single_rate = 1.0 / baseline.median
    print(f"  completed cycles      {cycles:,} in {span:.2f} s")
    print(
        f"  aggregate             {rate:,.0f} cycles/s  "
        f"({rate / single_rate:.2f}x one process at the baseline median, "
        f"{single_rate:,.0f} cycles/s)"
    )
    if durations:
        print(
            f"  per-cycle median      {ms(statistics.median(durations))} "
            f"({statistics.median(durations) / baseline.median:.2f}x baseline), "
            f"p99 {ms(sorted(durations)[int(0.99 * (len(durations) - 1))])}, "
            f"max {ms(max(durations))}"
        )
    per_worker = [len(r["ids"]) for r in sorted(timed, key=lambda r: r["index"])]
    print(f"  cycles per worker     {per_worker}")
    print(
        f"  ids handed out        {len(claimed):,} (duplicates: {duplicates}); "
        f"new jobs in store {new_jobs:,}; not DONE: {len(not_done)}; RUNNING left: {running}"
    )
    print(f"  errors                {len(errors)}")
    for message in errors:
        print("    " + message.replace("\n", "\n    "))
    result = {
        "workers": args.workers,
        "start_method": args.start_method,
        "seconds": args.seconds,
        "cycles": cycles,
        "span_s": span,
        "cycles_per_s": rate,
        "ratio_vs_single_process_baseline": rate / single_rate,
        "median_cycle_s": statistics.median(durations) if durations else None,
        "p99_cycle_s": sorted(durations)[int(0.99 * (len(durations) - 1))] if durations else None,
        "max_cycle_s": max(durations) if durations else None,
        "cycles_per_worker": per_worker,
        "ids_handed_out": len(claimed),
        "duplicates": duplicates,
        "not_done": len(not_done),
        "running_left": running,
        "new_jobs": new_jobs,
        "errors": errors,
        "cpu_count": os.cpu_count(),
    }
    return result


# -- 4./5. other backends ---------------------------------------------------------
def bench_backend(
    args: argparse.Namespace, label: str, heading: str, url: str, baseline: Timed
) -> dict[str, Any]:
    """The cycle on the store at ``url``, interleaved with the SQLite baseline,
    then the multi-process run there."""
    db, experiment = build_by_cycles(url, args.baseline_history)
    rng = random.Random(SEED + 50)

    def cycle() -> str:
        return schedy_cycle(experiment, rng)

    warm_up(cycle, args.warmup // 4)
    count = max(1, args.cycles // 4)
    entries = [Timed(label, cycle, count), Timed("SQLite", baseline.cycle, count)]
    interleave(entries, args.rounds)
    experiment.delete()  # the multi-process run builds its own
    db.close()
    timed, lite = entries
    print(
        f"  median cycle          {ms(timed.median)} (p99 {ms(timed.quantile(0.99))}) vs SQLite "
        f"{ms(lite.median)} in the same rounds: {timed.median / lite.median:.1f}x"
    )
    return {
        "median_cycle_s": timed.median,
        "p99_cycle_s": timed.quantile(0.99),
        "sqlite_median_same_rounds_s": lite.median,
        "ratio_vs_sqlite": timed.median / lite.median,
        "workers": bench_workers(args, url, baseline, f"  [{heading}b] {label}"),
    }


def bench_postgres(
    args: argparse.Namespace, baseline: Timed, out: dict[str, Any]
) -> dict[str, Any] | None:
    """The backend run on a scratch PostgreSQL database, created and dropped here."""
    admin_url = sa.engine.make_url(args.postgres)
    name = f"schedy_bench_{os.getpid()}_{random.randrange(1 << 30)}"
    print(f"\n[4] PostgreSQL at {admin_url.render_as_string(hide_password=True)}")
    try:
        admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as error:  # unreachable, no driver, no rights: say so and go on
        print(f"  skipped: cannot create a scratch database ({type(error).__name__}: {error})")
        return None
    url = admin_url.set(database=name).render_as_string(hide_password=False)
    try:
        result = bench_backend(args, "PostgreSQL", "4", url, baseline)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()
    out["postgres"] = result
    return result


def bench_server(
    args: argparse.Namespace, folder: str, baseline: Timed, out: dict[str, Any]
) -> dict[str, Any] | None:
    """The backend run through `schedy server`, a separate process over a SQLite file."""
    print("\n[5] schedy server (its own process, over SQLite), clients over HTTP")
    if importlib.util.find_spec("fastapi") is None:
        print("  skipped: the server needs pip install 'schedy[server]'")
        return None
    token = "bench-" + str(random.randrange(1 << 60))
    env = dict(os.environ, SCHEDY_TOKEN=token)
    path = os.path.join(folder, "served.db")
    command = [sys.executable, "-m", "schedy", "--db", f"sqlite:///{path}", "server", "--port", "0"]
    server = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    previous = os.environ.get("SCHEDY_TOKEN")
    os.environ["SCHEDY_TOKEN"] = token  # for this process and the spawned workers
    try:
        assert server.stderr is not None
        found = None
        for line in server.stderr:  # warnings may come before the announcement
            found = re.search(r"on (http://\S+) \(", line)
            if found:
                break
        if not found:
            print(f"  skipped: the server did not start (exit code {server.wait()})")
            return None
        # Keep reading what it logs, so a full pipe never stalls the server.
        threading.Thread(target=server.stderr.read, daemon=True).start()
        result = bench_backend(args, "schedy server", "5", found.group(1), baseline)
    finally:
        if previous is None:
            os.environ.pop("SCHEDY_TOKEN", None)
        else:
            os.environ["SCHEDY_TOKEN"] = previous
        server.send_signal(signal.SIGINT)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
    out["server"] = result
    return result


# -- 6. population size -----------------------------------------------------------
def _scratch_postgres(admin_url: str) -> tuple[str, Callable[[], None]] | None:
    """A scratch PostgreSQL database (its URL, and how to drop it); None if unreachable."""
    admin_parsed = sa.engine.make_url(admin_url)
    name = f"schedy_bench_{os.getpid()}_{random.randrange(1 << 30)}"
    try:
        admin = sa.create_engine(admin_parsed, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    except Exception as error:  # unreachable, no driver, no rights: say so and go on
        print(f"  PostgreSQL skipped: cannot create a scratch database ({error})")
        return None

    def drop() -> None:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()

    return admin_parsed.set(database=name).render_as_string(hide_password=False), drop


def bench_populations(
    args: argparse.Namespace, folder: str, out: dict[str, Any]
) -> dict[str, dict[int, Timed]]:
    """One cycle at each population size, on SQLite and (with --postgres) PostgreSQL,
    every store timed in the same interleaved rounds; ratios against the smallest."""
    sizes = args.populations
    print(
        f"\n[6] one cycle by population size {', '.join(f'{p:,}' for p in sizes)} "
        f"(PBT, full population, {args.population_generations} generations each), single process"
    )
    backends: list[tuple[str, Callable[[int], str]]] = [
        ("SQLite", lambda p: f"sqlite:///{os.path.join(folder, f'population{p}.db')}")
    ]
    cleanup: list[Callable[[], None]] = []
    if args.postgres:
        scratch = _scratch_postgres(args.postgres)
        if scratch is not None:
            pg_url, drop = scratch
            backends.append(("PostgreSQL", lambda p: pg_url))
            cleanup.append(drop)
    entries: dict[str, dict[int, Timed]] = {label: {} for label, _ in backends}
    dbs: list[schedy.SchedyDB] = []
    try:
        for label, url_for in backends:
            for population in sizes:
                started = time.perf_counter()
                db, experiment = build_population(
                    url_for(population), population, args.population_generations
                )
                dbs.append(db)
                rng = random.Random(SEED + population)

                def cycle(
                    experiment: schedy.Experiment = experiment, rng: random.Random = rng
                ) -> str:
                    return schedy_cycle(experiment, rng)

                warm_up(cycle, args.warmup // 4)
                entries[label][population] = Timed(f"{label} {population}", cycle, args.cycles // 2)
                print(
                    f"  {label}: built population {population:,} in "
                    f"{time.perf_counter() - started:.1f} s"
                )
        interleave([t for row in entries.values() for t in row.values()], args.rounds)
    finally:
        for db in dbs:
            db.close()
        for drop in cleanup:
            drop()
    header = f"  {'population':>10}"
    for label in entries:
        header += f" {label + ' median':>18} {'p90':>10} {'x ' + f'{sizes[0]:,}':>8}"
    print(header)
    result: dict[str, Any] = {}
    for population in sizes:
        line = f"  {population:>10,}"
        for label, row in entries.items():
            timed, base = row[population], row[sizes[0]]
            line += (
                f" {ms(timed.median):>18} {ms(timed.quantile(0.9)):>10} "
                f"{timed.median / base.median:>8.2f}"
            )
            result.setdefault(label, []).append(
                {
                    "population": population,
                    "cycles": len(timed.samples),
                    "median_s": timed.median,
                    "p90_s": timed.quantile(0.9),
                    "ratio_vs_smallest": timed.median / base.median,
                }
            )
        print(line)
    out["populations"] = result
    return entries


# -- 3. Optuna ask/tell ---------------------------------------------------------
def bench_optuna(
    args: argparse.Namespace, folder: str, baseline: Timed, out: dict[str, Any]
) -> dict[str, Timed] | None:
    try:
        import optuna
    except ImportError:
        print("\n[3] Optuna: skipped (optuna is not importable; pip install 'schedy[bench]')")
        out["optuna"] = None
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    print(
        f"\n[3] Optuna {optuna.__version__} ask/tell on SQLite at "
        f"{args.optuna_history:,} trials vs schedy baseline, interleaved"
    )
    space: dict[str, optuna.distributions.BaseDistribution] = {
        "lr": optuna.distributions.FloatDistribution(LR_LOW, LR_HIGH, log=True)
    }
    entries: list[Timed] = []
    samplers: list[tuple[str, Callable[[], Any]]] = [
        ("optuna TPESampler (default)", lambda: optuna.samplers.TPESampler(seed=SEED)),
        ("optuna RandomSampler (storage only)", lambda: optuna.samplers.RandomSampler(seed=SEED)),
    ]
    for index, (label, make_sampler) in enumerate(samplers):
        started = time.perf_counter()
        study = optuna.create_study(
            storage=f"sqlite:///{os.path.join(folder, f'optuna{index}.db')}",
            study_name=EXPERIMENT,
            direction="maximize",
            sampler=make_sampler(),
        )
        rng = random.Random(SEED + 20 + index)
        initial = schedy.random.LogUniform(LR_LOW, LR_HIGH)
        # add_trials stores COMPLETE trials with the same params and values
        # that ask/tell would, in a fraction of the time.
        trials = []
        for number in range(args.optuna_history):
            lr = float(initial.sample(rng))
            trials.append(
                optuna.trial.create_trial(
                    params={"lr": lr},
                    distributions=space,
                    value=accuracy(lr, number // POPULATION, rng),
                )
            )
        study.add_trials(trials)
        print(
            f"  {label}: stored {args.optuna_history:,} trials in "
            f"{time.perf_counter() - started:.1f} s"
        )

        def cycle(study: Any = study, rng: random.Random = rng) -> None:
            trial = study.ask()
            lr = trial.suggest_float("lr", LR_LOW, LR_HIGH, log=True)
            study.tell(trial, accuracy(lr, trial.number // POPULATION, rng))

        warm_up(cycle, args.optuna_warmup)
        entries.append(Timed(label, cycle, args.optuna_cycles))
    schedy_entry = Timed("schedy baseline (same rounds)", baseline.cycle, args.optuna_cycles)
    interleave([schedy_entry, *entries], args.rounds)
    print(f"  {'':<36} {'median':>10} {'x schedy (same rounds)':>23} {'x baseline [1]':>15}")
    for entry in (schedy_entry, *entries):
        print(
            f"  {entry.name:<36} {ms(entry.median):>10} "
            f"{entry.median / schedy_entry.median:>23.1f} "
            f"{entry.median / baseline.median:>15.1f}"
        )
    out["optuna"] = {
        "version": optuna.__version__,
        "history": args.optuna_history,
        "schedy_same_rounds_median_s": schedy_entry.median,
        "studies": [
            {
                "sampler": entry.name,
                "cycles": len(entry.samples),
                "median_s": entry.median,
                "ratio_vs_schedy_same_rounds": entry.median / schedy_entry.median,
                "ratio_vs_baseline": entry.median / baseline.median,
            }
            for entry in entries
        ],
    }
    return {"schedy": schedy_entry, "tpe": entries[0], "random": entries[1]}


# -- driver ---------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
    )
    parser.add_argument(
        "--cycles", type=int, help="timed cycles per store (default 2000; quick 100)"
    )
    parser.add_argument(
        "--history", type=int, help="jobs in the big history (default 100000; quick 5000)"
    )
    parser.add_argument(
        "--baseline-history",
        type=int,
        default=1000,
        help="jobs in the baseline history (default 1000)",
    )
    parser.add_argument("--workers", type=int, help="worker processes (default 8; quick 4)")
    parser.add_argument(
        "--seconds", type=float, help="wall time of the multi-process run (default 5; quick 1)"
    )
    parser.add_argument(
        "--start-method",
        choices=("spawn", "fork", "forkserver"),
        default="spawn",
        help="multiprocessing start method (default spawn)",
    )
    parser.add_argument(
        "--optuna-history",
        type=int,
        help="trials stored before timing Optuna (default 1000; quick 100)",
    )
    parser.add_argument(
        "--optuna-cycles",
        type=int,
        help="timed Optuna ask/tell cycles per sampler (default 200; quick 10)",
    )
    parser.add_argument(
        "--warmup", type=int, help="untimed cycles per store before timing (default 200; quick 20)"
    )
    parser.add_argument(
        "--optuna-warmup",
        type=int,
        help="untimed Optuna cycles per sampler before timing (default 10; quick 3)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=10,
        help="interleaved rounds the timed cycles are split into (default 10)",
    )
    parser.add_argument(
        "--postgres",
        metavar="ADMIN_URL",
        help="also time a scratch database created (and dropped) through this PostgreSQL "
        "URL, e.g. postgresql+psycopg://postgres@127.0.0.1/postgres",
    )
    parser.add_argument(
        "--server",
        action="store_true",
        help="also time clients of a `schedy server` (its own process, over SQLite)",
    )
    parser.add_argument(
        "--populations",
        type=lambda text: [int(part) for part in text.split(",") if part],
        help="also time one cycle at these PBT population sizes, e.g. 32,1000,10000 "
        "(SQLite, and PostgreSQL with --postgres), side by side",
    )
    parser.add_argument(
        "--population-generations",
        type=int,
        default=2,
        help="DONE jobs per member in the population stores (default 2)",
    )
    parser.add_argument(
        "--only-populations",
        action="store_true",
        help="run only the population-size section (needs --populations)",
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    defaults = {
        "cycles": (2000, 100),
        "history": (100_000, 5000),
        "workers": (8, 4),
        "seconds": (5.0, 1.0),
        "optuna_history": (1000, 100),
        "optuna_cycles": (200, 10),
        "warmup": (200, 20),
        "optuna_warmup": (10, 3),
    }
    for name, (full, quick) in defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    for name in ("cycles", "workers", "optuna_cycles", "rounds"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be >= 1")
    for name in ("history", "baseline_history", "optuna_history", "warmup", "optuna_warmup"):
        if getattr(args, name) < 0:
            parser.error(f"--{name.replace('_', '-')} must be >= 0")
    if args.seconds <= 0:
        parser.error("--seconds must be > 0")
    if args.only_populations and not args.populations:
        parser.error("--only-populations needs --populations, e.g. --populations 32,1000,10000")
    if args.populations and min(args.populations) < 2:
        parser.error("--populations are sizes >= 2")
    return args


def verdict(ok: bool) -> str:
    return "PASS" if ok else "MISS"


def claims_clean(workers: dict[str, Any]) -> bool:
    """A multi-process run handed out no id twice, raised nothing, left every job DONE."""
    return (
        workers["duplicates"] == 0
        and not workers["errors"]
        and workers["not_done"] == 0
        and workers["running_left"] == 0
    )


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(getattr(sys, "orig_argv", [sys.executable, *sys.argv]))
    if os.environ.get("PYTHONPATH"):
        command = f"PYTHONPATH={shlex.quote(os.environ['PYTHONPATH'])} {command}"
    started = time.perf_counter()
    out: dict[str, Any] = {
        "command": command,
        "config": vars(args),
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpu_count": os.cpu_count(),
            "sqlite": sqlite3.sqlite_version,
            "sqlalchemy": sa.__version__,
            "schedy": schedy.__version__,
            "schedy_path": os.path.dirname(schedy.__file__ or ""),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
        },
        "history": [],
    }
    print(
        f"schedy {schedy.__version__} scheduling overhead — Python {platform.python_version()},"
        f" SQLite {sqlite3.sqlite_version}, {os.cpu_count()} CPUs, load average "
        f"{out['machine']['load_average']}\nschedy from {out['machine']['schedy_path']}"
    )
    if args.only_populations:
        with tempfile.TemporaryDirectory(prefix="schedy-bench-") as folder:
            rows = population_rows(args, bench_populations(args, folder, out))
        return finish(args, out, rows, command, started)
    with tempfile.TemporaryDirectory(prefix="schedy-bench-") as folder:
        baseline = bench_history(args, folder, out)
        workers = bench_workers(
            args, f"sqlite:///{os.path.join(folder, 'workers.db')}", baseline, "[2] SQLite"
        )
        out["workers"] = workers
        optuna_result = bench_optuna(args, folder, baseline, out)
        postgres = bench_postgres(args, baseline, out) if args.postgres else None
        served = bench_server(args, folder, baseline, out) if args.server else None
        populations = bench_populations(args, folder, out) if args.populations else None

    big = out["history"][-1]
    rows: list[Row] = [
        (
            f"baseline: median cycle, {args.baseline_history:,} jobs",
            ms(baseline.median),
            "<= 1 ms",
            verdict(baseline.median <= 1e-3),
        ),
        (
            f"median cycle, {args.history:,} jobs",
            ms(big["median_s"]),
            "<= 1 ms",
            verdict(big["median_s"] <= 1e-3),
        ),
        (
            f"ratio {args.history:,} / {args.baseline_history:,} jobs",
            f"{big['ratio_vs_baseline']:.3f}",
            "<= 1.3",
            verdict(big["ratio_vs_baseline"] <= 1.3),
        ),
        (
            f"aggregate, {args.workers} processes ({os.cpu_count()} CPUs)",
            f"{workers['cycles_per_s']:,.0f} cycles/s "
            f"({workers['ratio_vs_single_process_baseline']:.2f}x 1/baseline)",
            ">= 1,000 cycles/s",
            verdict(workers["cycles_per_s"] >= 1000),
        ),
        (
            f"exclusive claims, {args.workers} processes",
            f"{workers['duplicates']} duplicate / {workers['ids_handed_out']:,} ids, "
            f"{len(workers['errors'])} errors",
            "0 duplicates, 0 errors, all DONE",
            verdict(claims_clean(workers)),
        ),
    ]
    if optuna_result is None:
        rows.append(("optuna / schedy, per cycle", "skipped (no optuna)", ">= 20x", "SKIP"))
    else:
        for key, label in (("tpe", "default TPE"), ("random", "RandomSampler")):
            ratio = optuna_result[key].median / optuna_result["schedy"].median
            rows.append(
                (
                    f"optuna {label} / schedy, {args.optuna_history:,} trials",
                    f"{ratio:.1f}x ({ms(optuna_result[key].median)})",
                    ">= 20x" if key == "tpe" else "(info)",
                    verdict(ratio >= 20) if key == "tpe" else "-",
                )
            )
    for label, result in (("PostgreSQL", postgres), ("schedy server", served)):
        if result is None:
            continue
        workers_there = result["workers"]
        rows += [
            (
                f"{label}: median cycle",
                f"{ms(result['median_cycle_s'])} ({result['ratio_vs_sqlite']:.1f}x SQLite)",
                "(info)",
                "-",
            ),
            (
                f"{label}: {args.workers} processes",
                f"{workers_there['cycles_per_s']:,.0f} cycles/s, {workers_there['duplicates']} "
                f"duplicate / {workers_there['ids_handed_out']:,} ids, "
                f"{len(workers_there['errors'])} errors",
                "0 duplicates, 0 errors, all DONE",
                verdict(claims_clean(workers_there)),
            ),
        ]
    if populations is not None:
        rows += population_rows(args, populations)
    return finish(args, out, rows, command, started)


def population_rows(args: argparse.Namespace, entries: dict[str, dict[int, Timed]]) -> list[Row]:
    """The population target: the largest population's median cycle <= 2x the smallest's."""
    small, large = args.populations[0], args.populations[-1]
    rows: list[Row] = []
    for label, row in entries.items():
        ratio = row[large].median / row[small].median
        rows.append(
            (
                f"{label}: median cycle, population {large:,} / {small:,}",
                f"{ratio:.2f} ({ms(row[large].median)} / {ms(row[small].median)})",
                "<= 2",
                verdict(ratio <= 2),
            )
        )
    return rows


def finish(
    args: argparse.Namespace, out: dict[str, Any], rows: list[Row], command: str, started: float
) -> int:
    """Print the summary table (and write the JSON)."""
    out["targets"] = [
        {"measure": name, "value": value, "target": target, "verdict": result}
        for name, value, target, result in rows
    ]
    elapsed = time.perf_counter() - started
    out["elapsed_s"] = elapsed
    widths = [max(len(row[i]) for row in rows) for i in range(4)]
    print(
        "\nSummary"
        + (" (--quick: smoke sizes, not the targets' definitions)" if args.quick else "")
    )
    header = ("measure", "value", "target", "")
    line = "  ".join("-" * max(w, len(h)) for w, h in zip(widths, header))
    print("  ".join(h.ljust(max(w, len(h))) for w, h in zip(widths, header)))
    print(line)
    for row in rows:
        print("  ".join(cell.ljust(max(w, len(h))) for cell, w, h in zip(row, widths, header)))
    print(f"\ncommand: {command}\nelapsed: {elapsed:.1f} s")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(out, handle, indent=2, default=str)
        print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
