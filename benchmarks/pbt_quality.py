"""Search quality of schedy's Population Based Training, against random search and Ray Tune.

What it measures, each over ``--seeds`` seeds (default 5), every schedy run
through the public API (``SchedyDB``, ``next_job``, ``with job:``) on a SQLite
file in a temporary folder, with ``seed=`` on the experiment:

(a) The PBT paper's toy problem (Jaderberg et al. 2017, §4.1; the math is
    ``examples/toy_pbt.py``'s): θ starts at (0.9, 0.9), Q(θ) = 1.2 - (θ0² + θ1²),
    each member climbs Q̂(θ|h) = 1.2 - (h0·θ0² + h1·θ1²) by gradient ascent
    (lr 0.01). Population 4, 200 steps, one job = 4 steps (the "ready" period),
    so ``max_generations=50``; initial h uniform in [0, 1]²; exploit
    ``Truncate(0.25)``, explore ``Perturb(0.8, 1.2, low=0.0, high=1.0,
    resample_probability=0.25, distribution=Uniform(0.0, 1.0))`` on h0 and h1.
    Reported: the best Q reached (mean/min/max over seeds) by
    - schedy PBT;
    - random search: ``schedy.RandomSearch`` (same seed, same Uniform(0, 1)
      draws) hands out 4 configurations, each trained 200 steps in one job,
      with no exploit/explore;
    - Ray Tune's PBT on the same settings (``benchmarks/_ray_pbt.py``; skipped
      with a message when ``ray`` is not importable, or with ``--no-ray``).
(b) The paper's Fig. 2 setting: population 2, members h = (1, 0) and (0, 1)
    added by hand (``add_job``; PBT without initial_distributions), same steps.
    Any fixed h stays at Q = 0.39: shown by a ``schedy.ManualSearch`` baseline
    training both fixed configurations 200 steps. Then the per-seed best Q of
    schedy PBT and of Ray Tune's default asynchronous PBT (same two starting
    configs), and how many seeds escape above 0.39 + 0.05.
(c) An MLP on scikit-learn's digits (``load_digits``, offline; split 60/20/20
    into train/validation/test), ``MLPClassifier(solver='sgd', momentum=0.9)``
    trained with ``partial_fit``, exploring ``learning_rate_init``
    (LogUniform(1e-4, 1)) and ``alpha`` (LogUniform(1e-5, 1)): PBT (population
    8, one job = 2 epochs, 15 generations, checkpoint = pickled estimator whose
    path is ``job.results['model_path']``) against random search (8
    ``RandomSearch`` configurations, each 30 epochs, evaluated every 2 epochs),
    i.e. equal total epochs. Reported: best validation accuracy, and the test
    accuracy of the model that reached it.

The comparisons are paired: a seeded ``RandomSearch`` and a seeded PBT draw
their first configurations from the same ``random.Random(f"{seed}:{claim}")``
streams, so random search trains exactly PBT's initial members (in (c) with
the same weight initialisation too) -- the difference is exploit/explore alone.

Worker scheme: one in-process worker mimics ``--workers`` concurrent workers
(default: the population size) by claiming that many jobs with
``next_job(timeout=0)`` before finishing any of them -- as workers of equal
speed would, each decision ranks members by the results finished before the
round -- then runs and finishes them in claim order; when every member is
busy the round ends. ``--workers 1`` runs strictly one job at a time; then
the member being decided has waited longest, so its latest result is a job
older than the others' and it ranks low for that alone (compare
``--workers 1`` with the default on part (a)).

Run it from the repository root::

    .venv/bin/python benchmarks/pbt_quality.py                 # all parts (minutes with Ray)
    .venv/bin/python benchmarks/pbt_quality.py --quick         # smoke run, no Ray (< 30 s)
    .venv/bin/python benchmarks/pbt_quality.py --parts a,b --no-ray --json out.json

Ray Tune is optional (``pip install "ray[tune]"``); its runs depend on process
timing, so they are not exactly reproducible even with the seeds set.
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
from sklearn.datasets import load_digits
from sklearn.exceptions import ConvergenceWarning
from sklearn.model_selection import train_test_split
from sklearn.neural_network import MLPClassifier

import schedy
from schedy.errors import NoJobError

_HERE = Path(__file__).resolve().parent
for _folder in (_HERE, _HERE.parent / "examples"):
    if str(_folder) not in sys.path:
        sys.path.insert(0, str(_folder))

from toy_pbt import (  # noqa: E402  (examples/toy_pbt.py)
    LEARNING_RATE,
    q_true,
    toy_experiment,
    train_steps,
    unit_uniform,
)

START_THETA = (0.9, 0.9)
STEPS_PER_JOB = 4
TOY_STEPS = 200
TOY_POPULATION = 4
FIG2_STARTS: tuple[dict[str, float], ...] = ({"h0": 1.0, "h1": 0.0}, {"h0": 0.0, "h1": 1.0})
FIG2_PLATEAU = 1.2 - START_THETA[0] ** 2  # 0.39: one coordinate never moves
ESCAPE_MARGIN = 0.05
LR_RANGE = (1e-4, 1.0)
ALPHA_RANGE = (1e-5, 1.0)
PARTS = ("a", "b", "c")
RAY_PARTS = {"a", "b"}


# -- settings and results -------------------------------------------------------


@dataclass(frozen=True)
class Budget:
    """The sizes of one benchmark run (full, or ``--quick``)."""

    toy_steps: int = TOY_STEPS
    digits_population: int = 8
    digits_generations: int = 15
    digits_epochs_per_job: int = 2
    digits_hidden: int = 32

    @property
    def toy_generations(self) -> int:
        return self.toy_steps // STEPS_PER_JOB

    @property
    def digits_epochs(self) -> int:
        return self.digits_generations * self.digits_epochs_per_job


QUICK = Budget(toy_steps=100, digits_population=4, digits_generations=5)


@dataclass
class Row:
    """One method's per-seed values of one measure, and notes for the table."""

    part: str
    method: str
    measure: str
    values: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    extra: dict[str, list[Any]] = field(default_factory=dict)

    def add(self, value: float, **extra: Any) -> None:
        self.values.append(float(value))
        for key, item in extra.items():
            self.extra.setdefault(key, []).append(item)


