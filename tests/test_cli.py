"""The ``schedy`` command: the tutorials' commands, bad input, PBT views and ``schedy run``.

Most commands run in-process through ``schedy.cli.main`` — a fresh
interpreter costs ~0.7 s of imports, and an exception escaping ``main``
fails the test just as a traceback would. The tests about the process
itself (``python -m schedy``, exit statuses, Ctrl-C) run a real subprocess.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

import schedy
from schedy.cli import main


@dataclass
class Outcome:
    code: int
    out: str
    err: str


class Cli:
    """Runs ``schedy --db <the test's store> ARGS…`` and captures what it prints."""

    def __init__(
        self, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        self.url = f"sqlite:///{tmp_path}/s.db"
        self.tmp_path = tmp_path
        self._capsys = capsys
        self._monkeypatch = monkeypatch

    def __call__(self, *args: str, stdin: str = "") -> Outcome:
        self._monkeypatch.setattr(sys, "stdin", io.StringIO(stdin))
        code = main(["--db", self.url, *args])
        captured = self._capsys.readouterr()
        return Outcome(code, captured.out, captured.err)

    def ok(self, *args: str, stdin: str = "") -> str:
        outcome = self(*args, stdin=stdin)
        assert outcome.code == 0, outcome.err
        return outcome.out

    def process(self, *args: str) -> Outcome:
        """Run it as users do: a new ``python -m schedy`` process."""
        env = {key: value for key, value in os.environ.items() if key != "SCHEDY_URL"}
        done = subprocess.run(
            [sys.executable, "-m", "schedy", "--db", self.url, *args],
            cwd=self.tmp_path,
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return Outcome(done.returncode, done.stdout, done.stderr)


def assert_error(outcome: Outcome, code: int, *fragments: str) -> None:
    """One ``schedy: error:`` line on stderr, the expected status, no traceback."""
    assert outcome.code == code, outcome
    lines = outcome.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("schedy: error: "), outcome.err
    for fragment in fragments:
        assert fragment in lines[0]


def rows(text: str) -> list[list[str]]:
    return [line.split() for line in text.strip().splitlines()]


def cells(line: str) -> list[str]:
    """The cells of one line of a psql table."""
    return [cell.strip() for cell in line.split("|")[1:-1]]


@pytest.fixture
def cli(tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Cli:
    monkeypatch.chdir(tmp_path)
    return Cli(tmp_path, capsys, monkeypatch)


@pytest.fixture
def db(cli: Cli) -> Iterator[schedy.SchedyDB]:
    with schedy.SchedyDB(cli.url) as handle:
        yield handle


def job_id(push_output: str) -> str:
    first = push_output.splitlines()[0]
    assert first.startswith("id: ")
    return first[len("id: ") :]


# -- the database tutorial: add, push, list, show, rm --------------------------


@pytest.fixture
def minimize(cli: Cli) -> list[str]:
    """The tutorial's MinimizeSimple with three DONE jobs and one queued, without result."""
    cli.ok("add", "MinimizeSimple", "manual")
    pushes = [
        ("-s", "DONE", "-p", "x", "1", "y", "2", "-r", "result", "5"),
        ("-s", "DONE", "-p", "x", "3", "y", "0", "-r", "result", "9"),
        ("-s", "DONE", "-p", "x", "0", "y", "1", "-r", "result", "1"),
        ("-p", "x", "7", "y", "7"),
    ]
    return [job_id(cli.ok("push", "MinimizeSimple", *push)) for push in pushes]


def test_push_prints_the_new_job(cli: Cli, minimize: list[str]) -> None:
    out = cli.ok(
        "push", "MinimizeSimple", "-s", "DONE", "-p", "x", "1", "y", "2", "-r", "result", "5"
    )
    for line in ("status: DONE", "x: 1", "y: 2", "result: 5"):
        assert line in out.splitlines()


def test_list_experiments(cli: Cli, minimize: list[str]) -> None:
    cli.ok("add", "R", "random", "x", "normal", '{"mean": 0, "std": 5}')
    assert rows(cli.ok("list")) == [
        ["MinimizeSimple", "RUNNING", "manual"],
        ["R", "RUNNING", "random"],
    ]
    table = cli.ok("list", "-t")
    assert "| name" in table and 'normal {"mean": 0.0, "std": 5.0}' in table


def test_list_jobs_plain_is_ids_and_statuses(cli: Cli, minimize: list[str]) -> None:
    expected = [[job, status] for job, status in zip(minimize, ["DONE"] * 3 + ["QUEUED"])]
    assert rows(cli.ok("list", "MinimizeSimple")) == expected


def test_list_jobs_table(cli: Cli, minimize: list[str]) -> None:
    lines = cli.ok("list", "-t", "MinimizeSimple").splitlines()
    assert cells(lines[1]) == ["id", "status", "x", "y", "result"]
    assert lines[3].endswith("| DONE     |   1 |   2 |        5 |")  # numbers align right
    assert len(lines) == 4 + len(minimize)


@pytest.mark.parametrize(
    ("options", "order"),
    [
        (["-s", "result"], [2, 0, 1, 3]),
        (["-s", "result", "-d"], [1, 0, 2, 3]),  # the job without result stays last
        (["-s", "x", "-d"], [3, 1, 0, 2]),
        (["-s", "status", "-s", "y"], [1, 2, 0, 3]),
        (["-d"], [3, 2, 1, 0]),
    ],
)
def test_list_sort(cli: Cli, minimize: list[str], options: list[str], order: list[int]) -> None:
    out = cli.ok("list", "MinimizeSimple", *options, "-f", "id")
    assert rows(out) == [[minimize[index]] for index in order]


def test_list_table_sorted_like_the_tutorial(cli: Cli, minimize: list[str]) -> None:
    table = cli.ok("list", "-t", "MinimizeSimple", "-s", "result")
    assert [cells(line)[0] for line in table.splitlines()[3:-1]] == [
        minimize[index] for index in (2, 0, 1, 3)
    ]


def test_nan_sorts_last_and_numbers_numerically(cli: Cli, minimize: list[str]) -> None:
    nan = job_id(
        cli.ok("push", "MinimizeSimple", "-s", "DONE", "-p", "x", "2", "-r", "result", "NaN")
    )
    big = job_id(
        cli.ok("push", "MinimizeSimple", "-s", "DONE", "-p", "x", "2", "-r", "result", "10")
    )
    for options in ([], ["-d"]):
        ids = [
            row[0]
            for row in rows(cli.ok("list", "MinimizeSimple", "-s", "result", "-f", "id", *options))
        ]
        assert ids[-2:] == [minimize[3], nan]
    assert rows(cli.ok("list", "MinimizeSimple", "-s", "result", "-d", "-f", "id"))[0] == [big]


def test_list_paragraphs_and_fields(cli: Cli, minimize: list[str]) -> None:
    paragraphs = cli.ok("list", "-p", "MinimizeSimple").strip().split("\n\n")
    assert paragraphs[0].splitlines() == [
        f"id: {minimize[0]}",
        "status: DONE",
        "x: 1",
        "y: 2",
        "result: 5",
    ]
    assert len(paragraphs) == len(minimize)
    table = cli.ok("list", "-t", "MinimizeSimple", "-f", "result", "-f", "x")
    assert cells(table.splitlines()[1]) == ["result", "x"]


def test_ambiguous_field_names_use_their_category(cli: Cli) -> None:
    cli.ok("add", "E", "manual")
    cli.ok("push", "E", "-s", "DONE", "-p", "x", "1", "-r", "x", "2")
    assert "hyperparameter.x" in cli.ok("list", "-t", "E")
    assert rows(cli.ok("list", "E", "-f", "result.x")) == [["2"]]
    assert_error(cli("list", "E", "-s", "x"), 2, "ambiguous", "hyperparameter.x or result.x")


def test_unknown_field_names_the_fields(cli: Cli, minimize: list[str]) -> None:
    assert_error(
        cli("list", "MinimizeSimple", "-s", "score"), 2, "'score'", "id, status, x, y, result"
    )


def test_show_experiment_and_job(cli: Cli, minimize: list[str]) -> None:
    assert cli.ok("show", "MinimizeSimple").splitlines() == [
        "name: MinimizeSimple",
        "status: RUNNING",
        "scheduler: manual",
    ]
    job = cli.ok("show", "MinimizeSimple", minimize[0]).splitlines()
    assert job[:2] == [f"id: {minimize[0]}", "status: DONE"]
    assert {"x: 1", "y: 2", "result: 5"} <= set(job)
    assert_error(cli("show", "MinimizeSimple", "nope"), 1, "no job 'nope'")


@pytest.mark.parametrize(("answer", "removed"), [("n\n", False), ("", False), ("y\n", True)])
def test_rm_job_asks_first(cli: Cli, minimize: list[str], answer: str, removed: bool) -> None:
    out = cli.ok("rm", "MinimizeSimple", minimize[0], stdin=answer)
    assert "[y/N]" in out
    remaining = [row[0] for row in rows(cli.ok("list", "MinimizeSimple"))]
    assert (minimize[0] not in remaining) is removed


def test_rm_without_confirmation(cli: Cli, minimize: list[str]) -> None:
    cli.ok("rm", "MinimizeSimple", minimize[0], "-f")
    assert [row[0] for row in rows(cli.ok("list", "MinimizeSimple"))] == minimize[1:]
    assert "Not removed" in cli.ok("rm", "MinimizeSimple", stdin="no\n")
    assert cli.ok("rm", "MinimizeSimple", "-f") == ""
    assert cli.ok("list") == ""
    assert_error(cli("list", "MinimizeSimple"), 1, "no experiment named 'MinimizeSimple'")


# -- add: random search and PBT ----------------------------------------------------

ALL_DISTRIBUTIONS = [
    *("x", "normal", '{"mean": 0, "std": 5}'),
    *("u", "uniform", '{"low": 2.1, "high": 5}'),
    *("lr", "loguniform", '{"low": 0.000001, "high": 0.1}'),
    *("scale", "lognormal", '{"mean": 0, "std": 1}'),
    *("n", "intuniform", '{"low": 1, "high": 9}'),
    *("width", "intloguniform", '{"low": 16, "high": 512}'),
    *("act", "choice", '{"values": [false, 1, "two", [4]], "weights": [1, 2, 3, 4]}'),
    *("zero", "const", "0"),
    *("config", "const", '{"log_dir": "/var/log", "schedy_rocks": true}'),
]


def test_add_random_with_every_distribution(cli: Cli, db: schedy.SchedyDB) -> None:
    out = cli.ok("add", "Test", "random", *ALL_DISTRIBUTIONS, "--seed", "7")
    assert 'act: choice {"values": [false, 1, "two", [4]], "weights": [1.0, 2.0, 3.0, 4.0]}' in out
    experiment = db.get_experiment("Test")
    assert isinstance(experiment, schedy.RandomSearch)
    assert experiment.seed == 7
    assert experiment.distributions["x"] == schedy.random.Normal(0, 5)
    assert experiment.distributions["config"] == schedy.random.Constant(
        {"log_dir": "/var/log", "schedy_rocks": True}
    )
    with experiment.next_job() as job:
        assert set(job.hyperparameters) == set(ALL_DISTRIBUTIONS[::3])


BAD_ADDS = [
    (["random", "x", "normal", "{mean: 0}"], "invalid JSON for 'x' (normal)"),
    (["random", "x", "gauss", "{}"], "unknown distribution 'gauss'"),
    (["random", "x", "gauss", "{}"], "choice, const, intloguniform, intuniform, lognormal"),
    (["random", "x", "normal"], "HP DIST PARAMS triples"),
    (["random", "x", "normal", "{}", "y"], "got 4 word(s)"),
    (["random", "x", "const", "1", "x", "const", "2"], "'x' is given twice"),
    (["random", "x", "normal", '{"mean": 0, "std": -1}'], "std must be > 0"),
    (["random", "x", "choice", '{"values": []}'], "must not be empty"),
    (["pbt", "max", "acc", "x", "uniform", '{"low": 0, "high": 1}'], "--population-size"),
    (
        ["pbt", "max", "acc", "--explore", "x", "jiggle", "{}"],
        "choose from: perturb, resample, shift",
    ),
    (["pbt", "max", "acc", "--explore", "x", "shift", "[1]"], "invalid explore strategy for 'x'"),
    (["pbt", "max", "acc", "--truncate", "0.9"], "--truncate"),
]


@pytest.mark.parametrize(("words", "message"), BAD_ADDS)
def test_add_rejects_bad_input_in_one_line(cli: Cli, words: list[str], message: str) -> None:
    assert_error(cli("add", "Bad", *words), 2, message)
    assert not (cli.tmp_path / "s.db").exists()  # a typo creates no store


def test_add_refuses_a_taken_name(cli: Cli) -> None:
    cli.ok("add", "Taken", "manual")
    assert_error(cli("add", "Taken", "random", "x", "const", "1"), 1, "already exists")


def test_add_with_status(cli: Cli) -> None:
    cli.ok("add", "Paused", "-s", "DONE", "manual")
    assert rows(cli.ok("list")) == [["Paused", "DONE", "manual"]]


PBT_ARGS = [
    *("add", "PBT", "pbt", "max", "acc"),
    *("--explore", "lr", "perturb", '{"minFactor": 0.8, "maxFactor": 1.2}'),
    *("lr", "loguniform", '{"low": 0.0001, "high": 0.1}'),
    # options between the triples, as users write them
    *("--population-size", "3", "--max-generations", "3", "--seed", "1"),
    *("batch", "choice", '{"values": [16, 32, 64]}'),
    *("--explore", "batch", "shift", '{"values": [16, 32, 64]}'),
]


def test_add_pbt_then_show_its_population(cli: Cli, db: schedy.SchedyDB) -> None:
    out = cli.ok(*PBT_ARGS)
    assert "explore.batch: shift" in out and "population_size: 3" in out
    experiment = db.get_experiment("PBT")
    assert isinstance(experiment, schedy.PopulationBasedTraining)
    assert experiment.objective == schedy.pbt.MAXIMIZE
    assert set(experiment.explore) == set(experiment.initial_distributions) == {"lr", "batch"}
    assert "no member yet" in cli.ok("show", "PBT")
    for _ in range(7):
        with experiment.next_job(timeout=0) as job:
            job.results["acc"] = job.hyperparameters["lr"] * 10 + (job.generation or 0)
            job.results["model_path"] = f"ckpt/{job.id}"
    shown = cli.ok("show", "PBT")
    assert "Population (3 of 3 members):" in shown
    population = shown.split("Population")[1].split("Best")[0]
    header = ["member", "generation", "acc", "status", "crashes", "head"]
    assert cells(population.splitlines()[2]) == header
    assert "ready" in population
    best_line = next(line for line in shown.splitlines() if line.startswith("Best: job "))
    best = experiment.get_job(best_line.split()[2])
    schedule = shown.split("Its hyperparameter schedule:")[1]
    steps = [cells(line)[1] for line in schedule.strip().splitlines()[3:-1]]
    assert steps == [job.id for job in best.lineage()]
    table = cli.ok("list", "-t", "PBT")
    assert "generation" in table and "exploited_from" in table
    assert len(rows(cli.ok("list", "PBT"))[0]) == 2  # the plain list stays id + status


def _train_pbt(experiment: schedy.Experiment, cycles: int | None = None) -> None:
    """Run ``cycles`` PBT cycles (None: until the experiment has no job left)."""
    done = 0
    while cycles is None or done < cycles:
        try:
            job = experiment.next_job(timeout=0)
        except schedy.errors.NoJobError:
            return
        with job:
            job.results["acc"] = job.hyperparameters["lr"] * 10 + (job.generation or 0)
        done += 1


def test_show_a_pbt_job_with_its_schedule(cli: Cli, db: schedy.SchedyDB) -> None:
    cli.ok(*PBT_ARGS)
    experiment = db.get_experiment("PBT")
    _train_pbt(experiment)
    last = max(experiment.all_jobs(), key=lambda job: job.generation or 0)
    assert last.generation == 2
    shown = cli.ok("show", "PBT", last.id)
    assert shown.startswith(f"id: {last.id}\nstatus: DONE\n")
    schedule = shown.split("Its hyperparameter schedule (how this job's model was trained):")[1]
    steps = [cells(line)[1] for line in schedule.strip().splitlines()[3:-1]]
    assert steps == [job.id for job in last.lineage()] and len(steps) == 3


def test_watch_redraws_until_the_experiment_is_done(
    cli: Cli, db: schedy.SchedyDB, monkeypatch: pytest.MonkeyPatch
) -> None:
    cli.ok(*PBT_ARGS)
    experiment = db.get_experiment("PBT")
    _train_pbt(experiment, cycles=2)
    waits: list[float] = []

    def workers_finish_meanwhile(seconds: float) -> None:
        waits.append(seconds)
        _train_pbt(experiment)

    monkeypatch.setattr("schedy.cli._show.time.sleep", workers_finish_meanwhile)
    shown = cli.ok("show", "PBT", "--watch", "0.5")
    assert waits == [0.5]
    first, second = shown.split("(every 0.5 s until DONE; Ctrl-C stops watching)")[1:]
    assert "PBT: RUNNING" in shown.splitlines()[0] and "Population (2 of 3 members)" in first
    assert "status: DONE" in second and "Population (3 of 3 members)" in second
    assert "Best: job" in second


def test_watch_ends_quietly_on_ctrl_c(cli: Cli, monkeypatch: pytest.MonkeyPatch) -> None:
    cli.ok(*PBT_ARGS)

    def interrupted(seconds: float) -> None:
        assert seconds == 5.0  # --watch alone: every 5 s
        raise KeyboardInterrupt

    monkeypatch.setattr("schedy.cli._show.time.sleep", interrupted)
    outcome = cli("show", "PBT", "-w")
    assert outcome.code == 0 and outcome.err == ""
    assert outcome.out.count("Ctrl-C stops watching") == 1 and "no member yet" in outcome.out


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["-w", "0"], "--watch takes a number of seconds > 0, not 0"),
        (["--watch", "nan"], "--watch takes a number of seconds > 0"),
        (["JOB", "--watch"], "leave out the job id"),
    ],
)
def test_watch_rejects_bad_input(cli: Cli, words: list[str], message: str) -> None:
    cli.ok(*PBT_ARGS)
    assert_error(cli("show", "PBT", *words), 2, message)


