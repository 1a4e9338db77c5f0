"""A simulated fleet: 1,000 logical workers on two ``schedy server`` replicas over one PostgreSQL.

Each logical worker is a thread doing what a worker process does, through
schedy's HTTP client (``HTTPStorage``, the storage behind
``SchedyDB('http://…')``): claim a PBT job, "train" for a duration drawn
uniformly from ``--job-seconds`` (1-3 minutes; ``10,30`` with
``--heartbeat-seconds 5`` is a stress setting), renew its lease every
``--heartbeat-seconds`` meanwhile (20 s, a job's default: the lease is 3
heartbeats), then report a result and end the job DONE. The
threads are spread over ``--processes`` processes, and every other worker
talks to the other replica. Workers start at random moments within the
first job duration (a fleet does not start in one instant) and only claims
after ``--warmup`` seconds are counted.

Reported: claim latency p50/p90/p99 (a claim is one request: the server
decides inside one database transaction), heartbeat latency, jobs finished
per second (a job still training when the run stops reports at that moment,
with every other such job: that burst is shown apart, not as finishes), and
the load on the database -- PostgreSQL's committed
transactions per second (``pg_stat_database.xact_commit`` of the scratch
database over the measured window) against the requests per second the
workers made, split into claims, heartbeats and finishes, so the share of
the heartbeats in the database's work is plain. Also checked: no job id
handed out twice, no member with two jobs at once, no error.

Run it from the repository root (about 1-2 minutes)::

    .venv/bin/python benchmarks/fleet.py
    .venv/bin/python benchmarks/fleet.py --workers 1000 --processes 4 --seconds 60 \\
        --postgres postgresql+psycopg://postgres@127.0.0.1/postgres --json fleet.json
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import sqlalchemy as sa

import schedy
from schedy._records import JobStatus, JobUpdate
from schedy.storage._http import HTTPStorage

EXPERIMENT = "fleet"
#: The replicas' admin token; spawned processes get it as an argument (a
#: module-level random value would differ in each of them).
TOKEN = "fleet-benchmark-token-" + str(random.SystemRandom().randrange(1 << 60))


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms"


# -- the logical workers ------------------------------------------------------------
def logical_worker(
    storage: HTTPStorage, args: argparse.Namespace, seed: int, stop: threading.Event, out: dict
) -> None:
    """One worker's loop: claim, heartbeat while "training", finish DONE."""
    rng = random.Random(seed)
    lease = 3 * args.heartbeat_seconds
    low, high = args.job_seconds
    if stop.wait(rng.uniform(0, high)):  # a fleet starts over a while, not at once
        return
    try:
        while not stop.is_set():
            started = time.perf_counter()
            claim = storage.claim_job(EXPERIMENT, lease)
            now = time.perf_counter()
            if now - out["t0"] >= args.warmup:
                out["claims"].append(now - started)
            if claim.job is None:
                out["waited"].append(now)
                stop.wait(0.5)
                continue
            job = claim.job
            out["ids"].append(job.id)
            ends = now + rng.uniform(low, high)
            while not stop.is_set():
                left = ends - time.perf_counter()
                if left <= 0 or stop.wait(min(left, args.heartbeat_seconds)):
                    break
                if time.perf_counter() >= ends:
                    break
                beat = time.perf_counter()
                if not storage.renew_lease(EXPERIMENT, job.id, job.lease_token or "", lease):
                    out["lost"].append(job.id)
                    break
                done = time.perf_counter()
                if done - out["t0"] >= args.warmup:
                    out["heartbeats"].append(done - beat)
            # The run's end is no job's end: a job still training when the run
            # stops is reported too (so it ends DONE), but every training worker
            # does so in the same instant -- a burst no fleet makes, queued on
            # the experiment's lock -- so it is counted apart from the finishes.
            burst = stop.is_set()
            q = float(job.hyperparameters["q"])
            results = dict(job.results, acc=q + 0.01 * (job.generation or 0) + rng.random() / 100)
            begun = time.perf_counter()
            storage.update_job(
                EXPERIMENT,
                job.id,
                JobUpdate(status=JobStatus.DONE, results=results),
                lease_token=job.lease_token,
            )
            finished = time.perf_counter()
            if burst:
                out["burst"].append(finished - begun)
            elif finished - out["t0"] >= args.warmup:
                out["finishes"].append(finished - begun)
    except Exception:
        out["errors"].append(traceback.format_exc())