@dataclass
class Context:
    """What every part needs: seeds, budget, worker scheme, scratch folder."""

    seeds: list[int]
    budget: Budget
    workers: int
    folder: Path
    use_ray: bool
    _stores: int = 0

    def store_url(self) -> str:
        """A fresh SQLite file for one experiment."""
        self._stores += 1
        return f"sqlite:///{self.folder / f'schedy-{self._stores}.db'}"


# -- the worker loop --------------------------------------------------------------


def claim_round(experiment: schedy.Experiment, size: int) -> list[schedy.Job]:
    """Claim up to ``size`` jobs without waiting: stops when every member is busy or done."""
    jobs: list[schedy.Job] = []
    while len(jobs) < size:
        try:
            jobs.append(experiment.next_job(timeout=0))
        except NoJobError:
            break
    return jobs


def run_rounds(
    experiment: schedy.Experiment,
    work: Callable[[schedy.Job], None],
    workers: int,
    limit: int | None = None,
) -> int:
    """Run claim rounds until the experiment is finished (or ``limit`` jobs ran)."""
    done = 0
    while limit is None or done < limit:
        size = workers if limit is None else min(workers, limit - done)
        jobs = claim_round(experiment, size)
        if not jobs:
            break
        for job in jobs:
            with job:
                work(job)
        done += len(jobs)
    return done


def exploited_count(experiment: schedy.Experiment) -> int:
    return sum(1 for job in experiment.all_jobs() if job.exploited_from is not None)


# -- (a) and (b): the toy problem ---------------------------------------------------


def toy_job(job: schedy.Job) -> None:
    """One PBT job: resume θ from the parent's results, climb Q̂ for 4 steps, report Q."""
    theta = [float(t) for t in job.results.get("theta", START_THETA)]
    step = int(job.results.get("step", 0))
    h = [float(job.hyperparameters["h0"]), float(job.hyperparameters["h1"])]
    theta = train_steps(theta, h, STEPS_PER_JOB)
    job.results = {"theta": theta, "step": step + STEPS_PER_JOB, "Q": q_true(theta)}


def full_toy_job(steps: int) -> Callable[[schedy.Job], None]:
    """A job that trains one fixed h for the whole budget (random search, fixed h)."""

    def work(job: schedy.Job) -> None:
        h = [float(job.hyperparameters["h0"]), float(job.hyperparameters["h1"])]
        theta = train_steps(list(START_THETA), h, steps)
        job.results = {"theta": theta, "step": steps, "Q": q_true(theta)}

    return work