# -- push: bad input -------------------------------------------------------------

BAD_PUSHES = [
    (["-p", "lr", "adam"], "invalid JSON for hyperparameter 'lr'"),
    (["-p", "lr", "adam"], """quote it: '"adam"'"""),
    (["-p", "x", "[1, 2"], "invalid JSON"),
    (["-p", "x", "1", "-r", "loss", "{"], "invalid JSON for result 'loss'"),
    (["-p", "x"], "name/value pairs"),
    (["-p", "x", "1", "x", "2"], "'x' is given twice"),
]


@pytest.mark.parametrize(("words", "message"), BAD_PUSHES)
def test_push_rejects_bad_input_in_one_line(
    cli: Cli, minimize: list[str], words: list[str], message: str
) -> None:
    assert_error(cli("push", "MinimizeSimple", *words), 2, message)
    assert len(rows(cli.ok("list", "MinimizeSimple"))) == len(minimize)


def test_push_to_an_unknown_experiment(cli: Cli) -> None:
    cli.ok("add", "Other", "manual")
    assert_error(cli("push", "Nope", "-p", "x", "1"), 1, "no experiment named 'Nope'")


def test_push_json_values(cli: Cli, db: schedy.SchedyDB) -> None:
    cli.ok("add", "E", "manual")
    pushed = job_id(
        cli.ok(
            "push", "E", "-p", "sizes", "[512, 256]", "act", '"relu"', "-r", "loss", "[0.9, 0.8]"
        )
    )
    job = db.get_experiment("E").get_job(pushed)
    assert job.hyperparameters == {"sizes": [512, 256], "act": "relu"}
    assert job.results == {"loss": [0.9, 0.8]}
    assert job.status == schedy.Job.QUEUED