def fleet_process(
    index: int, urls: list[str], args: argparse.Namespace, t0_wall: float, token: str, messages: Any
) -> None:
    """``args.workers // args.processes`` logical workers as threads of this process."""
    out: dict[str, Any] = {
        "claims": [],
        "heartbeats": [],
        "finishes": [],
        "burst": [],
        "ids": [],
        "errors": [],
        "waited": [],  # lists: appends are atomic across threads, += is not
        "lost": [],
    }
    try:
        storages = [HTTPStorage(url, token=token) for url in urls]
        stop = threading.Event()
        # The same clock origin in every process: time.time at the common start.
        out["t0"] = time.perf_counter() - (time.time() - t0_wall)
        count = args.workers // args.processes + (index < args.workers % args.processes)
        threads = []
        for i in range(count):
            worker_id = index + i * args.processes
            thread = threading.Thread(
                target=logical_worker,
                args=(storages[worker_id % len(storages)], args, worker_id, stop, out),
                daemon=True,
            )
            threads.append(thread)
        for thread in threads:
            thread.start()
        time.sleep(max(0.0, t0_wall + args.warmup + args.seconds - time.time()))
        stop.set()
        for thread in threads:
            thread.join(timeout=60)
        for storage in storages:
            storage.close()
    except Exception:
        out["errors"].append(traceback.format_exc())
    messages.put(out)


# -- servers and the database ---------------------------------------------------------
@contextmanager
def scratch_database(admin_url: str) -> Iterator[str]:
    admin = sa.create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"schedy_fleet_{os.getpid()}"
    with admin.connect() as connection:
        connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        connection.exec_driver_sql(f'CREATE DATABASE "{name}"')
    try:
        yield sa.engine.make_url(admin_url).set(database=name).render_as_string(False)
    finally:
        with admin.connect() as connection:
            connection.exec_driver_sql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.dispose()


@contextmanager
def replica(url: str) -> Iterator[str]:
    """``schedy server`` over ``url`` in a process of its own; yields its URL."""
    command = [sys.executable, "-m", "schedy", "--db", url, "server", "--port", "0"]
    process = subprocess.Popen(
        command, env=dict(os.environ, SCHEDY_TOKEN=TOKEN), stderr=subprocess.PIPE, text=True
    )
    try:
        assert process.stderr is not None
        found = None
        said = []
        for line in process.stderr:
            said.append(line)
            found = re.search(r"on (http://\S+) \(", line)
            if found:
                break
        if not found:
            raise RuntimeError(f"a replica did not start (exit code {process.wait()}): {said}")
        threading.Thread(target=process.stderr.read, daemon=True).start()
        yield found.group(1)
    finally:
        process.send_signal(signal.SIGINT)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()


def commits(engine: sa.Engine, database: str) -> int:
    with engine.connect() as connection:
        return int(
            connection.exec_driver_sql(
                "SELECT xact_commit FROM pg_stat_database WHERE datname = %s", (database,)
            ).scalar_one()
        )


def overlapping_members(url: str) -> int:
    """Members that had two jobs at once (a claim handed out twice would make one)."""
    with schedy.SchedyDB(url) as db:
        jobs = list(db.get_experiment(EXPERIMENT).all_jobs())
    spans: dict[int | None, list[tuple[float, float, str]]] = {}
    for job in jobs:
        end = job.updated_at if job.status != schedy.Job.RUNNING else float("inf")
        spans.setdefault(job.member, []).append((job.created_at, end, job.status))
    bad = 0
    for member_spans in spans.values():
        member_spans.sort()
        bad += any(b[0] < a[1] for a, b in itertools.pairwise(member_spans))
    return bad