def best_q(experiment: schedy.Experiment, steps: int) -> float:
    """The best Q of any DONE job, checking that no model trained past ``steps``."""
    jobs = [job for job in experiment.all_jobs() if job.status == schedy.Job.DONE]
    longest = max(int(job.results["step"]) for job in jobs)
    if longest != steps:
        raise AssertionError(f"a model trained {longest} steps, the budget is {steps}")
    return max(float(job.results["Q"]) for job in jobs)


def schedy_toy_pbt(
    ctx: Context, seed: int, population: int, starts: Sequence[Mapping[str, float]] = ()
) -> tuple[float, int]:
    """One schedy PBT run on the toy: (best Q, number of exploit jobs)."""
    steps = ctx.budget.toy_steps
    workers = ctx.workers or population
    with schedy.SchedyDB(ctx.store_url()) as db:
        experiment = toy_experiment(
            "toy", population, ctx.budget.toy_generations, seed, random_start=not starts
        )
        db.add_experiment(experiment)
        for start in starts:
            experiment.add_job(hyperparameters=dict(start))
        run_rounds(experiment, toy_job, workers)
        return best_q(experiment, steps), exploited_count(experiment)


def schedy_toy_random(ctx: Context, seed: int, population: int) -> float:
    """Random search: ``population`` RandomSearch configs, each trained the whole budget."""
    steps = ctx.budget.toy_steps
    with schedy.SchedyDB(ctx.store_url()) as db:
        experiment = schedy.RandomSearch("toy random", unit_uniform(), seed=seed)
        db.add_experiment(experiment)
        run_rounds(experiment, full_toy_job(steps), ctx.workers or population, limit=population)
        return best_q(experiment, steps)


def schedy_fixed_h(ctx: Context) -> list[float]:
    """The no-PBT baseline of Fig. 2: each starting h, fixed, trained the whole budget."""
    steps = ctx.budget.toy_steps
    with schedy.SchedyDB(ctx.store_url()) as db:
        experiment = schedy.ManualSearch("fixed h")
        db.add_experiment(experiment)
        jobs = [experiment.add_job(hyperparameters=dict(start)) for start in FIG2_STARTS]
        run_rounds(experiment, full_toy_job(steps), ctx.workers or len(jobs))
        return [float(experiment.get_job(job.id).results["Q"]) for job in jobs]


def load_ray() -> ModuleType | None:
    """``benchmarks/_ray_pbt.py`` when Ray Tune is importable, else None (with a message)."""
    try:
        import _ray_pbt
    except ImportError as error:
        print(f"Ray Tune skipped: ray is not importable ({error}); pip install 'ray[tune]'")
        return None
    return _ray_pbt


def stop_ray() -> None:
    if "_ray_pbt" in sys.modules:
        sys.modules["_ray_pbt"].stop()


def ray_toy_rows(
    ctx: Context, part: str, population: int, starts: Sequence[Mapping[str, float]] = ()
) -> Row | None:
    """Ray Tune's PBT on the toy, one run per seed (None when Ray is off or missing)."""
    if not ctx.use_ray:
        return None
    ray_pbt = load_ray()
    if ray_pbt is None:
        return None
    row = Row(part, "Ray Tune PBT (async)", "best Q")
    for seed in ctx.seeds:
        storage = tempfile.mkdtemp(prefix="ray-", dir=ctx.folder)
        result = ray_pbt.run_toy_pbt(
            seed, population, ctx.budget.toy_steps, STEPS_PER_JOB, storage, initial=starts
        )
        row.add(result.best_q, perturbations=result.perturbations, seconds=result.seconds)
    row.notes.append(f"perturbations per seed {row.extra['perturbations']}")
    return row


def part_a(ctx: Context) -> list[Row]:
    pbt = Row("a", "schedy PBT", "best Q")
    random_search = Row("a", "random search (schedy RandomSearch)", "best Q")
    for seed in ctx.seeds:
        q, exploited = schedy_toy_pbt(ctx, seed, TOY_POPULATION)
        pbt.add(q, exploited=exploited)
        random_search.add(schedy_toy_random(ctx, seed, TOY_POPULATION))
    pbt.notes.append(f"exploit jobs per seed {pbt.extra['exploited']}")
    random_search.notes.append(f"{TOY_POPULATION} random h, {ctx.budget.toy_steps} steps each")
    ray_row = ray_toy_rows(ctx, "a", TOY_POPULATION)
    return [pbt, random_search] + ([ray_row] if ray_row else [])


