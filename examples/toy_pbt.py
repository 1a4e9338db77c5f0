"""PBT on the toy problem of the PBT paper (Jaderberg et al. 2017, §4.1), with local workers.

Each member holds θ = (θ0, θ1), starting at (0.9, 0.9); the true objective is
Q(θ) = 1.2 - (θ0² + θ1²). A member only sees the surrogate
Q̂(θ|h) = 1.2 - (h0·θ0² + h1·θ1²) and does gradient ascent on it (lr 0.01),
so the hyperparameters h = (h0, h1) decide how well it climbs Q. Each job is
4 gradient steps from its parent's θ (the "checkpoint" lives in the job's
results); PBT copies good members' θ and perturbs their h.

Run (embedded SQLite store ./schedy.db, 4 worker processes)::

    python examples/toy_pbt.py --workers 4

It prints the best job, its score and its hyperparameter schedule.
"""

from __future__ import annotations

import argparse
import multiprocessing
import sys
import time

import schedy
from schedy.errors import NoJobError, NotFoundError

STEPS_PER_JOB = 4
LEARNING_RATE = 0.01


def q_true(theta: list[float]) -> float:
    return 1.2 - (theta[0] ** 2 + theta[1] ** 2)


def train_steps(theta: list[float], h: list[float], steps: int) -> list[float]:
    """Gradient ascent on the surrogate Q̂(θ|h): dQ̂/dθi = -2·hi·θi."""
    for _ in range(steps):
        theta = [t + LEARNING_RATE * (-2.0 * hi * t) for t, hi in zip(theta, h)]
    return theta


def unit_uniform() -> dict[str, schedy.random.Distribution]:
    """h0 and h1 drawn uniformly from [0, 1]."""
    return {"h0": schedy.random.Uniform(0.0, 1.0), "h1": schedy.random.Uniform(0.0, 1.0)}


def toy_experiment(
    name: str, population: int, generations: int, seed: int | None, random_start: bool = True
) -> schedy.PopulationBasedTraining:
    """The toy problem's PBT (shared with ``benchmarks/pbt_quality.py``);
    ``random_start=False`` leaves the members to jobs queued by hand."""
    explore = schedy.pbt.Perturb(
        0.8,
        1.2,
        low=0.0,
        high=1.0,
        resample_probability=0.25,
        distribution=schedy.random.Uniform(0.0, 1.0),
    )
    return schedy.PopulationBasedTraining(
        name,
        schedy.pbt.MAXIMIZE,
        "Q",
        exploit=schedy.pbt.Truncate(0.25),
        explore={"h0": explore, "h1": explore},
        initial_distributions=unit_uniform() if random_start else None,
        population_size=population,
        max_generations=generations,
        seed=seed,
    )


def create_experiment(
    db: schedy.SchedyDB, name: str, population: int, generations: int, seed: int | None
) -> None:
    try:
        db.get_experiment(name).delete()
        print(f"(replaced the previous experiment {name!r})")
    except NotFoundError:
        pass
    db.add_experiment(toy_experiment(name, population, generations, seed))


def worker(url: str | None, name: str) -> None:
    """The whole worker: resume from the parent's θ, train a bit, report."""
    experiment = schedy.SchedyDB(url).get_experiment(name)
    while True:
        try:
            with experiment.next_job() as job:
                theta = job.results.get("theta", [0.9, 0.9])
                h = [job.hyperparameters["h0"], job.hyperparameters["h1"]]
                theta = train_steps(theta, h, STEPS_PER_JOB)
                job.results = {"theta": theta, "Q": q_true(theta)}
        except NoJobError:
            return


def print_report(experiment: schedy.Experiment, seconds: float) -> None:
    jobs = list(experiment.all_jobs())
    best = experiment.best_jobs(1)[0]
    exploited = sum(1 for job in jobs if job.exploited_from)
    print(f"\n{len(jobs)} jobs in {seconds:.1f}s, {exploited} of them copies of a better member")
    print(f"best job {best.id} (member {best.member}): Q = {best.results['Q']:.4f} (optimum 1.2)")
    print("\nits hyperparameter schedule (* = copied from a better member, then explored):")
    print(f"  {'generations':>11} {'member':>6}  {'h0':>6} {'h1':>6}  {'Q at end':>8}")
    lineage = best.lineage()
    start = 0
    for index, step in enumerate(lineage):  # one row per stretch of unchanged h
        last = index + 1 == len(lineage) or lineage[index + 1].exploited_from is not None
        if not last:
            continue
        first = lineage[start]
        mark = "*" if first.exploited_from else " "
        span = f"{first.generation}-{step.generation}"
        print(
            f"{mark} {span:>11} {first.member:>6}  {first.hyperparameters['h0']:6.3f} "
            f"{first.hyperparameters['h1']:6.3f}  {step.results['Q']:8.4f}"
        )
        start = index + 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--db", default=None, help="store URL (default: $SCHEDY_URL or sqlite:///./schedy.db)"
    )
    parser.add_argument("--name", default="toy PBT")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--population", type=int, default=8)
    parser.add_argument(
        "--generations", type=int, default=50, help="jobs per member (4 steps each)"
    )
    parser.add_argument("--seed", type=int, default=None)
    args = parser.parse_args(argv)
    db = schedy.SchedyDB(args.db)
    create_experiment(db, args.name, args.population, args.generations, args.seed)
    print(
        f"{args.workers} workers on {db.url}: "
        f"population {args.population}, {args.generations} generations"
    )
    start = time.perf_counter()
    context = multiprocessing.get_context("spawn")
    processes = [
        context.Process(target=worker, args=(args.db, args.name)) for _ in range(args.workers)
    ]
    for process in processes:
        process.start()
    for process in processes:
        process.join()
    failed = [p.exitcode for p in processes if p.exitcode != 0]
    print_report(db.get_experiment(args.name), time.perf_counter() - start)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
