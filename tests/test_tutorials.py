"""The seed example (DESIGN.md §1) and the Schedy client tutorials, run verbatim.

Each snippet below is copied character for character from its source; the
test only supplies what the snippet leaves to the user (``create_model``,
``partial_train``, ``evaluate``) and runs it in a fresh folder, so
``schedy.SchedyDB()`` opens the embedded default ``./schedy.db``.
"""

from __future__ import annotations

import os
import textwrap
import time
from pathlib import Path
from typing import Any

import pytest

import schedy

SEED_CREATE = """
import schedy
db = schedy.SchedyDB()
experiment = schedy.PopulationBasedTraining(
    'MNIST with PBT', schedy.pbt.MAXIMIZE, 'max_accuracy',
    exploit=schedy.pbt.Truncate(),
    explore={'learning_rate': schedy.pbt.Perturb(),
             'dropout_rate': schedy.pbt.Perturb()},
    initial_distributions={
        'num_layers': schedy.random.Choice(range(1, 10)),
        'activations': schedy.random.Choice(['relu', 'tanh']),
        'learning_rate': schedy.random.LogUniform(1e-6, 1e-1),
        'dropout_rate': schedy.random.Uniform(0.0, 0.8)},
    population_size=20)
db.add_experiment(experiment)
"""

SEED_WORKER = """
experiment = db.get_experiment('MNIST with PBT')
with experiment.next_job() as job:
    model = create_model(job)
    if 'model_path' in job.results:
        model.load(job.results['model_path'])
    partial_train(model)
    job.results = evaluate(model)
    model_save_path = 'dump_dir/' + job.id + '.mdl'
    model.save(model_save_path)
    job.results['model_path'] = model_save_path
"""

GUIDE_CREATE = """
import schedy
db = schedy.SchedyDB()
experiment = schedy.PopulationBasedTraining(
    'MNIST with PBT',
    schedy.pbt.MAXIMIZE,
    'max_accuracy',
    exploit=schedy.pbt.Truncate(),
    explore={
        'learning_rate': schedy.pbt.Perturb(),
        'dropout_rate': schedy.pbt.Perturb(),
    },
    initial_distributions={
        'num_layers': schedy.random.Choice(range(1, 10)),
        'activations': schedy.random.Choice(['relu', 'tanh']),
        'kernel_size': schedy.random.Choice([3, 5, 7]),
        'num_filters': schedy.random.Choice([2, 4, 8, 16, 32, 64, 128, 256, 512]),
        'learning_rate': schedy.random.LogUniform(1e-6, 1e-1),
        'dropout_rate': schedy.random.Uniform(0.0, 0.8),
    },
    population_size=20,
)
db.add_experiment(experiment)
"""

GUIDE_WORKER = """
import schedy

db = schedy.SchedyDB()
experiment = db.get_experiment('MyExperiment')
with experiment.next_job() as job:
    model = create_model(job)
    if 'model_path' in job.results:
        model.load(job.results['model_path'])
    partial_train(model) # Partial training for a limited amount of time
    job.results = evaluate(model)
    model_save_path = 'dump_dir/' + job.id + '.mdl'
    model.save(model_save_path) 
    job.results['model_path'] = model_save_path
"""


class FakeModel:
    """A 'model' whose weights are one number; checkpoints are text files."""

    def __init__(self, job: schedy.Job) -> None:
        self.learning_rate = job.hyperparameters["learning_rate"]
        self.weight = 0.0
        self.loaded_from: str | None = None

    def load(self, path: str) -> None:
        self.weight = float(Path(path).read_text())
        self.loaded_from = path

    def save(self, path: str) -> None:
        Path(path).write_text(repr(self.weight))


def _user_functions(log: list[FakeModel]) -> dict[str, Any]:
    def create_model(job: schedy.Job) -> FakeModel:
        model = FakeModel(job)
        log.append(model)
        return model

    def partial_train(model: FakeModel) -> None:
        model.weight += model.learning_rate

    def evaluate(model: FakeModel) -> dict[str, float]:
        return {"max_accuracy": model.weight}

    return {"create_model": create_model, "partial_train": partial_train, "evaluate": evaluate}


@pytest.fixture
def in_tmp(tmp_path: Path) -> Path:
    cwd = os.getcwd()
    os.chdir(tmp_path)
    (tmp_path / "dump_dir").mkdir()
    yield tmp_path
    os.chdir(cwd)


@pytest.mark.parametrize(
    ("create", "worker", "name"),
    [
        (SEED_CREATE, SEED_WORKER, None),
        (GUIDE_CREATE, GUIDE_WORKER, "MyExperiment"),
    ],
)
def test_seed_and_guide_pbt_run_verbatim(
    in_tmp: Path, create: str, worker: str, name: str | None
) -> None:
    namespace: dict[str, Any] = {}
    exec(textwrap.dedent(create), namespace)
    assert (in_tmp / "schedy.db").exists()  # the embedded default
    if name is not None:  # the guide's worker names its experiment 'MyExperiment'
        namespace["db"].add_experiment(
            schedy.PopulationBasedTraining(
                name,
                schedy.pbt.MAXIMIZE,
                "max_accuracy",
                exploit=schedy.pbt.Truncate(),
                explore={"learning_rate": schedy.pbt.Perturb()},
                initial_distributions={"learning_rate": schedy.random.LogUniform(1e-6, 1e-1)},
                population_size=20,
            )
        )
    models: list[FakeModel] = []
    namespace.update(_user_functions(models))
    for _ in range(60):  # three generations of 20 members, one worker
        exec(textwrap.dedent(worker), namespace)
    experiment = namespace["db"].get_experiment(name or "MNIST with PBT")
    jobs = list(experiment.all_jobs())
    assert len(jobs) == 60 and all(job.status == schedy.Job.DONE for job in jobs)
    # Every continuation reloaded the checkpoint its results point to, which exists.
    resumed = [m for m in models if m.loaded_from is not None]
    assert len(resumed) == 40
    assert all((in_tmp / m.loaded_from).exists() for m in resumed)  # type: ignore[operator]
    assert any(job.exploited_from for job in jobs)  # bottom members copied top ones
    for job in jobs:
        assert job.results["model_path"] == f"dump_dir/{job.id}.mdl"