def escape_note(values: Sequence[float]) -> str:
    escaped = sum(1 for q in values if q > FIG2_PLATEAU + ESCAPE_MARGIN)
    return f"escaped above {FIG2_PLATEAU + ESCAPE_MARGIN:.2f} in {escaped}/{len(values)} seeds"


def part_b(ctx: Context) -> list[Row]:
    fixed = Row("b", "fixed h (1,0) and (0,1), no PBT", "final Q")
    for q in schedy_fixed_h(ctx):
        fixed.add(q)
    fixed.notes.append("one value per starting h (seed-independent)")
    pbt = Row("b", "schedy PBT", "best Q")
    for seed in ctx.seeds:
        q, exploited = schedy_toy_pbt(ctx, seed, len(FIG2_STARTS), FIG2_STARTS)
        pbt.add(q, exploited=exploited)
    pbt.notes.append(escape_note(pbt.values))
    pbt.notes.append(f"exploit jobs per seed {pbt.extra['exploited']}")
    rows = [fixed, pbt]
    ray_row = ray_toy_rows(ctx, "b", len(FIG2_STARTS), FIG2_STARTS)
    if ray_row:
        ray_row.notes.insert(0, escape_note(ray_row.values))
        rows.append(ray_row)
    return rows


# -- (c): an MLP on digits ---------------------------------------------------------------