# -- the process: python -m schedy, exit statuses, no tracebacks ------------------


def test_python_m_schedy_version(cli: Cli) -> None:
    outcome = cli.process("--version")
    assert outcome.code == 0 and outcome.out.strip() == f"schedy {schedy.__version__}"


@pytest.mark.parametrize(
    ("words", "code"),
    [
        (["push", "Nope", "-p", "x", "1"], 1),
        (["push", "Nope", "-p", "x", "{oops"], 2),
        (["add", "X", "random", "x", "normal", "{oops"], 2),
    ],
)
def test_errors_end_the_process_with_one_line(cli: Cli, words: list[str], code: int) -> None:
    assert_error(cli.process(*words), code)


def test_usage_errors_exit_2(cli: Cli) -> None:
    outcome = cli("list", "-t", "-p")
    assert outcome.code == 2 and "not allowed with argument" in outcome.err
    assert cli("--version").code == 0
    assert cli("add", "X", "pbt", "best", "acc").code == 2


@pytest.mark.parametrize(
    "words",
    [
        ["list"],
        ["list", "E"],
        ["show", "E"],
        ["push", "E", "-p", "x", "1"],
        ["rm", "E", "-f"],
        ["run", "E", "true"],
        ["worker", "E", "--", "true"],
    ],
)
def test_only_add_creates_a_sqlite_store(cli: Cli, words: list[str]) -> None:
    # A mistyped --db (or the wrong folder) must not leave an empty database behind.
    assert_error(cli(*words), 1, f"no schedy store at {cli.tmp_path}/s.db", "schedy add")
    assert not (cli.tmp_path / "s.db").exists()
    assert_error(cli("--db", "elsewhere.db", *words), 1, "no schedy store at elsewhere.db")
    assert not (cli.tmp_path / "elsewhere.db").exists()
    cli.ok("add", "E", "manual")
    assert (cli.tmp_path / "s.db").exists()


