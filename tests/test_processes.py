"""End-to-end tests with real worker processes, on every backend.

They check what threads cannot: separate processes contending for the
store (SQLite's write lock, PostgreSQL's row locks, the server's requests),
and a worker killed with SIGKILL mid-job. Workers inherit $SCHEDY_TOKEN for
the HTTP backend.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

import schedy

pytestmark = pytest.mark.slow

CLAIMER = textwrap.dedent(
    """
    import json, sys
    import schedy
    from schedy.errors import NoJobError
    url, name, out = sys.argv[1:4]
    experiment = schedy.SchedyDB(url).get_experiment(name)
    claimed = []
    while True:
        try:
            with experiment.next_job(timeout=30) as job:
                claimed.append(job.id)
                if isinstance(experiment, schedy.PopulationBasedTraining):
                    job.results['acc'] = job.hyperparameters['lr'] * (1 + job.generation)
        except NoJobError:
            break
    with open(out, 'w') as handle:
        json.dump(claimed, handle)
    """
)


def _spawn_claimers(url: str, name: str, tmp_path: Path, count: int) -> list[list[str]]:
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", CLAIMER, url, name, str(tmp_path / f"claimed{i}.json")],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(count)
    ]
    outputs = [process.communicate(timeout=240) for process in processes]
    for process, (_, stderr) in zip(processes, outputs):
        assert process.returncode == 0, stderr
        assert "locked" not in stderr and "Traceback" not in stderr, stderr
    return [json.loads((tmp_path / f"claimed{i}.json").read_text()) for i in range(count)]


def test_sixteen_processes_claim_a_queue_exclusively(store_url: str, tmp_path: Path) -> None:
    url = store_url
    db = schedy.SchedyDB(url)
    experiment = schedy.ManualSearch("queue")
    db.add_experiment(experiment)
    queued = {experiment.add_job(hyperparameters={"i": i}).id for i in range(320)}
    claimed = [job for jobs in _spawn_claimers(url, "queue", tmp_path, 16) for job in jobs]
    assert len(claimed) == len(set(claimed)) == 320
    assert set(claimed) == queued
    assert {job.status for job in experiment.all_jobs()} == {schedy.Job.DONE}


def test_sixteen_processes_run_a_pbt_population(store_url: str, tmp_path: Path) -> None:
    url = store_url
    db = schedy.SchedyDB(url)
    db.add_experiment(
        schedy.PopulationBasedTraining(
            "pbt",
            schedy.pbt.MAXIMIZE,
            "acc",
            exploit=schedy.pbt.Truncate(0.25),
            explore={"lr": schedy.pbt.Perturb()},
            initial_distributions={"lr": schedy.random.Uniform(0.1, 1.0)},
            population_size=8,
            max_generations=6,
        )
    )
    claimed = [job for jobs in _spawn_claimers(url, "pbt", tmp_path, 16) for job in jobs]
    assert len(claimed) == len(set(claimed))
    jobs = {job.id: job for job in db.get_experiment("pbt").all_jobs()}
    assert set(claimed) == set(jobs)
    assert {job.member for job in jobs.values()} == set(range(8))
    for job in jobs.values():
        assert job.status == schedy.Job.DONE
        if job.generation == 0:
            assert job.parent_id is None
        else:  # each job continues a DONE job, one generation on
            parent = jobs[job.parent_id]  # type: ignore[index]
            assert parent.status == schedy.Job.DONE
            assert parent.generation == job.generation - 1  # type: ignore[operator]
            assert parent.updated_at <= job.created_at
    members = db.get_experiment("pbt").population()
    # Every member ended: at its final generation, or retired earlier as a
    # straggler (bottom, with every better member finished: nothing to copy).
    assert all(member.ended for member in members)
    assert max(member.head_generation or 0 for member in members) == 5
    assert all((member.head_generation or 0) <= 5 for member in members)
    assert db.get_experiment("pbt").status == schedy.Experiment.DONE


HANGING_WORKER = textwrap.dedent(
    """
    import sys, time
    import schedy
    url = sys.argv[1]
    experiment = schedy.SchedyDB(url, lease_seconds=1.0).get_experiment('pbt')
    with experiment.next_job() as job:
        print(job.id, flush=True)
        time.sleep(600)  # killed long before this ends
    """
)


def test_worker_killed_mid_job_frees_its_member(store_url: str, tmp_path: Path) -> None:
    url = store_url
    db = schedy.SchedyDB(url)
    db.add_experiment(
        schedy.PopulationBasedTraining(
            "pbt",
            schedy.pbt.MAXIMIZE,
            "acc",
            exploit=schedy.pbt.Truncate(),
            initial_distributions={"lr": schedy.random.Uniform(0.1, 1.0)},
            population_size=1,
        )
    )
    experiment = db.get_experiment("pbt")
    with experiment.next_job() as first:
        first.results["acc"] = 0.5
        first.results["model_path"] = "ckpt/first"
    worker = subprocess.Popen(
        [sys.executable, "-c", HANGING_WORKER, url], stdout=subprocess.PIPE, text=True
    )
    try:
        assert worker.stdout is not None
        lost_id = worker.stdout.readline().strip()  # printed once it holds the member
        assert lost_id, "worker died before claiming"
        with pytest.raises(schedy.errors.NoJobError, match="busy"):
            experiment.next_job(timeout=0)  # its heartbeat keeps the member busy
        os.kill(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
    finally:
        if worker.poll() is None:
            worker.kill()
    # The member resumes once the lease (1 s) expires: next_job waits for it.
    resumed = experiment.next_job(timeout=30)
    lost = experiment.get_job(lost_id)
    assert lost.status == schedy.Job.CRASHED and "lease expired" in (lost.error or "")
    assert resumed.member == 0 and resumed.parent_id == first.id
    assert resumed.results["model_path"] == "ckpt/first"
    assert experiment.population()[0].crashes == 1


CHAOS_WORKER = textwrap.dedent(
    """
    import os, random, sys, time
    import schedy
    from schedy.errors import NoJobError
    url, log = sys.argv[1:3]
    experiment = schedy.SchedyDB(url, lease_seconds=1.0).get_experiment('chaos')
    rng = random.Random(os.getpid())
    with open(log, 'a') as claims:
        while True:
            try:
                job = experiment.next_job(timeout=60)
            except NoJobError:
                break
            claims.write(job.id + '\\n')
            claims.flush()
            os.fsync(claims.fileno())
            with job:
                time.sleep(rng.uniform(0.05, 0.15))  # training, killed at random
                job.results['acc'] = job.hyperparameters['lr'] * (1 + job.generation)
    """
)


def test_workers_killed_at_random_lose_and_duplicate_nothing(
    store_url: str, tmp_path: Path
) -> None:
    # Six workers run a population while one of them is SIGKILLed every
    # 0.25 s (and replaced) -- mid-claim, mid-training or mid-finish. Whatever
    # was killed, no job may be handed out twice, none may stay RUNNING, and
    # every lineage must stay a chain of DONE jobs one generation apart.
    import random

    db = schedy.SchedyDB(store_url)
    db.add_experiment(
        schedy.PopulationBasedTraining(
            "chaos",
            schedy.pbt.MAXIMIZE,
            "acc",
            exploit=schedy.pbt.Truncate(0.25),
            explore={"lr": schedy.pbt.Perturb()},
            initial_distributions={"lr": schedy.random.Uniform(0.1, 1.0)},
            population_size=4,
            max_generations=10,
            max_member_crashes=100,  # crashes here are the test's, not the members'
        )
    )
    rng = random.Random(7)
    logs: list[Path] = []

    def start() -> subprocess.Popen[str]:
        logs.append(tmp_path / f"claims{len(logs)}.txt")
        return subprocess.Popen(
            [sys.executable, "-c", CHAOS_WORKER, store_url, str(logs[-1])],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )

    workers = [start() for _ in range(6)]
    killed = 0
    try:
        for _ in range(8):
            time.sleep(0.25)  # the pace of the kills: there is no event to wait for
            alive = [w for w in workers if w.poll() is None]
            if not alive:
                break
            victim = rng.choice(alive)
            victim.kill()
            victim.wait(timeout=30)
            killed += 1
            workers.remove(victim)
            workers.append(start())
        for worker in workers:
            _, stderr = worker.communicate(timeout=240)
            assert worker.returncode == 0, stderr
            assert "Traceback" not in stderr, stderr
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
    assert killed >= 3  # the population outlived most of the kills
    claimed = [line for log in logs if log.exists() for line in log.read_text().split()]
    assert len(claimed) == len(set(claimed)), "a job was handed out twice"
    experiment = db.get_experiment("chaos")
    jobs = {job.id: job for job in experiment.all_jobs()}
    assert experiment.status == schedy.Experiment.DONE
    assert set(claimed) <= set(jobs)
    assert {job.status for job in jobs.values()} <= {schedy.Job.DONE, schedy.Job.CRASHED}
    for job in jobs.values():
        if job.status == schedy.Job.CRASHED:
            continue
        if job.parent_id is None:
            assert job.generation == 0
        else:
            parent = jobs[job.parent_id]
            assert parent.status == schedy.Job.DONE
            assert job.generation == (parent.generation or 0) + 1
    members = experiment.population()
    assert max(member.head_generation or 0 for member in members) == 9
    for member in members:  # at the last generation, or retired as a straggler
        assert member.ended and (member.head_generation or 0) <= 9
        assert jobs[member.head_id or ""].status == schedy.Job.DONE
    db.close()
