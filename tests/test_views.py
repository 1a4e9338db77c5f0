"""Seeing a run while it goes and reusing what it found: ``schedy lineage``, ``replay``,
``top`` and the one line per finished job of ``schedy worker`` / ``run_workers``.

The population is built so every step is known (as in ``tests/test_lineage.py``):
two members; member 1 is bad and copies member 0 at generation 2. ``top`` is
driven against a running experiment with a recording rich Console, its sleep
replaced by "the workers train meanwhile".
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import sys
import time
from pathlib import Path

import pytest

import schedy
from schedy._progress import FinishedJobs, describe, progress_line
from schedy.cli import main


class Cli:
    """``schedy --db <the test's store> ARGS…`` in-process, with what it printed."""

    def __init__(self, url: str, capsys: pytest.CaptureFixture[str]) -> None:
        self.url = url
        self._capsys = capsys

    def __call__(self, *args: str) -> tuple[int, str, str]:
        code = main(["--db", self.url, *args])
        captured = self._capsys.readouterr()
        return code, captured.out, captured.err

    def ok(self, *args: str) -> str:
        code, out, err = self(*args)
        assert code == 0, err
        return out


@pytest.fixture
def url(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SCHEDY_URL", raising=False)
    return f"sqlite:///{tmp_path}/views.db"


@pytest.fixture
def db(url: str) -> schedy.SchedyDB:
    handle = schedy.SchedyDB(url)
    yield handle
    handle.close()


@pytest.fixture
def cli(url: str, db: schedy.SchedyDB, capsys: pytest.CaptureFixture[str]) -> Cli:
    return Cli(url, capsys)


def make_pbt(db: schedy.SchedyDB, generations: int = 3) -> schedy.PopulationBasedTraining:
    experiment = schedy.PopulationBasedTraining(
        "pbt",
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(0.5),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={"lr": schedy.random.LogUniform(1e-3, 1e-1)},
        population_size=2,
        max_generations=generations,
        seed=4,
    )
    db.add_experiment(experiment)
    return experiment


SCORES = {(0, 0): 0.5, (1, 0): 0.1, (0, 1): 0.6, (1, 2): 0.8, (0, 2): 0.7}
NAMES = {(0, 0): "a0", (1, 0): "b0", (0, 1): "a1", (1, 2): "b1", (0, 2): "a2"}


def train(experiment: schedy.Experiment, cycles: int | None = None) -> dict[str, str]:
    """Run ``cycles`` cycles (None: until nothing is left); the names of the jobs trained."""
    ids: dict[str, str] = {}
    done = 0
    while cycles is None or done < cycles:
        try:
            job = experiment.next_job(timeout=0)
        except schedy.errors.NoJobError:
            break
        with job:
            key = (job.member, job.generation)
            job.results["acc"] = SCORES.get(key, 0.3)  # type: ignore[arg-type]
            job.results["model_path"] = f"ckpt/{job.id}"
            job.results["history"] = {"acc": [0.1] * 120}  # as the integrations write it
            ids[NAMES.get(key, job.id)] = job.id  # type: ignore[arg-type]
        done += 1
    return ids


@pytest.fixture
def population(db: schedy.SchedyDB) -> dict[str, str]:
    """The known population: the best job is b1, trained a0 -> a1 -> b1 (an exploit)."""
    return train(make_pbt(db))


# -- schedy lineage ------------------------------------------------------------------


def psql_rows(table: str) -> list[list[str]]:
    """The body rows of a psql table, as cells."""
    lines = [line for line in table.splitlines() if line.startswith("|") and line[1] != "-"]
    return [[cell.strip() for cell in line.split("|")[1:-1]] for line in lines[1:]]


def test_lineage_folds_runs_of_the_best_schedule(cli: Cli, population: dict[str, str]) -> None:
    out = cli.ok("lineage", "pbt")
    assert out.splitlines()[0].startswith(f"Lineage of job {population['b1']} (3 steps; acc = 0.8)")
    header = out.splitlines()[2]
    assert [c.strip() for c in header.split("|")[1:-1]][:5] == [
        "generation",
        "jobs",
        "id",
        "member",
        "exploited_from",
    ]
    rows = psql_rows(out)
    assert [row[:5] for row in rows] == [
        ["0-1", "2", population["a1"], "0", ""],  # a0 and a1: one run, folded
        ["2", "1", population["b1"], "1", population["a1"]],  # the exploit
    ]
    assert rows[0][-1] == "0.6" and rows[1][-1] == "0.8"


def test_lineage_full_json_and_csv(
    cli: Cli, db: schedy.SchedyDB, population: dict[str, str]
) -> None:
    steps = db.get_experiment("pbt").lineage()
    full = psql_rows(cli.ok("lineage", "pbt", "--full"))
    assert [row[1] for row in full] == [population[n] for n in ("a0", "a1", "b1")]
    assert full[1][4] == ""  # a1 changed no hyperparameter: its lr cell is empty
    assert json.loads(cli.ok("lineage", "pbt", "--json")) == steps
    table = list(csv.reader(io.StringIO(cli.ok("lineage", "pbt", "--csv"))))
    assert table[0] == [
        "job_id",
        "member",
        "generation",
        "status",
        "parent_id",
        "exploited_from",
        "lr",
        "acc",
    ]
    assert [row[0] for row in table[1:]] == [step["job_id"] for step in steps]
    assert [float(row[6]) for row in table[1:]] == [s["hyperparameters"]["lr"] for s in steps]
    last = cli.ok("lineage", "pbt", population["a2"], "--full")
    assert psql_rows(last)[-1][1] == population["a2"]


def test_lineage_errors_are_one_line(cli: Cli, db: schedy.SchedyDB) -> None:
    db.add_experiment(schedy.ManualSearch("manual"))
    code, _, err = cli("lineage", "manual")
    assert code == 1 and "has no scored DONE job yet: give a job id" in err
    make_pbt(db)
    code, _, err = cli("lineage", "pbt", "nope")
    assert code == 1 and "no job 'nope'" in err
    code, _, err = cli("lineage", "pbt", "--json", "--csv")
    assert code == 2 and "not allowed with" in err


# -- schedy replay -------------------------------------------------------------------


def test_replay_creates_the_experiment_and_says_how_to_run_it(
    cli: Cli, db: schedy.SchedyDB, population: dict[str, str]
) -> None:
    out = cli.ok("replay", "pbt", "--name", "again")
    assert out.startswith(
        f"Created 'again': a replay of job {population['b1']} (member 1, generation 2, "
        "acc = 0.8) of 'pbt', 3 steps"
    )
    assert "schedy worker again --workers 1 -- python train.py" in out
    replay = db.get_experiment("again")
    assert isinstance(replay, schedy.Replay)
    assert replay.source == {"experiment": "pbt", "job_id": population["b1"]}
    schedule = db.get_experiment("pbt").best_schedule()
    assert replay.steps == [{"hyperparameters": s["hyperparameters"]} for s in schedule]
    cli.ok("replay", "pbt", population["a2"], "--name", "other one")
    assert db.get_experiment("other one").source["job_id"] == population["a2"]
    code, _, err = cli("replay", "pbt", "--name", "again")
    assert code == 1 and "already exists" in err
    code, _, err = cli("replay", "pbt")
    assert code == 2 and "--name" in err


# -- progress lines ------------------------------------------------------------------


def test_finished_jobs_are_read_as_they_end(db: schedy.SchedyDB) -> None:
    experiment = make_pbt(db)
    before = train(experiment, 2)  # a0, b0: before watching
    watcher = FinishedJobs(experiment)
    assert watcher.poll() == []
    running = experiment.next_job(timeout=0)  # a1, in flight
    assert watcher.poll() == [] and watcher.open["RUNNING"] == 1
    with running:
        running.results["acc"] = 0.6
    rest = train(experiment)
    ended = watcher.poll()
    assert [job.id for job in ended] == [running.id, *rest.values()]
    assert watcher.poll() == []
    assert watcher.ended["DONE"] == 5 and watcher.total == 5
    lines = {job.id: describe(watcher, job) for job in ended}
    assert lines[running.id] == "member 0 gen 1  acc 0.6"
    exploit = next(job for job in ended if job.exploited_from is not None)
    parent = experiment.get_job(exploit.parent_id or "")
    old, new = parent.hyperparameters["lr"], exploit.hyperparameters["lr"]
    assert (
        lines[exploit.id] == f"member 1 gen 2 ← member 0 (exploit)  lr {old:.4g}→{new:.4g}  acc 0.8"
    )
    first = experiment.get_job(before["a0"])
    assert progress_line(first, result_name="acc") == (
        f"member 0 gen 0 (new)  lr {first.hyperparameters['lr']:.4g}  acc 0.5"
    )


def test_finished_jobs_since_a_time_read_the_history_on_the_first_poll(
    db: schedy.SchedyDB,
) -> None:
    experiment = make_pbt(db)
    before = train(experiment, 2)
    time.sleep(0.01)  # SQLite stamps jobs with this machine's clock
    watcher = FinishedJobs(experiment, since=time.time())
    assert watcher.total == 0  # nothing read yet: a launcher starts its workers first
    after = train(experiment, 1)
    assert [job.id for job in watcher.poll()] == list(after.values())
    assert watcher.total == 3 and watcher.ended["DONE"] == 3
    assert set(before.values()).isdisjoint(job.id for job in watcher.poll())


def test_a_crashed_or_plain_job_line(db: schedy.SchedyDB) -> None:
    manual = schedy.ManualSearch("manual")
    db.add_experiment(manual)
    manual.add_job({"x": 1, "act": "relu"})
    manual.add_job({"x": 2, "act": "tanh"})
    watcher = FinishedJobs(manual)
    with manual.next_job() as job:
        job.results.update(loss=0.25, epoch=3, model_path="m.pt")
    with pytest.raises(ValueError), manual.next_job():
        raise ValueError("diverged at step 7")
    done, crashed = watcher.poll()
    assert describe(watcher, done) == f"job {done.id}  x 1  act relu  loss 0.25"
    assert describe(watcher, crashed) == (
        f"job {crashed.id}  CRASHED  x 2  act tanh  ValueError: diverged at step 7"
    )


def test_a_member_retired_early_gets_a_line(db: schedy.SchedyDB) -> None:
    # Member 1 stays in the bottom at generation 0 while member 0 finishes its schedule:
    # PBT retires it (a straggler) instead of training it on with nothing to copy.
    experiment = schedy.PopulationBasedTraining(
        "retiring",
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(0.5),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={"lr": schedy.random.Uniform(0, 1)},
        population_size=2,
        max_generations=2,
        seed=1,
    )
    db.add_experiment(experiment)
    watcher = FinishedJobs(experiment)
    assert watcher.retired() == []  # the first look only learns what had ended
    scores = iter([0.9, 0.1, 0.95, 0.2, 0.3])
    with contextlib.suppress(schedy.errors.NoJobError):
        while True:
            with experiment.next_job(timeout=0) as job:
                job.results["acc"] = next(scores)
    early = [
        f"member {m.index} retired at generation {m.head_generation}: {m.ended_reason}"
        for m in experiment.population()
        if m.ended and (m.head_generation or 0) + 1 < 2
    ]
    assert early == [
        "member 1 retired at generation 0: straggler: in the bottom at generation 0 while "
        "every better member has finished its schedule, so there is nothing to copy"
    ]
    assert watcher.retired() == early
    assert watcher.retired() == []  # said once


# -- schedy worker / run_workers: one line per finished job ------------------------------

WORKER_PY = """\
import os, schedy
experiment = schedy.SchedyDB(os.environ["SCHEDY_URL"]).get_experiment("pbt")
scores = {(0, 0): 0.5, (1, 0): 0.1, (0, 1): 0.6, (1, 2): 0.8, (0, 2): 0.7}
while True:
    try:
        job = experiment.next_job()
    except schedy.errors.NoJobError:
        break
    with job:
        job.results["acc"] = scores.get((job.member, job.generation), 0.3)
verbose = "verbose" if os.environ.get("SCHEDY_VERBOSE") == "1" else ""
print("worker", os.environ["SCHEDY_WORKER_INDEX"], verbose, flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("talk", ["", "--quiet", "--verbose"])
def test_schedy_worker_prints_one_line_per_finished_job(
    url: str, db: schedy.SchedyDB, tmp_path: Path, capfd: pytest.CaptureFixture[str], talk: str
) -> None:
    make_pbt(db)
    (tmp_path / "worker.py").write_text(WORKER_PY)
    options = [talk] if talk else []
    command = ["--db", url, "worker", "pbt", "--gpus", "none", *options]
    code = main([*command, sys.executable, "worker.py"])
    out, err = capfd.readouterr()
    assert code == 0, err
    lines = [line for line in out.splitlines() if line.startswith("member ")]
    lines = [line for line in lines if " retired " not in line]  # a straggler, if one was
    if talk == "--quiet":
        assert lines == []
    else:
        # Two workers race, so which jobs PBT makes varies: each job has its line, once.
        assert sorted(lines) == sorted(expected_lines(db.get_experiment("pbt")))
        assert sum("(new)" in line for line in lines) == 2
    # The workers' own output is theirs, whatever the option; --verbose tells them so.
    said = sorted(line.strip() for line in out.splitlines() if line.startswith("worker "))
    expected = "worker {} verbose" if talk == "--verbose" else "worker {}"
    assert said == [expected.format(0), expected.format(1)]
    assert ("schedy: worker 0 started" in err) == (talk == "--verbose")
    assert "Traceback" not in err


def expected_lines(experiment: schedy.Experiment) -> list[str]:
    """The progress line of every job in the store, computed from the store."""
    lines = []
    for job in experiment.all_jobs():
        parent = None if job.parent_id is None else experiment.get_job(job.parent_id)
        donor = None if job.exploited_from is None else experiment.get_job(job.exploited_from)
        lines.append(
            progress_line(
                job,
                parent=None if parent is None else parent.hyperparameters,
                donor=None if donor is None else donor.member,
                result_name="acc",
            )
        )
    return lines


def train_function(job: schedy.Job) -> None:
    """A function worker (module level: spawned processes import it)."""
    job.results["acc"] = SCORES.get((job.member, job.generation), 0.3)  # type: ignore[arg-type]


@pytest.mark.slow
def test_run_workers_prints_the_lines_too(
    db: schedy.SchedyDB, url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    make_pbt(db)
    assert schedy.run_workers(train_function, "pbt", workers=2, db=url, gpus=[]) == 0
    lines = capsys.readouterr().out.splitlines()
    retired = [line for line in lines if " retired " in line]
    ended_early = [m for m in db.get_experiment("pbt").population() if m.ended]
    assert len(retired) <= len(ended_early)
    jobs = [line for line in lines if " retired " not in line]
    assert sorted(jobs) == sorted(expected_lines(db.get_experiment("pbt")))
    with pytest.raises(ValueError, match="progress must be one of lines, quiet, verbose"):
        schedy.run_workers(train_function, "pbt", db=url, progress="loud")  # type: ignore[arg-type]


# -- schedy top ----------------------------------------------------------------------


def recording_console() -> object:
    from rich.console import Console

    return Console(record=True, width=150, file=io.StringIO(), force_terminal=True)


def test_top_follows_a_running_experiment_until_done(db: schedy.SchedyDB) -> None:
    pytest.importorskip("rich")
    from schedy.cli._top import run_top

    experiment = make_pbt(db)
    train(experiment, 2)
    console = recording_console()
    frames: list[str] = []
    in_flight: list[schedy.Job] = []

    def workers_meanwhile(seconds: float) -> None:
        assert seconds == 0.5
        frames.append(console.export_text(clear=True))  # type: ignore[attr-defined]
        for job in in_flight:  # the job left running at the last refresh ends
            with job:
                job.results["acc"] = SCORES[(job.member, job.generation)]  # type: ignore[index]
        in_flight.clear()
        train(experiment, 1)
        with contextlib.suppress(schedy.errors.NoJobError):
            in_flight.append(experiment.next_job(timeout=0))  # running while top refreshes

    assert run_top(experiment, 0.5, console=console, sleep=workers_meanwhile) == 0  # type: ignore[arg-type]
    frames.append(console.export_text())  # type: ignore[attr-defined]
    assert len(frames) >= 3  # refreshed several times, then ended by itself at DONE
    assert "jobs 2 done of 2" in frames[0] and "RUNNING" in frames[0]
    assert any("running" in frame and "in job" in frame for frame in frames[1:-1])
    assert any("← member 0 (exploit)" in frame for frame in frames)
    last = frames[-1]
    best = experiment.best()
    assert best is not None and best.results["acc"] == 0.8
    assert f"best acc 0.8: job {best.id}, member 1, generation 2" in last
    assert "★ 1" in last  # the best member's row is marked
    assert "DONE" in last and "jobs 5 done of 5" in last
    assert "schedy does not store which worker or host" in last


def test_top_says_why_a_member_ended_early(db: schedy.SchedyDB) -> None:
    pytest.importorskip("rich")
    from schedy.cli._top import run_top

    experiment = schedy.PopulationBasedTraining(
        "straggling",
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(0.5),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={"lr": schedy.random.Uniform(0, 1)},
        population_size=2,
        max_generations=2,
        seed=1,
    )
    db.add_experiment(experiment)
    scores = iter([0.9, 0.1, 0.95])  # member 1 ends as a straggler, then DONE
    with contextlib.suppress(schedy.errors.NoJobError):
        while True:
            with experiment.next_job(timeout=0) as job:
                job.results["acc"] = next(scores)
    console = recording_console()
    assert run_top(experiment, 0.5, console=console) == 0  # type: ignore[arg-type]
    shown = console.export_text()  # type: ignore[attr-defined]
    assert "ended early" in shown and "ended early:" in shown
    assert "member 1 ended: straggler: in the bottom at generation 0" in shown


def test_top_ends_quietly_on_ctrl_c(
    cli: Cli, db: schedy.SchedyDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rich")
    train(make_pbt(db), 2)

    def interrupted(seconds: float) -> None:
        assert seconds == 2.0  # the default interval
        raise KeyboardInterrupt

    monkeypatch.setattr("schedy.cli._top.time.sleep", interrupted)
    code, _, err = cli("top", "pbt")
    assert code == 0 and err == ""
    code, _, err = cli("top", "pbt", "--interval", "0")
    assert code == 2 and "--interval takes a number of seconds > 0, not 0" in err


def test_top_without_rich_names_the_extra(
    cli: Cli, db: schedy.SchedyDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    make_pbt(db)
    monkeypatch.setitem(sys.modules, "rich", None)
    code, _, err = cli("top", "pbt")
    assert code == 1 and "pip install 'schedy[top]'" in err


def test_top_of_a_search_shows_its_jobs_in_flight(db: schedy.SchedyDB) -> None:
    pytest.importorskip("rich")
    from schedy.cli._top import run_top

    manual = schedy.ManualSearch("manual")
    db.add_experiment(manual)
    manual.add_job({"x": 1})
    manual.add_job({"x": 2})
    held = manual.next_job()
    console = recording_console()

    def stop(seconds: float) -> None:
        raise KeyboardInterrupt

    assert run_top(manual, 1, console=console, sleep=stop) == 0  # type: ignore[arg-type]
    shown = console.export_text()  # type: ignore[attr-defined]
    assert "jobs in flight" in shown and held.id in shown and "QUEUED" in shown
    held.status = schedy.Job.DONE
    held.put()


def test_show_watch_on_a_terminal_is_top(
    cli: Cli, db: schedy.SchedyDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("rich")
    train(make_pbt(db), 2)
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)

    def interrupted(seconds: float) -> None:
        assert seconds == 5.0  # --watch's own default interval
        raise KeyboardInterrupt

    monkeypatch.setattr("schedy.cli._top.time.sleep", interrupted)
    code, out, err = cli("show", "pbt", "--watch")
    assert code == 0 and err == ""
    assert "every 5 s · Ctrl-C quits" in out and "jobs 2 done of 2" in out