# -- driver -----------------------------------------------------------------------------
def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--workers", type=int, default=1000, help="logical workers (1000)")
    parser.add_argument("--processes", type=int, default=4, help="processes they share (4)")
    parser.add_argument(
        "--population", type=int, help="PBT population (default: 1.25 x the workers)"
    )
    parser.add_argument(
        "--job-seconds",
        type=lambda text: tuple(float(x) for x in text.split(",")),
        default=(60.0, 180.0),
        help="a job's duration is drawn uniformly from LOW,HIGH seconds (default 60,180)",
    )
    parser.add_argument(
        "--heartbeat-seconds",
        type=float,
        default=20.0,
        help="lease renewal interval (20: a job's default, a third of its 60 s lease)",
    )
    parser.add_argument("--warmup", type=float, default=40.0, help="seconds not counted (40)")
    parser.add_argument("--seconds", type=float, default=60.0, help="seconds measured (60)")
    parser.add_argument(
        "--postgres",
        default="postgresql+psycopg://postgres@127.0.0.1/postgres",
        metavar="ADMIN_URL",
        help="PostgreSQL admin URL; a scratch database is created and dropped through it",
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON here")
    args = parser.parse_args(argv)
    if args.workers < 1 or args.processes < 1 or args.seconds <= 0:
        parser.error("--workers, --processes and --seconds must be positive")
    if len(args.job_seconds) != 2 or not 0 < args.job_seconds[0] <= args.job_seconds[1]:
        parser.error("--job-seconds is LOW,HIGH with 0 < LOW <= HIGH")
    args.population = args.population or int(args.workers * 1.25)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    print(
        f"fleet: {args.workers:,} logical workers in {args.processes} processes, 2 replicas, "
        f"PBT population {args.population:,}, jobs {args.job_seconds[0]:g}-"
        f"{args.job_seconds[1]:g} s, heartbeat every {args.heartbeat_seconds:g} s; "
        f"{args.warmup:g} s warm-up + {args.seconds:g} s measured; {os.cpu_count()} CPUs"
    )
    with ExitStack() as stack:
        url = stack.enter_context(scratch_database(args.postgres))
        with schedy.SchedyDB(url) as db:
            db.add_experiment(
                schedy.PopulationBasedTraining(
                    EXPERIMENT,
                    schedy.pbt.MAXIMIZE,
                    "acc",
                    exploit=schedy.pbt.Truncate(),
                    explore={"q": schedy.pbt.Perturb()},
                    initial_distributions={"q": schedy.random.Uniform(0.0, 1.0)},
                    population_size=args.population,
                )
            )
        urls = [stack.enter_context(replica(url)) for _ in range(2)]
        stats = sa.create_engine(args.postgres)
        stack.callback(stats.dispose)
        database = str(sa.engine.make_url(url).database)
        context = multiprocessing.get_context("spawn")
        messages = context.Queue()
        t0 = time.time() + 3.0  # time for the processes to start
        processes = [
            context.Process(target=fleet_process, args=(i, urls, args, t0, TOKEN, messages))
            for i in range(args.processes)
        ]
        for process in processes:
            process.start()
        time.sleep(max(0.0, t0 + args.warmup - time.time()))
        before, window_start = commits(stats, database), time.time()
        time.sleep(max(0.0, t0 + args.warmup + args.seconds - time.time()))
        after, window = commits(stats, database), time.time() - window_start
        reports = [messages.get(timeout=180) for _ in processes]
        for process in processes:
            process.join(timeout=60)
        overlaps = overlapping_members(url)

    claims = [x for r in reports for x in r["claims"]]
    beats = [x for r in reports for x in r["heartbeats"]]
    finishes = [x for r in reports for x in r["finishes"]]
    burst = [x for r in reports for x in r["burst"]]
    ids = [x for r in reports for x in r["ids"]]
    errors = [x for r in reports for x in r["errors"]]
    tps = (after - before) / window
    requests = (len(claims) + len(beats) + len(finishes)) / args.seconds
    result = {
        "config": {k: v for k, v in vars(args).items() if k != "json"},
        "cpu_count": os.cpu_count(),
        "claims_per_s": len(claims) / args.seconds,
        "claim_p50_s": quantile(claims, 0.5),
        "claim_p90_s": quantile(claims, 0.9),
        "claim_p99_s": quantile(claims, 0.99),
        "heartbeats_per_s": len(beats) / args.seconds,
        "heartbeat_p50_s": quantile(beats, 0.5),
        "heartbeat_p99_s": quantile(beats, 0.99),
        "jobs_done_per_s": len(finishes) / args.seconds,
        "finishes": len(finishes),
        "finish_p50_s": quantile(finishes, 0.5),
        "finish_p99_s": quantile(finishes, 0.99),
        "stop_burst_reports": len(burst),
        "stop_burst_p50_s": quantile(burst, 0.5),
        "stop_burst_max_s": max(burst, default=float("nan")),
        "db_commits_per_s": tps,
        "requests_per_s": requests,
        "heartbeat_share_of_requests": len(beats)
        / max(1, len(claims) + len(beats) + len(finishes)),
        "waits": sum(len(r["waited"]) for r in reports),
        "lost_leases": sum(len(r["lost"]) for r in reports),
        "duplicate_ids": len(ids) - len(set(ids)),
        "members_with_two_jobs_at_once": overlaps,
        "errors": errors[:5],
        "error_count": len(errors),
    }
    print(
        f"\nclaims        {result['claims_per_s']:8.1f}/s   p50 {ms(result['claim_p50_s'])}  "
        f"p90 {ms(result['claim_p90_s'])}  p99 {ms(result['claim_p99_s'])}"
    )
    print(
        f"heartbeats    {result['heartbeats_per_s']:8.1f}/s   p50 "
        f"{ms(result['heartbeat_p50_s'])}  p99 {ms(result['heartbeat_p99_s'])}"
    )
    print(
        f"jobs done     {result['jobs_done_per_s']:8.1f}/s   p50 "
        f"{ms(result['finish_p50_s'])}  p99 {ms(result['finish_p99_s'])} per finish "
        f"({len(finishes)} in the window)"
    )
    print(
        f"at the stop   {len(burst)} training workers reported at once: p50 "
        f"{ms(result['stop_burst_p50_s'])}, the last {ms(result['stop_burst_max_s'])} "
        "(not counted above)"
    )
    print(
        f"database      {tps:8.1f} commits/s for {requests:.1f} requests/s "
        f"({tps / max(requests, 1e-9):.2f} commits per request); heartbeats are "
        f"{result['heartbeat_share_of_requests']:.0%} of the requests, "
        f"~{result['heartbeats_per_s'] / max(tps, 1e-9):.0%} of the commits"
    )
    print(
        f"checks        {result['duplicate_ids']} job ids handed out twice, {overlaps} members "
        f"with two jobs at once, {result['lost_leases']} leases lost, {len(errors)} errors, "
        f"{result['waits']} claims answered 'wait'"
    )
    for error in errors[:3]:
        print(error)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    ok = not errors and not result["duplicate_ids"] and not overlaps
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