def test_a_bad_store_url_is_one_line(cli: Cli) -> None:
    # --db is also accepted after the command, and wins there.
    assert_error(cli("list", "--db", "ftp://nowhere"), 1, "unsupported store URL 'ftp://nowhere'")


# -- run ----------------------------------------------------------------------------

TRAIN_PY = """\
import json, os, sys, time
job = os.environ["SCHEDY_JOB_ID"]
hyperparameters = json.loads(os.environ["SCHEDY_JOB_HYPERPARAMETERS"])
mode = hyperparameters.get("mode", "ok")
seen = {key: value for key, value in os.environ.items() if key.startswith("SCHEDY_")}
with open(f"seen-{job}.json", "w") as file:
    json.dump({"argv": sys.argv[1:], "env": seen}, file)
print("training", job, flush=True)
if mode == "sleep":
    open("started", "w").close()
    try:
        for _ in range(300):  # short steps: a signal landing just before one long
            time.sleep(0.1)  # sleep() call would wait for its end
    except KeyboardInterrupt:
        print("child interrupted", flush=True)
        sys.exit(130)
results = {"loss": 0.5}
if "lr" in hyperparameters:
    results = {"acc": hyperparameters["lr"], "model_path": "ckpt/" + job}
print({
    "ok": "--- RESULTS ---\\n" + json.dumps(results) + "\\n--- END RESULTS ---\\nbye",
    "noend": "--- RESULTS ---\\n" + json.dumps(results),
    "fail": "--- RESULTS ---\\n" + json.dumps(results),
    "silent": "nothing to report",
    "badjson": "--- RESULTS ---\\n{oops\\n--- END RESULTS ---",
    "list": "--- RESULTS ---\\n[1, 2]\\n--- END RESULTS ---",
}[mode])
sys.exit(3 if mode == "fail" else 0)
"""


