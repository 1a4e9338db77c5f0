"""Preemption: SLURM and Kubernetes send SIGTERM before they kill a worker."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import schedy

WORKER = textwrap.dedent(
    """
    import sys, time, schedy
    experiment = schedy.SchedyDB(sys.argv[1], lease_seconds=600).get_experiment("pbt")
    for job in experiment.jobs():
        with job:
            print("training", job.id, flush=True)
            for _ in range(1200):  # steps: a signal landing just before one long
                time.sleep(0.1)  # sleep() call would wait for its end
    """
)


def test_sigterm_ends_the_job_at_once_and_the_worker_exits_0(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/schedy.db"
    db = schedy.SchedyDB(url)
    db.add_experiment(
        schedy.PopulationBasedTraining(
            "pbt",
            schedy.pbt.MAXIMIZE,
            "acc",
            exploit=schedy.pbt.Truncate(0.5),
            initial_distributions={"lr": schedy.random.Uniform(0.1, 1.0)},
            population_size=1,
        )
    )
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    worker = subprocess.Popen(
        [sys.executable, str(script), url],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert worker.stdout is not None
    line = worker.stdout.readline()  # waits until the job runs
    assert line.startswith("training"), line + (worker.stderr.read() if worker.stderr else "")
    job_id = line.split()[1]
    worker.send_signal(signal.SIGTERM)
    assert worker.wait(timeout=30) == 0
    assert worker.stderr is not None and "Traceback" not in worker.stderr.read()
    experiment = db.get_experiment("pbt")
    job = experiment.get_job(job_id)
    assert job.status == schedy.Job.CRASHED
    assert (job.error or "").startswith("preempted")
    # Its member is free now, not after the 600 s lease: another worker goes on.
    retry = experiment.next_job(timeout=0)
    assert retry.member == job.member
    retry.status = schedy.Job.DONE
    retry.results["acc"] = 1.0
    retry.put()


def test_a_sigterm_handler_of_the_users_is_left_alone(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/schedy.db"
    db = schedy.SchedyDB(url)
    experiment = schedy.ManualSearch("m")
    db.add_experiment(experiment)
    experiment.add_job(hyperparameters={"x": 1})
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        with experiment.next_job() as job:
            signal.raise_signal(signal.SIGTERM)
        assert seen == [signal.SIGTERM]
        assert experiment.get_job(job.id).status == schedy.Job.DONE
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert signal.getsignal(signal.SIGTERM) is previous
