"""Local multi-worker launch: schedy.run_workers with functions and commands, Ctrl-C."""

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
from schedy import _processes, _workers
from schedy._workers import detect_gpus

pytestmark = pytest.mark.slow


def _pbt(db: schedy.SchedyDB, generations: int = 3) -> None:
    db.add_experiment(
        schedy.PopulationBasedTraining(
            "pbt",
            schedy.pbt.MAXIMIZE,
            "acc",
            exploit=schedy.pbt.Truncate(),
            explore={"lr": schedy.pbt.Perturb()},
            initial_distributions={"lr": schedy.random.Uniform(0.1, 1.0)},
            population_size=4,
            max_generations=generations,
        )
    )


def train(job: schedy.Job) -> None:
    """A module-level (picklable) training function."""
    job.results["acc"] = job.hyperparameters["lr"] + job.results.get("acc", 0.0)
    job.results["worker"] = int(os.environ["SCHEDY_WORKER_INDEX"])


def test_function_workers_run_the_experiment_to_the_end(store_url: str, tmp_path: Path) -> None:
    url = store_url  # the server's token reaches workers through $SCHEDY_TOKEN
    db = schedy.SchedyDB(url)
    _pbt(db)
    assert schedy.run_workers(train, "pbt", workers=3, db=url, gpus=[]) == 0
    experiment = db.get_experiment("pbt")
    jobs = list(experiment.all_jobs())
    assert {job.status for job in jobs} == {schedy.Job.DONE}
    assert experiment.status == schedy.Experiment.DONE
    assert {job.results["worker"] for job in jobs} <= {0, 1, 2}


COMMAND_WORKER = textwrap.dedent(
    """
    import json, os, sys
    import schedy
    experiment = schedy.SchedyDB().get_experiment(os.environ['SCHEDY_EXPERIMENT'])
    while True:
        try:
            with experiment.next_job() as job:
                job.results['acc'] = job.hyperparameters['lr']
                job.results['env'] = {k: os.environ.get(k) for k in
                                      ('CUDA_VISIBLE_DEVICES', 'SCHEDY_WORKER_INDEX')}
        except schedy.errors.NoJobError:
            break
    """
)