@dataclass(frozen=True)
class Digits:
    """The digits data set, split 60/20/20 once (the same split for every seed)."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: np.ndarray

    @classmethod
    def load(cls) -> Digits:
        x, y = load_digits(return_X_y=True)
        x = x / 16.0
        x_train, x_rest, y_train, y_rest = train_test_split(
            x, y, test_size=0.4, stratify=y, random_state=0
        )
        x_val, x_test, y_val, y_test = train_test_split(
            x_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0
        )
        return cls(x_train, y_train, x_val, y_val, x_test, y_test, np.unique(y))


def digits_distributions() -> dict[str, schedy.random.Distribution]:
    return {
        "learning_rate_init": schedy.random.LogUniform(*LR_RANGE),
        "alpha": schedy.random.LogUniform(*ALPHA_RANGE),
    }


def digits_explore() -> dict[str, schedy.pbt.ExploreStrategy]:
    return {
        key: schedy.pbt.Perturb(
            0.8,
            1.2,
            low=low,
            high=high,
            resample_probability=0.25,
            distribution=schedy.random.LogUniform(low, high),
        )
        for key, (low, high) in (("learning_rate_init", LR_RANGE), ("alpha", ALPHA_RANGE))
    }


def new_mlp(hidden: int, seed: int) -> MLPClassifier:
    # A RandomState object (not an int) so that each partial_fit shuffles
    # differently; it is pickled with the model, so a copy resumes its stream.
    return MLPClassifier(
        hidden_layer_sizes=(hidden,),
        solver="sgd",
        momentum=0.9,
        batch_size=64,
        random_state=np.random.RandomState(seed),
    )


def apply_hyperparameters(model: MLPClassifier, hyperparameters: Mapping[str, Any]) -> None:
    """Set lr and alpha on a (possibly resumed) model, so that they really apply.

    ``alpha`` is read from the estimator at every update, so ``set_params`` is
    enough. The learning rate is not: partial_fit keeps the optimizer built on
    the first call (``model._optimizer``, an ``SGDOptimizer`` here), which
    copied ``learning_rate_init`` into its own ``learning_rate`` and steps with
    that. So the new value is also written into the optimizer: ``learning_rate``
    (what SGD's constant schedule uses) and ``learning_rate_init`` (what Adam
    and SGD's 'invscaling' recompute their step size from).
    """
    lr = float(hyperparameters["learning_rate_init"])
    model.set_params(learning_rate_init=lr, alpha=float(hyperparameters["alpha"]))
    optimizer = getattr(model, "_optimizer", None)
    if optimizer is not None:
        optimizer.learning_rate_init = lr
        optimizer.learning_rate = lr


def train_epochs(model: MLPClassifier, data: Digits, epochs: int) -> None:
    for _ in range(epochs):
        model.partial_fit(data.x_train, data.y_train, classes=data.classes)


def evaluate(model: MLPClassifier, data: Digits) -> dict[str, float]:
    return {
        "accuracy": float(model.score(data.x_val, data.y_val)),
        "test_accuracy": float(model.score(data.x_test, data.y_test)),
    }


def digits_pbt_job(
    data: Digits, budget: Budget, folder: Path, seed: int
) -> Callable[[schedy.Job], None]:
    """The seed worker loop: load the parent's checkpoint, set h, train, save, report."""

    def work(job: schedy.Job) -> None:
        if "model_path" in job.results:
            with open(job.results["model_path"], "rb") as file:
                model = pickle.load(file)
        else:
            model = new_mlp(budget.digits_hidden, seed * 1000 + (job.member or 0))
        apply_hyperparameters(model, job.hyperparameters)
        train_epochs(model, data, budget.digits_epochs_per_job)
        path = folder / f"{job.id}.pkl"
        with open(path, "wb") as file:
            pickle.dump(model, file)
        job.results = {**evaluate(model, data), "model_path": str(path)}

    return work


def digits_random_job(data: Digits, budget: Budget, seed: int) -> Callable[[schedy.Job], None]:
    """One random configuration trained the whole budget, evaluated every job-length."""
    count = 0

    def work(job: schedy.Job) -> None:
        nonlocal count
        model = new_mlp(budget.digits_hidden, seed * 1000 + count)
        count += 1
        apply_hyperparameters(model, job.hyperparameters)
        best: dict[str, float] = {"accuracy": -math.inf}
        for _ in range(budget.digits_generations):
            train_epochs(model, data, budget.digits_epochs_per_job)
            scores = evaluate(model, data)
            if scores["accuracy"] > best["accuracy"]:
                best = scores
        job.results = best

    return work


def digits_pbt(ctx: Context, data: Digits, seed: int) -> tuple[dict[str, float], int]:
    budget = ctx.budget
    folder = Path(tempfile.mkdtemp(prefix=f"digits-{seed}-", dir=ctx.folder))
    with schedy.SchedyDB(ctx.store_url()) as db:
        experiment = schedy.PopulationBasedTraining(
            "digits PBT",
            schedy.pbt.MAXIMIZE,
            "accuracy",
            exploit=schedy.pbt.Truncate(0.25),
            explore=digits_explore(),
            initial_distributions=digits_distributions(),
            population_size=budget.digits_population,
            max_generations=budget.digits_generations,
            seed=seed,
        )
        db.add_experiment(experiment)
        work = digits_pbt_job(data, budget, folder, seed)
        run_rounds(experiment, work, ctx.workers or budget.digits_population)
        best = experiment.best_jobs(1)[0]
        return dict(best.results), exploited_count(experiment)


def digits_random(ctx: Context, data: Digits, seed: int) -> dict[str, float]:
    budget = ctx.budget
    with schedy.SchedyDB(ctx.store_url()) as db:
        experiment = schedy.RandomSearch("digits random", digits_distributions(), seed=seed)
        db.add_experiment(experiment)
        work = digits_random_job(data, budget, seed)
        population = budget.digits_population
        run_rounds(experiment, work, ctx.workers or population, limit=population)
        jobs = list(experiment.all_jobs())
        return max((job.results for job in jobs), key=lambda results: results["accuracy"])


def part_c(ctx: Context) -> list[Row]:
    data = Digits.load()
    budget = ctx.budget
    pbt_val, pbt_test = (
        Row("c", "schedy PBT", "best val acc"),
        Row("c", "schedy PBT", "test acc @best val"),
    )
    method = "random search (schedy RandomSearch)"
    rs_val, rs_test = Row("c", method, "best val acc"), Row("c", method, "test acc @best val")
    for seed in ctx.seeds:
        with warnings.catch_warnings():  # partial_fit never "converges"
            warnings.simplefilter("ignore", ConvergenceWarning)
            pbt, exploited = digits_pbt(ctx, data, seed)
            random_best = digits_random(ctx, data, seed)
        pbt_val.add(pbt["accuracy"], exploited=exploited)
        pbt_test.add(pbt["test_accuracy"])
        rs_val.add(random_best["accuracy"])
        rs_test.add(random_best["test_accuracy"])
    pbt_val.notes.append(
        f"population {budget.digits_population} x {budget.digits_generations} jobs of "
        f"{budget.digits_epochs_per_job} epochs; exploit jobs per seed {pbt_val.extra['exploited']}"
    )
    rs_val.notes.append(
        f"{budget.digits_population} configs x {budget.digits_epochs} epochs "
        f"(each method {budget.digits_population * budget.digits_epochs} epochs in all)"
    )
    return [pbt_val, pbt_test, rs_val, rs_test]


# -- report ---------------------------------------------------------------------------


def summary(values: Sequence[float]) -> dict[str, float]:
    return {"mean": statistics.fmean(values), "min": min(values), "max": max(values)}


def print_table(rows: Sequence[Row]) -> None:
    header = f"{'part':<4} {'method':<36} {'measure':<18} {'mean':>7} {'min':>7} {'max':>7}"
    print(header)
    print("-" * len(header))
    for row in rows:
        stats = summary(row.values)
        print(
            f"({row.part}) {row.method:<36} {row.measure:<18} "
            f"{stats['mean']:7.4f} {stats['min']:7.4f} {stats['max']:7.4f}"
        )
        print(f"{'':5}per seed: {', '.join(f'{v:.4f}' for v in row.values)}")
        for note in row.notes:
            print(f"{'':5}{note}")


def to_json(
    rows: Sequence[Row],
    command: str,
    seconds: float,
    part_seconds: Mapping[str, float],
    ctx: Context,
) -> dict[str, Any]:
    return {
        "command": command,
        "seconds": seconds,
        "part_seconds": dict(part_seconds),
        "seeds": ctx.seeds,
        "workers": ctx.workers or "population size",
        "budget": {**ctx.budget.__dict__, "toy_learning_rate": LEARNING_RATE},
        "rows": [
            {
                "part": row.part,
                "method": row.method,
                "measure": row.measure,
                "per_seed": row.values,
                **summary(row.values),
                "notes": row.notes,
                "extra": row.extra,
            }
            for row in rows
        ],
    }


# -- command line ---------------------------------------------------------------------


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5, help="number of seeds 0..N-1 (default 5)")
    parser.add_argument("--parts", default="a,b,c", help="comma-separated parts (default a,b,c)")
    parser.add_argument("--quick", action="store_true", help="1 seed, small budgets, no Ray")
    parser.add_argument("--no-ray", action="store_true", help="skip the Ray Tune runs")
    parser.add_argument(
        "--workers", type=int, default=0, help="jobs claimed per round (default: population)"
    )
    parser.add_argument("--json", metavar="PATH", help="also write the results as JSON")
    args = parser.parse_args(argv)
    parts = [part.strip() for part in args.parts.split(",") if part.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"unknown part(s) {unknown}: choose among {', '.join(PARTS)}")
    if args.seeds < 1 or args.workers < 0:
        parser.error("--seeds must be >= 1 and --workers >= 0")
    args.parts = parts
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    command = shlex.join(sys.orig_argv)
    use_ray = not (args.no_ray or args.quick)
    if args.quick and not args.no_ray:
        print("--quick: Ray Tune skipped (its start-up alone takes ~10 s)")
    runners: dict[str, Callable[[Context], list[Row]]] = {"a": part_a, "b": part_b, "c": part_c}
    began = time.perf_counter()
    rows: list[Row] = []
    part_seconds: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="pbt-quality-") as folder:
        ctx = Context(
            seeds=list(range(1 if args.quick else args.seeds)),
            budget=QUICK if args.quick else Budget(),
            workers=args.workers,
            folder=Path(folder),
            use_ray=use_ray,
        )
        for index, part in enumerate(args.parts):
            print(f"part ({part}) ...", file=sys.stderr, flush=True)
            started = time.perf_counter()
            rows.extend(runners[part](ctx))
            part_seconds[part] = time.perf_counter() - started
            if not set(args.parts[index + 1 :]) & RAY_PARTS:
                stop_ray()  # idle Ray processes would slow the parts after
    seconds = time.perf_counter() - began
    print(f"\ncommand: {command}")
    print(f"seeds {ctx.seeds}, budget {ctx.budget}, workers {args.workers or 'population size'}")
    print_table(rows)
    timing = ", ".join(f"({part}) {value:.1f}s" for part, value in part_seconds.items())
    print(f"\nrun time {seconds:.1f}s: {timing}")
    if args.json:
        Path(args.json).write_text(
            json.dumps(to_json(rows, command, seconds, part_seconds, ctx), indent=2)
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