DATABASE_TUTORIAL = [
    """
import schedy

db = schedy.SchedyDB()
experiment = schedy.ManualSearch('MinimizeSimple')
db.add_experiment(experiment)
""",
    """
import schedy

db = schedy.SchedyDB()
experiment = db.get_experiment('MinimizeSimple')
job = experiment.add_job(
    status=schedy.Job.DONE,
    hyperparameters={
        'x': 1,
        'y': 2,
    },
    results={
        'result': 5
    },
)
""",
    """
import schedy
import random

db = schedy.SchedyDB()
experiment = db.get_experiment('MinimizeSimple')
for i in range(20):
    # Test the problem for random values of x and y, 20 times
    x = random.uniform(-100, 100)
    y = random.uniform(-100, 100)
    result = x ** 2 + y ** 2
    # Tell Schedy about it!
    experiment.add_job(status=schedy.Job.DONE, hyperparameters={'x': x, 'y': y}, results={'result': result})
""",
    """
import schedy

db = schedy.SchedyDB()
experiment = db.get_experiment('MinimizeSimple')
for job in experiment.all_jobs():
    print('Id:', job.job_id)
    print('Status:', job.status)
    print('Hyperparameters:')
    for name, value in job.hyperparameters.items():
        print('- {}: {}'.format(name, value))
    print('Results:')
    for name, value in job.results.items():
        print('- {}: {}'.format(name, value))
    print()
""",
]


def test_database_tutorial_verbatim(in_tmp: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for snippet in DATABASE_TUTORIAL:
        exec(textwrap.dedent(snippet), {})
    out = capsys.readouterr().out
    assert out.count("Status: DONE") == 21
    assert "- result: 5" in out
    experiment = schedy.SchedyDB().get_experiment("MinimizeSimple")
    job_id = next(iter(experiment.all_jobs())).id
    exec(
        f"import schedy\ndb = schedy.SchedyDB()\ndb.get_experiment('MinimizeSimple').get_job('{job_id}').delete()",
        {},
    )
    assert len(list(experiment.all_jobs())) == 20
    exec(
        "import schedy\n\ndb = schedy.SchedyDB()\ndb.get_experiment('MinimizeSimple').delete()\n",
        {},
    )
    assert schedy.SchedyDB().get_experiments() == []


class _StopLoop(BaseException):
    """Ends the tutorial's infinite worker loop when it would sleep a minute."""


SCHEDULER_CREATE = """
import schedy

db = schedy.SchedyDB()
experiment = schedy.ManualSearch('MinimizeManual')
db.add_experiment(experiment)
"""

SCHEDULER_ADD = """
import schedy

db = schedy.SchedyDB()
experiment = db.get_experiment('MinimizeManual')
job = experiment.add_job(hyperparameters={'x': 1, 'y': 2})
"""

SCHEDULER_WORKER = """
import schedy
import time

db = schedy.SchedyDB()
experiment = db.get_experiment('MinimizeManual')
while True:
    try:
        with experiment.next_job() as job:
            x = job.hyperparameters['x']
            y = job.hyperparameters['y']
            result = x ** 2 + y ** 2
            job.results['result'] = result
    except Exception as e:
        print(e)
        time.sleep(60)
"""


def test_scheduler_tutorial_verbatim(
    in_tmp: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def stop(seconds: float) -> None:
        raise _StopLoop

    exec(SCHEDULER_CREATE, {})
    namespace: dict[str, Any] = {}
    exec(SCHEDULER_ADD, namespace)
    monkeypatch.setattr(time, "sleep", stop)
    with pytest.raises(_StopLoop):
        exec(SCHEDULER_WORKER, {})
    assert "No job left for experiment" in capsys.readouterr().out
    job = schedy.SchedyDB().get_experiment("MinimizeManual").get_job(namespace["job"].id)
    assert job.status == schedy.Job.DONE and job.results == {"result": 5}


RANDOM_CREATE = """
import schedy

db = schedy.SchedyDB()
distributions = {
    'x': schedy.random.Normal(0, 5),
    'y': schedy.random.Normal(0, 2),
}
experiment = schedy.RandomSearch('MinimizeRandom', distributions)
db.add_experiment(experiment)
"""

RANDOM_WORKER = """
import schedy
import time

db = schedy.SchedyDB()
experiment = db.get_experiment('MinimizeRandom')
for i in range(20):
    try:
        with experiment.next_job() as job:
            x = job.hyperparameters['x']
            y = job.hyperparameters['y']
            result = x ** 2 + y ** 2
            job.results['result'] = result
    except Exception as e:
        print(e)
        # Wait a minute before issuing the next request
        time.sleep(60)
"""


def test_random_search_tutorial_verbatim(in_tmp: Path) -> None:
    exec(RANDOM_CREATE, {})
    exec(RANDOM_WORKER, {})
    jobs = list(schedy.SchedyDB().get_experiment("MinimizeRandom").all_jobs())
    assert len(jobs) == 20
    for job in jobs:
        x, y = job.hyperparameters["x"], job.hyperparameters["y"]
        assert job.status == schedy.Job.DONE and job.results["result"] == pytest.approx(x**2 + y**2)