@pytest.fixture
def train(cli: Cli) -> list[str]:
    """The training command: a script that records what it got and prints a results block."""
    (cli.tmp_path / "train.py").write_text(TRAIN_PY)
    return [sys.executable, "train.py"]


def seen(cli: Cli, job: str) -> dict[str, object]:
    loaded: dict[str, object] = json.loads((cli.tmp_path / f"seen-{job}.json").read_text())
    return loaded


def statuses(db: schedy.SchedyDB, name: str) -> list[str]:
    return [job.status for job in db.get_experiment(name).all_jobs()]


def test_run_expands_the_command_and_stores_results(
    cli: Cli, db: schedy.SchedyDB, train: list[str]
) -> None:
    cli.ok("add", "W", "manual")
    pushed = job_id(
        cli.ok(
            "push",
            "W",
            "-p",
            "learning_rate",
            "0.1",
            "layers",
            "[1, 2]",
            "flag",
            "true",
            "name",
            '"x y"',
            "skip",
            "null",
            "-r",
            "model_path",
            '"ckpt/parent.pt"',
        )
    )
    outcome = cli("run", "--once", "W", *train, "%e", "%j", "100%%", "--out=%j.pt", "%h")
    assert outcome.code == 0, outcome.err
    assert f"training {pushed}" in outcome.out and "bye" in outcome.out  # stdout streams through
    got = seen(cli, pushed)
    assert got["argv"] == [
        "W",
        pushed,
        "100%",
        f"--out={pushed}.pt",
        "--learning-rate",
        "0.1",
        "--layers",
        "[1, 2]",
        "--flag",
        "true",
        "--name",
        "x y",
    ]
    env = got["env"]
    assert isinstance(env, dict)
    assert env["SCHEDY_URL"] == cli.url
    assert env["SCHEDY_EXPERIMENT"] == "W" and env["SCHEDY_JOB_ID"] == pushed
    assert json.loads(env["SCHEDY_JOB_RESULTS"]) == {"model_path": "ckpt/parent.pt"}
    job = db.get_experiment("W").get_job(pushed)
    assert job.status == schedy.Job.DONE
    # The command's results update the job's: the parent's model_path is kept.
    assert job.results == {"model_path": "ckpt/parent.pt", "loss": 0.5}


@pytest.mark.parametrize(
    ("mode", "options", "status", "code"),
    [
        ("ok", [], "DONE", 0),
        ("noend", [], "DONE", 0),
        ("fail", [], "CRASHED", 1),
        ("silent", [], "CRASHED", 1),
        ("silent", ["--allow-empty-results"], "DONE", 0),
        ("badjson", [], "CRASHED", 1),
        ("badjson", ["--allow-empty-results"], "CRASHED", 1),
        ("list", [], "CRASHED", 1),
    ],
)
def test_run_outcomes(
    cli: Cli,
    db: schedy.SchedyDB,
    train: list[str],
    mode: str,
    options: list[str],
    status: str,
    code: int,
) -> None:
    cli.ok("add", "W", "manual")
    pushed = job_id(cli.ok("push", "W", "-p", "mode", json.dumps(mode)))
    outcome = cli("run", *options, "W", *train)
    assert outcome.code == code, outcome.err
    job = db.get_experiment("W").get_job(pushed)
    assert job.status == status
    if status == "CRASHED":
        assert f"job {pushed} CRASHED" in outcome.err
        assert job.error and "CommandFailedError" in job.error
        assert "loss" not in job.results
    elif mode != "silent":
        assert job.results == {"loss": 0.5}


