"""How long ``schedy report`` takes on a big experiment (target: 10,000 jobs in < 5 s).

The report reads every job once and draws every view from memory, so its
cost grows with the number of jobs; this builds a PBT experiment of
population 32 run for ``--jobs`` cycles through the public API
(``next_job`` + finishing the job inside ``with``, as a worker does), each
job carrying what the integrations write -- the monitored metrics, a
checkpoint path and the per-lineage ``history`` of every metric, which grows
with the generation -- then times :func:`schedy._report.write_report` on it
(reading the store, building the data, rendering the HTML with plotly's JS
inlined, writing the file). Run it from the repository root::

    .venv/bin/python benchmarks/report_speed.py                  # 10,000 jobs
    .venv/bin/python benchmarks/report_speed.py --jobs 1000 --repeat 1
    .venv/bin/python benchmarks/report_speed.py --keep /tmp/big.db --out /tmp/big.html

It prints the build time, each timed run and the best and median of them.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import schedy
from schedy._report import render, report_data, write_report

NAME = "report speed"


def make_experiment(population: int, seed: int) -> schedy.PopulationBasedTraining:
    return schedy.PopulationBasedTraining(
        NAME,
        schedy.pbt.MAXIMIZE,
        "val_acc",
        exploit=schedy.pbt.Truncate(),
        explore={"learning_rate": schedy.pbt.Perturb(), "dropout": schedy.pbt.Perturb(high=0.9)},
        initial_distributions={
            "learning_rate": schedy.random.LogUniform(1e-5, 1e-1),
            "dropout": schedy.random.Uniform(0.0, 0.8),
            "layers": schedy.random.Choice([1, 2, 3, 4]),
            "activation": schedy.random.Choice(["relu", "tanh"]),
        },
        population_size=population,
        seed=seed,
    )


def build(url: str, jobs: int, population: int, seed: int) -> schedy.Experiment:
    """A PBT experiment of ``jobs`` finished jobs, trained by a toy objective."""
    rng = random.Random(seed)
    db = schedy.SchedyDB(url)
    db.add_experiment(make_experiment(population, seed))
    experiment = db.get_experiment(NAME)
    for _ in range(jobs):
        with experiment.next_job() as job:
            h = job.hyperparameters
            generation = job.generation or 0
            # Accuracy climbs with training, best near lr 1e-3 and dropout 0.2.
            skill = -abs(math.log10(h["learning_rate"]) + 3) / 3 - abs(h["dropout"] - 0.2)
            acc = 1 - 0.5 * math.exp(-generation / 40) + 0.05 * skill + rng.gauss(0, 0.005)
            loss = -math.log(max(acc, 1e-6)) + rng.gauss(0, 0.01)
            history = job.results.get("history") or {"val_acc": [], "loss": []}
            job.results.update(
                val_acc=acc,
                loss=loss,
                epoch=generation + 1,
                model_path=f"checkpoints/{job.id}.ckpt",
                history={
                    "val_acc": [*history["val_acc"], acc],
                    "loss": [*history["loss"], loss],
                },
            )
    return experiment


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10_000)
    parser.add_argument("--population", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("--keep", metavar="DB", help="build into (or reuse) this SQLite file")
    parser.add_argument("--out", metavar="HTML", help="where to write the report")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        path = args.keep or os.path.join(scratch, "report.db")
        url = f"sqlite:///{path}"
        if args.keep and os.path.exists(args.keep):
            experiment = schedy.SchedyDB(url).get_experiment(NAME)
            print(f"reusing {path}")
        else:
            started = time.perf_counter()
            experiment = build(url, args.jobs, args.population, args.seed)
            print(
                f"built {args.jobs:,} jobs (population {args.population}) in "
                f"{time.perf_counter() - started:.1f} s"
            )
        out = Path(args.out or os.path.join(scratch, "report.html"))
        times = []
        for run in range(args.repeat):
            started = time.perf_counter()
            write_report(experiment, out)
            times.append(time.perf_counter() - started)
            print(f"run {run + 1}: write_report {times[-1]:.2f} s")
        started = time.perf_counter()
        data = report_data(experiment)
        read = time.perf_counter() - started
        started = time.perf_counter()
        render(data)
        rendered = time.perf_counter() - started
        jobs = len(data["jobs"]["id"])
        print(
            f"{jobs:,} jobs: report in {min(times):.2f} s best, {statistics.median(times):.2f} s "
            f"median (target < 5 s; reading + data {read:.2f} s, rendering {rendered:.2f} s); "
            f"{out.stat().st_size / 1e6:.1f} MB of HTML; {os.cpu_count()} CPUs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