def test_command_workers_get_their_gpu_and_index(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    db = schedy.SchedyDB(url)
    _pbt(db, generations=2)
    command = [sys.executable, "-c", COMMAND_WORKER]
    assert schedy.run_workers(command, "pbt", workers=3, db=url, gpus=["5", "7"]) == 0
    envs = {
        json.dumps(job.results["env"], sort_keys=True)
        for job in db.get_experiment("pbt").all_jobs()
    }
    pairs = {(e["SCHEDY_WORKER_INDEX"], e["CUDA_VISIBLE_DEVICES"]) for e in map(json.loads, envs)}
    assert pairs <= {("0", "5"), ("1", "7"), ("2", "5")}


def test_gpus_per_job_gives_each_worker_a_group_of_its_own(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    _pbt(schedy.SchedyDB(url))
    seen = tmp_path / "seen"
    seen.mkdir()
    record = (
        "import os, sys; open(os.path.join(sys.argv[1], os.environ['SCHEDY_WORKER_INDEX']), "
        "'w').write(os.environ['CUDA_VISIBLE_DEVICES'])"
    )
    command = [sys.executable, "-c", record, str(seen)]
    fake = ["4", "5", "6", "7"]
    assert schedy.run_workers(command, "pbt", db=url, gpus=fake, gpus_per_job=2) == 0
    # workers = GPUs // K, each seeing its own K devices (no worker shares one).
    assert {path.name: path.read_text() for path in seen.iterdir()} == {"0": "4,5", "1": "6,7"}


@pytest.mark.parametrize(
    ("gpus", "per_job", "expected"),
    [
        (["0", "1", "2", "3"], 2, ["0,1", "2,3"]),
        (["0", "1", "2", "3"], 4, ["0,1,2,3"]),
        (["3", "1"], 1, ["3", "1"]),
    ],
)
def test_gpu_groups(gpus: list[str], per_job: int, expected: list[str]) -> None:
    assert _workers.gpu_groups(gpus, per_job) == expected
    envs = [_workers._worker_env(i, expected, None, "e") for i in range(len(expected))]
    assert [env["CUDA_VISIBLE_DEVICES"] for env in envs] == expected


@pytest.mark.parametrize(
    ("gpus", "per_job", "workers", "message"),
    [
        (["0", "1", "2"], 2, None, r"3 GPUs \(0,1,2\) do not split into groups of 2"),
        (["0", "1"], 3, None, r"gpus_per_job=3 is more than the 2 GPU\(s\)"),
        ([], 2, None, "needs GPUs, and none were found"),
        (["0", "1"], 0, None, "gpus_per_job must be an int >= 1"),
        (["0", "1", "2", "3"], 2, 3, "3 workers of 2 GPUs each need 6 GPUs; there are 4"),
    ],
)
def test_gpus_per_job_that_cannot_fit_is_refused(
    gpus: list[str], per_job: int, workers: int | None, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        schedy.run_workers(["true"], "pbt", workers=workers, gpus=gpus, gpus_per_job=per_job)


def test_schedy_worker_gpus_per_job_error_is_clear(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    _pbt(schedy.SchedyDB(url))
    cli = [sys.executable, "-m", "schedy", "--db", url, "worker", "pbt"]
    done = subprocess.run(
        [*cli, "--gpus", "0,1,2", "--gpus-per-job", "2", "--", "true"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert "do not split into groups of 2" in done.stderr


@pytest.mark.parametrize(
    ("visible", "expected"), [("0,1", ["0", "1"]), ("", []), ("-1", []), ("3", ["3"])]
)
def test_detect_gpus_honours_cuda_visible_devices(
    monkeypatch: pytest.MonkeyPatch, visible: str, expected: list[str]
) -> None:
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert detect_gpus() == expected


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="workers"):
        schedy.run_workers(train, "pbt", workers=0)
    with pytest.raises(TypeError, match="list of arguments"):
        schedy.run_workers("python train.py", "pbt")  # type: ignore[arg-type]


SLOW_LAUNCHER = textwrap.dedent(
    """
    import sys, time
    import schedy

    def slow(job):
        job.results['acc'] = 1.0
        for _ in range(6000):  # interrupted long before; short steps, since a signal
            time.sleep(0.1)  # landing just before one long sleep() waits for its end

    if __name__ == '__main__':
        sys.exit(schedy.run_workers(slow, 'pbt', workers=2, db=sys.argv[1], gpus=[], grace=20))
    """
)


def test_ctrl_c_stops_all_workers_and_leaves_no_job_running(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    db = schedy.SchedyDB(url)
    _pbt(db)
    script = tmp_path / "launcher.py"
    script.write_text(SLOW_LAUNCHER)
    launcher = subprocess.Popen([sys.executable, str(script), url], cwd=tmp_path)
    experiment = db.get_experiment("pbt")
    try:
        deadline = time.monotonic() + 60
        while len([m for m in experiment.population() if m.busy_id]) < 2:
            assert time.monotonic() < deadline, "workers never started"
            assert launcher.poll() is None
            time.sleep(0.05)  # polling the store: there is no event to wait on
        launcher.send_signal(signal.SIGINT)
        assert launcher.wait(timeout=60) == 130
    finally:
        if launcher.poll() is None:
            launcher.kill()
    statuses = [job.status for job in experiment.all_jobs()]
    assert statuses.count(schedy.Job.CRASHED) == 2
    assert schedy.Job.RUNNING not in statuses


def test_schedy_worker_command(store_url: str, tmp_path: Path) -> None:
    url = store_url  # the server's token reaches workers through $SCHEDY_TOKEN
    db = schedy.SchedyDB(url)
    _pbt(db, generations=2)
    worker = tmp_path / "worker.py"
    worker.write_text(COMMAND_WORKER)
    cli = [sys.executable, "-m", "schedy", "--db", url, "worker"]
    done = subprocess.run(
        [*cli, "pbt", "--workers", "2", "--gpus", "none", "--", sys.executable, str(worker)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    jobs = list(db.get_experiment("pbt").all_jobs())
    assert jobs and {job.status for job in jobs} == {schedy.Job.DONE}
    typo = subprocess.run([*cli, "nope", "--", "true"], capture_output=True, text=True)
    assert typo.returncode == 1 and "no experiment named 'nope'" in typo.stderr
    empty = subprocess.run([*cli, "pbt"], capture_output=True, text=True)
    assert empty.returncode == 2 and "needs the worker command" in empty.stderr


def test_missing_worker_command_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="cannot start worker command 'no-such-program'"):
        schedy.run_workers(["no-such-program"], "pbt", workers=2, gpus=[])


# -- the supervision schedy run and run_workers share (schedy._processes) ------------

STUBBORN = textwrap.dedent(
    """
    import signal, sys, time
    ignored = sys.argv[1:]  # the signals this child ignores: INT, TERM
    for name in ignored:
        signal.signal(getattr(signal, "SIG" + name), signal.SIG_IGN)
    try:
        print("ready", flush=True)
        for _ in range(600):  # short steps: see SLOW_LAUNCHER
            time.sleep(0.1)
    except KeyboardInterrupt:
        print("last words", flush=True)
        sys.exit(130)
    """
)


def _child(*ignored: str) -> subprocess.Popen[bytes]:
    """A child in a session of its own (so no terminal Ctrl-C reaches it), once it is ready."""
    child = subprocess.Popen(
        [sys.executable, "-c", STUBBORN, *ignored], stdout=subprocess.PIPE, start_new_session=True
    )
    assert child.stdout is not None and child.stdout.readline() == b"ready\n"
    return child


@pytest.mark.parametrize(
    ("ignored", "code"),
    [
        ((), 130),  # Ctrl-C passed on: it ends cleanly, within the grace period
        (("INT",), -signal.SIGTERM),  # then SIGTERM
        (("INT", "TERM"), -signal.SIGKILL),  # then SIGKILL
    ],
)
def test_stop_escalates_from_ctrl_c_to_kill(
    monkeypatch: pytest.MonkeyPatch, ignored: tuple[str, ...], code: int
) -> None:
    monkeypatch.setattr(_processes, "TERMINATE_SECONDS", 0.5)
    child = _child(*ignored)
    said: list[bytes] = []
    started = time.monotonic()
    _processes.stop([child], grace=0.5 if ignored else 30, output=said.append)
    assert time.monotonic() - started < 10
    assert not _processes.alive(child) and _processes.exit_code(child) == code
    assert (b"".join(said) == b"last words\n") == (not ignored)  # its output passed on


def test_describe_exit() -> None:
    assert _processes.describe_exit(3) == "exited with status 3"
    assert _processes.describe_exit(-signal.SIGKILL) == "was killed by SIGKILL"
    assert _processes.describe_exit(-99) == "was killed by signal 99"


ONE_JOB_SCRIPT = textwrap.dedent(
    """
    import os, schedy
    experiment = schedy.SchedyDB().get_experiment(os.environ['SCHEDY_EXPERIMENT'])
    with experiment.next_job() as job:   # the README's snippet: one job, then exit 0
        job.results['acc'] = job.hyperparameters['lr']
        job.results['threads'] = os.environ.get('OMP_NUM_THREADS')
    """
)


@pytest.mark.slow
def test_schedy_worker_runs_a_one_job_script_until_the_experiment_is_done(
    tmp_path: Path,
) -> None:
    # A worker written as the one-job snippet used to leave the experiment
    # RUNNING with 2 of 4 members and no hint why.
    url = f"sqlite:///{tmp_path}/s.db"
    db = schedy.SchedyDB(url)
    _pbt(db, generations=2)
    script = tmp_path / "one_job.py"
    script.write_text(ONE_JOB_SCRIPT)
    cli = [sys.executable, "-m", "schedy", "--db", url, "worker", "pbt", "--workers", "2"]
    done = subprocess.run(
        [*cli, "--gpus", "none", "--", sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    experiment = db.get_experiment("pbt")
    assert experiment.status == schedy.Experiment.DONE
    jobs = list(experiment.all_jobs())
    assert len(jobs) >= 5 and {job.status for job in jobs} == {schedy.Job.DONE}
    assert {job.results["threads"] for job in jobs} == {str(_workers.threads_per_worker(2))}


def test_a_worker_that_finds_nothing_to_do_is_not_started_again(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    db = schedy.SchedyDB(url)
    db.add_experiment(schedy.ManualSearch("queue"))  # empty: nothing can come
    script = tmp_path / "one_job.py"
    script.write_text(
        "import os, schedy\n"
        "experiment = schedy.SchedyDB().get_experiment(os.environ['SCHEDY_EXPERIMENT'])\n"
        "try:\n    experiment.next_job()\nexcept schedy.errors.NoJobError:\n    pass\n"
    )
    code = schedy.run_workers(
        [sys.executable, str(script)], "queue", workers=1, db=url, gpus=[], progress="quiet"
    )
    assert code == 0  # and it returned: no restart loop


@pytest.mark.parametrize(("set_by_user", "expected"), [(None, "3"), ("7", "7")])
def test_each_worker_gets_its_share_of_the_cores(
    monkeypatch: pytest.MonkeyPatch, set_by_user: str | None, expected: str
) -> None:
    if set_by_user is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", set_by_user)
    env = _workers._worker_env(0, [], None, "e", threads=3)
    assert env["OMP_NUM_THREADS"] == expected
    assert env["MKL_NUM_THREADS"] == os.environ.get("MKL_NUM_THREADS", "3")
    assert _workers.threads_per_worker(10_000) == 1


PREEMPTED_WORKER = textwrap.dedent(
    """
    import os, time, schedy
    experiment = schedy.SchedyDB(lease_seconds=600).get_experiment(os.environ['SCHEDY_EXPERIMENT'])
    with experiment.next_job() as job:
        job.results['acc'] = 1.0
        for _ in range(1200):  # short steps: see SLOW_LAUNCHER
            time.sleep(0.1)
    """
)


@pytest.mark.slow
def test_sigterm_to_schedy_worker_preempts_every_job_and_exits_0(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path}/s.db"
    db = schedy.SchedyDB(url)
    _pbt(db)
    script = tmp_path / "worker.py"
    script.write_text(PREEMPTED_WORKER)
    launcher = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "schedy",
            "--db",
            url,
            "worker",
            "pbt",
            "--workers",
            "2",
            "--gpus",
            "none",
            "-q",
            "--",
            sys.executable,
            str(script),
        ],
    )
    experiment = db.get_experiment("pbt")
    try:
        deadline = time.monotonic() + 60
        while len([m for m in experiment.population() if m.busy_id]) < 2:
            assert time.monotonic() < deadline, "workers never started"
            time.sleep(0.05)
        launcher.send_signal(signal.SIGTERM)
        assert launcher.wait(timeout=60) == 0
    finally:
        if launcher.poll() is None:
            launcher.kill()
    jobs = list(experiment.all_jobs())
    assert [job.status for job in jobs] == [schedy.Job.CRASHED] * 2
    assert all((job.error or "").startswith("preempted") for job in jobs)
    # The members are free at once, not after the 600 s lease.
    assert len([m for m in experiment.population() if m.ready]) == 2