def test_run_stops_at_the_first_failure_unless_told(
    cli: Cli, db: schedy.SchedyDB, train: list[str]
) -> None:
    cli.ok("add", "W", "manual")
    for mode in ("fail", "ok", "ok"):
        cli.ok("push", "W", "-p", "mode", json.dumps(mode))
    outcome = cli("run", "W", *train)
    assert outcome.code == 1 and "exited with status 3" in outcome.err
    assert statuses(db, "W") == ["CRASHED", "QUEUED", "QUEUED"]
    cli.ok("push", "W", "-p", "mode", '"fail"')
    outcome = cli("run", "--ignore-errors", "W", *train)
    assert outcome.code == 0 and "No job left" in outcome.err
    assert statuses(db, "W") == ["CRASHED", "DONE", "DONE", "CRASHED"]


def test_run_once(cli: Cli, db: schedy.SchedyDB, train: list[str]) -> None:
    cli.ok("add", "W", "manual")
    cli.ok("push", "W", "-p", "mode", '"ok"')
    cli.ok("push", "W", "-p", "mode", '"ok"')
    cli.ok("run", "--once", "W", *train)
    assert statuses(db, "W") == ["DONE", "QUEUED"]


# Options of run and worker may follow the experiment's name, as in the original
# client: the command starts at the first word after NAME that is not one of
# their options (an option's value is consumed with it), or right after `--`.
# "TRAIN" stands for the training command: python train.py.
OPTIONS_AROUND_THE_NAME = [
    (["W", "--once", "TRAIN"], [], ["DONE", "QUEUED"]),
    (["W", "--timeout", "5", "--once", "--", "TRAIN", "--once"], ["--once"], ["DONE", "QUEUED"]),
    (["--once", "W", "TRAIN", "--epochs", "3"], ["--epochs", "3"], ["DONE", "QUEUED"]),
    (["W", "TRAIN", "--once"], ["--once"], ["DONE", "DONE"]),  # the command's own --once
    (["W", "--timeout=5", "--ignore-errors", "--once", "TRAIN"], [], ["DONE", "QUEUED"]),
    (["--timeout", "5", "W", "--onc", "TRAIN", "-h"], ["-h"], ["DONE", "QUEUED"]),  # abbreviated
    (["W", "TRAIN"], [], ["DONE", "DONE"]),
    (["--once", "--", "W", "TRAIN", "--once"], ["--once"], ["DONE", "QUEUED"]),  # NAME after --
]


@pytest.mark.parametrize(("words", "argv", "expected"), OPTIONS_AROUND_THE_NAME)
def test_run_options_may_follow_the_name(
    cli: Cli,
    db: schedy.SchedyDB,
    train: list[str],
    words: list[str],
    argv: list[str],
    expected: list[str],
) -> None:
    cli.ok("add", "W", "manual")
    pushed = [job_id(cli.ok("push", "W", "-p", "mode", '"ok"')) for _ in range(2)]
    command = [part for word in words for part in (train if word == "TRAIN" else [word])]
    outcome = cli("run", *command)
    assert outcome.code == 0, outcome.err
    assert statuses(db, "W") == expected
    for job, status in zip(pushed, expected):
        if status == "DONE":
            assert seen(cli, job)["argv"] == argv


def test_run_db_option_after_the_name(cli: Cli, train: list[str]) -> None:
    other = f"sqlite:///{cli.tmp_path}/other.db"
    with schedy.SchedyDB(other) as handle:
        handle.add_experiment(schedy.ManualSearch("W"))
        handle.get_experiment("W").add_job({"mode": "ok"})
        cli.ok("run", "W", "--db", other, "--once", *train)
        assert [job.status for job in handle.get_experiment("W").all_jobs()] == ["DONE"]
    assert not (cli.tmp_path / "s.db").exists()  # the global --db was not used


@pytest.mark.parametrize(
    ("words", "message"),
    [
        (["W", "--bogus", "TRAIN"], "unknown option '--bogus'"),
        (["W", "--once"], "give the training command"),
        (["W", "--once", "--"], "give the training command"),
    ],
)
def test_run_rejects_bad_options_after_the_name_before_claiming(
    cli: Cli, db: schedy.SchedyDB, train: list[str], words: list[str], message: str
) -> None:
    cli.ok("add", "W", "manual")
    cli.ok("push", "W", "-p", "mode", '"ok"')
    command = [part for word in words for part in (train if word == "TRAIN" else [word])]
    assert_error(cli("run", *command), 2, message)
    assert statuses(db, "W") == ["QUEUED"]


def test_run_option_values_after_the_name_are_checked(
    cli: Cli, db: schedy.SchedyDB, train: list[str]
) -> None:
    cli.ok("add", "W", "manual")
    cli.ok("push", "W", "-p", "mode", '"ok"')
    outcome = cli("run", "W", "--timeout", "soon", *train)
    assert outcome.code == 2 and "argument --timeout: invalid float value: 'soon'" in outcome.err
    assert statuses(db, "W") == ["QUEUED"]


WORKER_PY = """\
import json, os, sys
with open(f"worker-{os.environ['SCHEDY_WORKER_INDEX']}.json", "w") as file:
    json.dump(sys.argv[1:], file)
"""


