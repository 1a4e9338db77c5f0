"""The PBT MNIST example end to end, on digits: real worker processes per framework.

Checks what only whole runs show: lineages continue across processes, exploits
start from their source's checkpoint, disk stays bounded, and a worker killed
mid-epoch is recovered by the others.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import schedy

pytestmark = pytest.mark.slow

# Keras 3 picks its backend at import (importorskip below imports it): torch.
os.environ.setdefault("KERAS_BACKEND", "torch")

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "pbt_mnist"
MODULES = {"lightning": "lightning", "keras": "keras", "torch": "torch"}


def _environment(tmp_path: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("SCHEDY_URL", None)
    env["KERAS_BACKEND"] = "torch"
    env["KERAS_HOME"] = str(tmp_path / "keras")
    return env


@pytest.mark.parametrize("framework", ["lightning", "keras", "torch"])
def test_example_runs_pbt_with_two_worker_processes(tmp_path: Path, framework: str) -> None:
    pytest.importorskip("torch")
    pytest.importorskip(MODULES[framework])
    command = [
        sys.executable,
        str(EXAMPLE / "run.py"),
        "--framework", framework,
        "--workers", "2",
        "--population", "4",
        "--generations", "3",
        "--dataset", "digits",
        "--seed", "1",
    ]  # fmt: skip
    done = subprocess.run(
        command,
        cwd=tmp_path,
        env=_environment(tmp_path),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Best: job" in done.stdout  # the report: best job, score, schedule
    experiment = schedy.SchedyDB(f"sqlite:///{tmp_path}/schedy.db").get_experiment("MNIST with PBT")
    assert experiment.status == schedy.Experiment.DONE
    jobs = {job.id: job for job in experiment.all_jobs()}
    assert {job.status for job in jobs.values()} == {schedy.Job.DONE}
    for job in jobs.values():
        assert job.results["epoch"] == job.generation + 1  # one epoch per job, continued
        if job.parent_id is not None:
            parent = jobs[job.parent_id]
            assert job.results["history"]["epoch"][:-1] == parent.results["history"]["epoch"]
        if job.exploited_from is not None:
            source = jobs[job.exploited_from]
            assert job.hyperparameters["learning_rate"] != source.hyperparameters["learning_rate"]
    checkpoints = [p for p in (tmp_path / "checkpoints").iterdir()]
    assert 4 <= len(checkpoints) <= 4 + 2 + 1  # heads + in flight + the best


@pytest.mark.parametrize("framework", ["lightning", "keras", "torch"])
def test_worker_killed_mid_epoch_is_recovered(tmp_path: Path, framework: str) -> None:
    pytest.importorskip("torch")
    pytest.importorskip(MODULES[framework])
    env = _environment(tmp_path)
    env["SCHEDY_LEASE_SECONDS"] = "2"
    url = f"sqlite:///{tmp_path}/schedy.db"
    subprocess.run(
        [sys.executable, str(EXAMPLE / "create_experiment.py"), "--db", url, "--population", "2",
         "--generations", "2", "--max-layers", "2", "--seed", "3"],
        check=True, env=env, cwd=tmp_path,
    )  # fmt: skip
    script = EXAMPLE / f"{framework}_worker.py"
    worker = [sys.executable, str(script), "--db", url, "--dataset", "digits"]
    # Batches of one make an epoch last seconds: the kill lands mid-epoch.
    victim = subprocess.Popen([*worker, "--batch-size", "1"], env=env, cwd=tmp_path)
    experiment = schedy.SchedyDB(url).get_experiment("MNIST with PBT")
    try:
        deadline = time.monotonic() + 120
        while not any(m.busy_id for m in experiment.population()):
            assert time.monotonic() < deadline and victim.poll() is None
            time.sleep(0.1)  # polling the store: there is no event to wait on
        time.sleep(1.0)  # well into the epoch (the store has no event for that either)
        lost = next(m.busy_id for m in experiment.population() if m.busy_id)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait(timeout=30)
    finally:
        if victim.poll() is None:
            victim.kill()
    assert experiment.get_job(lost).status == schedy.Job.RUNNING  # nobody noticed yet
    survivors = schedy.run_workers(worker, "MNIST with PBT", workers=2, db=url, gpus=[])
    assert survivors == 0
    crashed = experiment.get_job(lost)
    assert crashed.status == schedy.Job.CRASHED and "lease expired" in (crashed.error or "")
    jobs = list(experiment.all_jobs())
    retried = [j for j in jobs if j.member == crashed.member and j.generation == crashed.generation]
    assert any(j.status == schedy.Job.DONE for j in retried)  # its member went on
    assert schedy.SchedyDB(url).get_experiment("MNIST with PBT").status == schedy.Experiment.DONE


@pytest.mark.slow
def test_running_the_example_again_resumes_it_and_fresh_starts_over(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    command = [
        sys.executable, str(EXAMPLE / "run.py"), "--framework", "torch", "--workers", "1",
        "--population", "2", "--generations", "2", "--dataset", "digits", "--seed", "1", "--quiet",
    ]  # fmt: skip

    def run(*extra: str) -> str:
        done = subprocess.run(
            [*command, *extra],
            cwd=tmp_path,
            env=_environment(tmp_path),
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        return done.stdout

    run()
    store = f"sqlite:///{tmp_path}/schedy.db"
    first = {job.id for job in schedy.SchedyDB(store).get_experiment("MNIST with PBT").all_jobs()}
    again = run()
    assert "resuming 'MNIST with PBT'" in again and "--fresh" in again
    after = {job.id for job in schedy.SchedyDB(store).get_experiment("MNIST with PBT").all_jobs()}
    assert after == first  # finished: nothing more to do, nothing lost
    run("--fresh")
    fresh = {job.id for job in schedy.SchedyDB(store).get_experiment("MNIST with PBT").all_jobs()}
    assert fresh and not fresh & first