@pytest.mark.parametrize(
    ("words", "workers", "argv"),
    [
        (["W", "--workers", "3", "WORKER", "--workers", "9"], 3, ["--workers", "9"]),
        (["W", "--", "WORKER"], 2, []),
        (["W", "WORKER", "--gpus", "none"], 2, ["--gpus", "none"]),
        (["--workers", "1", "W", "--gpus=none", "WORKER"], 1, []),
        (["W", "--grace", "5", "--workers", "1", "--", "WORKER", "--", "x"], 1, ["--", "x"]),
    ],
)
def test_worker_options_may_follow_the_name(
    cli: Cli, words: list[str], workers: int, argv: list[str]
) -> None:
    (cli.tmp_path / "worker.py").write_text(WORKER_PY)
    cli.ok("add", "W", "manual")
    worker = [sys.executable, "worker.py"]
    command = [part for word in words for part in (worker if word == "WORKER" else [word])]
    outcome = cli("worker", *command)
    assert outcome.code == 0, outcome.err
    started = sorted(path.name for path in cli.tmp_path.glob("worker-*.json"))
    assert started == [f"worker-{index}.json" for index in range(workers)]
    for name in started:
        assert json.loads((cli.tmp_path / name).read_text()) == argv


def test_worker_rejects_an_unknown_option_after_the_name(cli: Cli) -> None:
    cli.ok("add", "W", "manual")
    assert_error(cli("worker", "W", "--wrkers", "2", "python", "w.py"), 2, "'--wrkers'")


@pytest.mark.parametrize(
    ("template", "message"),
    [
        ("%x", "unknown format %x"),
        ("--%h", "%h expands to several arguments"),
        ("50%", "a lone % at the end"),
    ],
)
def test_run_rejects_bad_formats_before_claiming(
    cli: Cli, db: schedy.SchedyDB, train: list[str], template: str, message: str
) -> None:
    cli.ok("add", "W", "manual")
    cli.ok("push", "W", "-p", "mode", '"ok"')
    assert_error(cli("run", "W", *train, template), 2, message)
    assert statuses(db, "W") == ["QUEUED"]


def test_run_a_missing_program_crashes_the_job(cli: Cli, db: schedy.SchedyDB) -> None:
    cli.ok("add", "W", "manual")
    cli.ok("push", "W", "-p", "x", "1")
    outcome = cli("run", "W", "./no-such-program")
    assert outcome.code == 1 and "cannot run './no-such-program'" in outcome.err
    assert statuses(db, "W") == ["CRASHED"]


def test_run_pbt_until_done_passes_the_parents_checkpoint(
    cli: Cli, db: schedy.SchedyDB, train: list[str]
) -> None:
    cli.ok(
        "add",
        "P",
        "pbt",
        "max",
        "acc",
        "lr",
        "loguniform",
        '{"low": 0.001, "high": 0.1}',
        "--population-size",
        "2",
        "--max-generations",
        "2",
        "--explore",
        "lr",
        "perturb",
        '{"minFactor": 0.8, "maxFactor": 1.2}',
    )
    outcome = cli("run", "--timeout", "5", "P", *train, "%h")
    assert outcome.code == 0, outcome.err
    jobs = list(db.get_experiment("P").all_jobs())
    # 4 jobs, or 3 when member 1 scored below member 0 at generation 0: member
    # 0 has then finished, so member 1 cannot copy it and is retired (stragglers).
    assert [job.status for job in jobs] in (["DONE"] * 4, ["DONE"] * 3)
    assert any(job.generation == 1 for job in jobs)
    for job in jobs:
        got = seen(cli, job.id)
        env = got["env"]
        assert isinstance(env, dict)
        parent_results = json.loads(env["SCHEDY_JOB_RESULTS"])
        if job.generation == 0:
            assert parent_results == {}
        else:
            assert parent_results["model_path"] == f"ckpt/{job.parent_id}"
        assert job.results["model_path"] == f"ckpt/{job.id}"


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_ctrl_c_reaches_the_command_and_crashes_the_job(
    cli: Cli, db: schedy.SchedyDB, train: list[str]
) -> None:
    cli.ok("add", "W", "manual")
    pushed = job_id(cli.ok("push", "W", "-p", "mode", '"sleep"'))
    env = {key: value for key, value in os.environ.items() if key != "SCHEDY_URL"}
    process = subprocess.Popen(
        [sys.executable, "-m", "schedy", "--db", cli.url, "run", "W", *train],
        cwd=cli.tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 30
        while not (cli.tmp_path / "started").exists():
            assert time.monotonic() < deadline and process.poll() is None, (
                "the command never started"
            )
            time.sleep(0.02)
        process.send_signal(signal.SIGINT)
        out, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 130, err
    assert "child interrupted" in out and "Traceback" not in err
    job = db.get_experiment("W").get_job(pushed)
    assert job.status == schedy.Job.CRASHED
    assert job.error and "KeyboardInterrupt" in job.error


# -- seeing what PBT found: list's formats and filters, show's best --------------------
# (lineage, replay, top and the progress lines: tests/test_views.py; report: test_report.py)


def test_list_formats_csv_and_json(cli: Cli, minimize: list[str]) -> None:
    import csv

    table = list(csv.reader(io.StringIO(cli.ok("list", "MinimizeSimple", "--format", "csv"))))
    assert table[0] == ["id", "status", "x", "y", "result"]
    assert table[1] == [minimize[0], "DONE", "1", "2", "5"]
    assert table[4] == [minimize[3], "QUEUED", "7", "7", ""]
    listed = json.loads(cli.ok("list", "MinimizeSimple", "--format", "json", "-s", "result"))
    assert [row["id"] for row in listed] == [minimize[i] for i in (2, 0, 1, 3)]
    assert listed[0] == {"id": minimize[2], "status": "DONE", "x": 0, "y": 1, "result": 1}
    assert listed[3]["result"] is None
    assert cli.ok("list", "MinimizeSimple", "--format", "table") == cli.ok(
        "list", "-t", "MinimizeSimple"
    )
    assert json.loads(cli.ok("list", "--format", "json"))[0]["name"] == "MinimizeSimple"
    assert cli("list", "-t", "--format", "csv").code == 2  # one view at a time


def test_list_limit_and_status(cli: Cli, minimize: list[str]) -> None:
    assert rows(cli.ok("list", "MinimizeSimple", "--limit", "2")) == [
        [minimize[0], "DONE"],
        [minimize[1], "DONE"],
    ]
    ids = rows(cli.ok("list", "MinimizeSimple", "-s", "result", "-d", "-n", "1", "-f", "id"))
    assert ids == [[minimize[1]]]  # the limit applies after sorting
    assert rows(cli.ok("list", "MinimizeSimple", "--status", "queued")) == [[minimize[3], "QUEUED"]]
    both = rows(cli.ok("list", "MinimizeSimple", "--status", "DONE,QUEUED", "-n", "10"))
    assert len(both) == 4
    cli.ok("add", "Finished", "-s", "DONE", "manual")
    assert rows(cli.ok("list", "--status", "DONE")) == [["Finished", "DONE", "manual"]]
    assert_error(cli("list", "MinimizeSimple", "--status", "GONE"), 2, "unknown job status 'GONE'")
    assert_error(cli("list", "--status", "QUEUED"), 2, "unknown experiment status 'QUEUED'")
    assert_error(cli("list", "MinimizeSimple", "-n", "-1"), 2, "--limit takes a number of rows")


def test_sorting_the_plain_list_shows_the_column(cli: Cli, minimize: list[str]) -> None:
    assert rows(cli.ok("list", "MinimizeSimple", "-s", "result")) == [
        [minimize[2], "DONE", "1"],
        [minimize[0], "DONE", "5"],
        [minimize[1], "DONE", "9"],
        [minimize[3], "QUEUED"],
    ]


def test_tables_leave_out_the_per_epoch_history(cli: Cli, db: schedy.SchedyDB) -> None:
    cli.ok(*PBT_ARGS)
    experiment = db.get_experiment("PBT")
    for _ in range(7):
        with experiment.next_job(timeout=0) as job:
            job.results["acc"] = job.hyperparameters["lr"]
            job.results["history"] = {"acc": [0.5] * 120, "loss": [1.0] * 120}
    table = cli.ok("list", "-t", "PBT")
    assert "history" not in table and "acc" in table
    assert max(len(line) for line in table.splitlines()) < 200
    assert "history" not in cli.ok("list", "-p", "PBT")
    assert "history" not in cli.ok("list", "PBT", "--format", "csv")
    assert len(json.loads(cli.ok("list", "PBT", "--format", "json"))[0]["history"]["acc"]) == 120
    asked = cli.ok("list", "PBT", "-t", "-f", "id", "-f", "history")
    assert "| history" in asked and "[0.5, 0.5" in asked and "…" in asked  # long cells are cut
    shown = cli.ok("show", "PBT", job.id)
    assert "history: acc, loss: 120 epochs (the per-epoch history)" in shown.splitlines()


def test_show_best_is_the_best_job_ever_not_the_best_head(cli: Cli, db: schedy.SchedyDB) -> None:
    cli.ok(*PBT_ARGS)
    experiment = db.get_experiment("PBT")
    scores = iter([0.2, 0.3, 0.1, 0.9, 0.25, 0.2, 0.15])  # 0.9 is beaten by no later job
    jobs = []
    for _ in range(7):
        with experiment.next_job(timeout=0) as job:
            job.results["acc"] = next(scores)
        jobs.append(job)
    best = experiment.best()
    assert best is not None and best.id == jobs[3].id
    heads = {member.head_id for member in experiment.population()}
    assert best.id not in heads  # its member trained on and scored worse since
    shown = cli.ok("show", "PBT")
    assert (
        f"Best: job {best.id} (member {best.member}, generation {best.generation}, acc = 0.9)"
        in shown
    )


def test_show_says_why_a_member_ended(cli: Cli, db: schedy.SchedyDB) -> None:
    # Member 1 is in the bottom at generation 0 once member 0 finished its
    # schedule: PBT retires it as a straggler, and show says so in full.
    experiment = schedy.PopulationBasedTraining(
        "S",
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
    scores = iter([0.9, 0.1, 0.95])
    with pytest.raises(schedy.errors.NoJobError):
        while True:
            with experiment.next_job(timeout=0) as job:
                job.results["acc"] = next(scores)
    shown = cli.ok("show", "S")
    population = shown.split("Population")[1].split("Best")[0]
    rows = [cells(line) for line in population.splitlines() if line.startswith("| ")]
    assert rows[0][3] == "status"
    statuses = {row[0]: row[3] for row in rows[1:]}
    assert statuses["0"] == "ended"  # its schedule's normal end: nothing to explain
    assert statuses["1"].startswith("ended: straggler: in the bottom")
    assert (
        "member 1 ended: straggler: in the bottom at generation 0 while every better member "
        "has finished its schedule, so there is nothing to copy"
    ) in shown.splitlines()
