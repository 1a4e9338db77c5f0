"""Search quality of the kinds beyond vanilla PBT, side by side, over ``--seeds`` seeds.

Every schedy run goes through the public API on a SQLite file, seeded, with
``benchmarks/pbt_quality.py``'s toy problem, digits MLP and worker loop:

(a) PBT paper toy (Jaderberg et al. 2017 §4.1) at population 2 and 4, from
    identical initial populations (a seeded PB2, PBT and RandomSearch draw
    their first members from the same streams): best Q of PB2 vs PBT vs
    random search (target: PB2 >= PBT).
(b) digits MLP, population 4, equal total epochs: PB2 vs PBT vs random.
(c) digits MLP, one configuration space (lr, alpha log-uniform): successive
    halving (ASHA, 1..27 epochs, eta 3) and Hyperband vs random search (27
    configurations x 27 epochs), and Optuna's SuccessiveHalvingPruner /
    HyperbandPruner when optuna is importable, in two settings: 81
    configurations run to DONE ([1/3]: synchronous halving would spend a
    third of random search's epochs), and 243 stopped at random search's
    total ([equal]). Per seed: epochs spent to reach random search's final
    best validation accuracy, and the best accuracy within a third of its
    epochs (target: random search's best reached with <= 1/3 of its epochs).
    Every method's accuracy counts only where it ends a rung or a run.
(d) Fig. 2 (population 2, h = (1,0) and (0,1)) with ``synchronous=True``:
    seeds escaping the 0.39 plateau (target 5/5).
(e) scheduling cost per claim at population 32 (ms, SQLite, end to end
    through ``next_job``) for PBT, synchronous PBT, PB2, successive halving
    and Hyperband; and PB2's explore decision alone at generation 1,000.

    .venv/bin/python benchmarks/search_quality.py            # a few minutes on 2 cores
    .venv/bin/python benchmarks/search_quality.py --quick    # smoke run (< 1 min)
"""

from __future__ import annotations

import argparse
import json
import math
import pickle
import random
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

_HERE = Path(__file__).resolve().parent
if str(_HERE) not in sys.path:
    sys.path.insert(0, str(_HERE))

import pbt_quality as pq  # noqa: E402
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from toy_pbt import toy_experiment, unit_uniform  # noqa: E402  (examples/toy_pbt.py)

import schedy  # noqa: E402
from schedy._scheduling._halving import rung_budgets  # noqa: E402
from schedy.errors import NoJobError  # noqa: E402

TOY_BOUNDS = {"h0": (0.0, 1.0), "h1": (0.0, 1.0)}
DIGITS_BOUNDS = {
    "learning_rate_init": schedy.random.LogUniform(*pq.LR_RANGE),
    "alpha": schedy.random.LogUniform(*pq.ALPHA_RANGE),
}


def _stats(values: Sequence[float]) -> str:
    return (
        f"mean {statistics.mean(values):.4f}  min {min(values):.4f}  max {max(values):.4f}"
        if values
        else "-"
    )


# -- (a) toy ---------------------------------------------------------------------
def toy_pb2(ctx: pq.Context, seed: int, population: int, synchronous: bool = False) -> float:
    with schedy.SchedyDB(ctx.store_url()) as db:
        experiment = schedy.PB2(
            "toy pb2",
            schedy.pbt.MAXIMIZE,
            "Q",
            TOY_BOUNDS,
            exploit=schedy.pbt.Truncate(0.25),
            initial_distributions=unit_uniform(),
            population_size=population,
            max_generations=ctx.budget.toy_generations,
            seed=seed,
            synchronous=synchronous,
        )
        db.add_experiment(experiment)
        pq.run_rounds(experiment, pq.toy_job, ctx.workers or population)
        return pq.best_q(experiment, ctx.budget.toy_steps)


def part_a(ctx: pq.Context) -> list[str]:
    lines = []
    for population in (2, 4):
        pb2 = [toy_pb2(ctx, seed, population) for seed in ctx.seeds]
        pbt = [pq.schedy_toy_pbt(ctx, seed, population)[0] for seed in ctx.seeds]
        rnd = [pq.schedy_toy_random(ctx, seed, population) for seed in ctx.seeds]
        wins = sum(a >= b - 1e-9 for a, b in zip(pb2, pbt))
        lines += [
            f"(a) toy, population {population}: best Q",
            f"    PB2            {_stats(pb2)}   PB2 >= PBT in {wins}/{len(pb2)} seeds",
            f"    PBT            {_stats(pbt)}",
            f"    random search  {_stats(rnd)}",
        ]
    return lines


# -- (b) digits, population 4 -------------------------------------------------------
def digits_pb2(ctx: pq.Context, data: pq.Digits, seed: int) -> dict[str, float]:
    budget = ctx.budget
    folder = Path(tempfile.mkdtemp(prefix=f"pb2-{seed}-", dir=ctx.folder))
    with schedy.SchedyDB(ctx.store_url()) as db:
        experiment = schedy.PB2(
            "digits PB2",
            schedy.pbt.MAXIMIZE,
            "accuracy",
            DIGITS_BOUNDS,
            exploit=schedy.pbt.Truncate(0.25),
            initial_distributions=pq.digits_distributions(),
            population_size=budget.digits_population,
            max_generations=budget.digits_generations,
            seed=seed,
        )
        db.add_experiment(experiment)
        work = pq.digits_pbt_job(data, budget, folder, seed)
        pq.run_rounds(experiment, work, ctx.workers or budget.digits_population)
        return dict(experiment.best_jobs(1)[0].results)


def part_b(ctx: pq.Context, data: pq.Digits) -> list[str]:
    ctx = replace(ctx, budget=replace(ctx.budget, digits_population=4))
    pb2 = [digits_pb2(ctx, data, seed) for seed in ctx.seeds]
    pbt = [pq.digits_pbt(ctx, data, seed)[0] for seed in ctx.seeds]
    rnd = [pq.digits_random(ctx, data, seed) for seed in ctx.seeds]
    epochs = ctx.budget.digits_epochs
    return [
        f"(b) digits MLP, population 4, {epochs} epochs per member ({4 * epochs} in all, "
        "random search alike): best validation (test) accuracy",
        *(
            f"    {name:<14} {_stats([r['accuracy'] for r in runs])}"
            f"   test {statistics.mean(r['test_accuracy'] for r in runs):.4f}"
            for name, runs in (("PB2", pb2), ("PBT", pbt), ("random search", rnd))
        ),
    ]


# -- (c) successive halving / Hyperband ---------------------------------------------
class Curve:
    """Best validation accuracy against epochs spent, as the search goes."""

    def __init__(self) -> None:
        self.points: list[tuple[int, float]] = []
        self.epochs = 0
        self.best = -math.inf

    def add(self, epochs: int, accuracy: float) -> None:
        self.epochs += epochs
        self.best = max(self.best, accuracy)
        self.points.append((self.epochs, self.best))

    def epochs_to(self, target: float) -> int | None:
        return next((e for e, b in self.points if b >= target - 1e-12), None)

    def best_within(self, epochs: float) -> float:
        return max((b for e, b in self.points if e <= epochs), default=math.nan)


def digits_halving(
    ctx: pq.Context,
    data: pq.Digits,
    seed: int,
    kind: str,
    max_epochs: int,
    configurations: int,
    epoch_limit: float = math.inf,
) -> Curve:
    """One worker through successive halving or Hyperband until DONE or ``epoch_limit``."""
    folder = Path(tempfile.mkdtemp(prefix=f"{kind}-{seed}-", dir=ctx.folder))
    cls = schedy.Hyperband if kind == "hyperband" else schedy.SuccessiveHalving
    curve = Curve()
    with schedy.SchedyDB(ctx.store_url()) as db:
        experiment = cls(
            kind,
            schedy.pbt.MAXIMIZE,
            "accuracy",
            pq.digits_distributions(),
            min_budget=1,
            max_budget=max_epochs,
            reduction_factor=3,
            max_configurations=configurations,
            seed=seed,
        )
        db.add_experiment(experiment)
        while curve.epochs < epoch_limit:
            try:
                job = experiment.next_job(timeout=0)
            except NoJobError:
                break
            with job:
                done = int(job.results.get("epoch", 0))
                if "model_path" in job.results:
                    with open(job.results["model_path"], "rb") as file:
                        model = pickle.load(file)
                else:
                    model = pq.new_mlp(ctx.budget.digits_hidden, seed * 1000 + (job.member or 0))
                pq.apply_hyperparameters(model, job.hyperparameters)
                target = int(job.budget or done + 1)  # train to the rung's total epochs
                pq.train_epochs(model, data, target - done)
                path = folder / f"{job.id}.pkl"
                with open(path, "wb") as file:
                    pickle.dump(model, file)
                scores = pq.evaluate(model, data)
                job.results = {**scores, "epoch": target, "model_path": str(path)}
                curve.add(target - done, scores["accuracy"])
    return curve


def digits_random_curve(
    ctx: pq.Context, data: pq.Digits, seed: int, max_epochs: int, configurations: int
) -> Curve:
    curve = Curve()
    with schedy.SchedyDB(ctx.store_url()) as db:
        experiment = schedy.RandomSearch("random", pq.digits_distributions(), seed=seed)
        db.add_experiment(experiment)
        for count in range(configurations):
            with experiment.next_job() as job:
                model = pq.new_mlp(ctx.budget.digits_hidden, seed * 1000 + count)
                pq.apply_hyperparameters(model, job.hyperparameters)
                pq.train_epochs(model, data, max_epochs)
                job.results = pq.evaluate(model, data)
                curve.add(max_epochs, job.results["accuracy"])
    return curve


def digits_optuna(
    ctx: pq.Context,
    data: pq.Digits,
    seed: int,
    pruner: str,
    max_epochs: int,
    trials: int,
    epoch_limit: float = math.inf,
) -> Curve | None:
    try:
        import optuna
    except ImportError:
        return None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    curve = Curve()
    if pruner == "hyperband":
        chosen: Any = optuna.pruners.HyperbandPruner(1, max_epochs, 3)
    else:
        chosen = optuna.pruners.SuccessiveHalvingPruner(1, 3)
    rungs = set(rung_budgets(1, max_epochs, 3))
    study = optuna.create_study(
        direction="maximize", sampler=optuna.samplers.RandomSampler(seed=seed), pruner=chosen
    )

    def objective(trial: Any) -> float:
        hyperparameters = {
            "learning_rate_init": trial.suggest_float("learning_rate_init", *pq.LR_RANGE, log=True),
            "alpha": trial.suggest_float("alpha", *pq.ALPHA_RANGE, log=True),
        }
        model = pq.new_mlp(ctx.budget.digits_hidden, seed * 1000 + trial.number)
        pq.apply_hyperparameters(model, hyperparameters)
        accuracy = 0.0
        for epoch in range(1, max_epochs + 1):
            pq.train_epochs(model, data, 1)
            accuracy = pq.evaluate(model, data)["accuracy"]
            # Counted only where schedy's halving has a result (rung ends), as
            # random search's final epoch: a best over every epoch's noisy
            # accuracy would favour Optuna by the measure alone.
            curve.add(1, accuracy if epoch in rungs else -math.inf)
            trial.report(accuracy, epoch)
            if curve.epochs >= epoch_limit:
                trial.study.stop()  # equal epochs: the rest of the study is not run
                return accuracy
            if trial.should_prune():
                raise optuna.TrialPruned()
        return accuracy

    study.optimize(objective, n_trials=trials)
    return curve


def _reach(curve: Curve, target: float, total: int) -> str:
    epochs = curve.epochs_to(target)
    return "      -     " if epochs is None else f"{epochs:>4} ({epochs / total:.2f})"


def part_c(ctx: pq.Context, data: pq.Digits, quick: bool) -> list[str]:
    """Two settings: the halving kinds with 3x random search's configurations (their
    synchronous total is a third of random search's epochs) run to DONE, and with
    9x, stopped at random search's total (equal epochs); Optuna's pruners alike."""
    max_epochs, random_configs = (9, 9) if quick else (27, 27)
    random_total = max_epochs * random_configs
    settings = {"1/3": (3 * random_configs, math.inf), "equal": (9 * random_configs, random_total)}
    rows: dict[str, list[Curve]] = {}
    for seed in ctx.seeds:
        rows.setdefault("random search", []).append(
            digits_random_curve(ctx, data, seed, max_epochs, random_configs)
        )
        for setting, (configurations, limit) in settings.items():
            for kind in ("successive_halving", "hyperband"):
                rows.setdefault(f"{kind} [{setting}]", []).append(
                    digits_halving(ctx, data, seed, kind, max_epochs, configurations, limit)
                )
            for pruner in ("successive_halving", "hyperband"):
                curve = digits_optuna(ctx, data, seed, pruner, max_epochs, configurations, limit)
                if curve is not None:
                    rows.setdefault(f"optuna {pruner} [{setting}]", []).append(curve)
    lines = [
        f"(c) digits MLP, lr/alpha log-uniform, 1..{max_epochs} epochs (eta 3): random search "
        f"= {random_configs} configurations x {max_epochs} epochs = {random_total} epochs, "
        "its final best the target. [1/3]: halving with "
        f"{settings['1/3'][0]} configurations run to DONE; [equal]: "
        f"{settings['equal'][0]} configurations, stopped at {random_total} epochs",
        "    method                         reach  <=1/3  median epochs to target (fraction)  "
        f"best within {random_total // 3}  total epochs  best acc",
    ]
    targets = [curve.best for curve in rows["random search"]]
    per_seed = ["    per seed: epochs to random search's best (fraction of its epochs)"]
    per_seed.append("    " + " " * 31 + "".join(f"seed {s:<8}" for s in ctx.seeds))
    per_seed.append("    " + f"{'target':<31}" + "".join(f"{t:<13.4f}" for t in targets))
    for name, curves in rows.items():
        reach = [curve.epochs_to(target) for curve, target in zip(curves, targets)]
        reached = [r for r in reach if r is not None]
        fraction = [r / random_total for r in reached]
        within = [curve.best_within(random_total / 3) for curve in curves]
        lines.append(
            f"    {name:<30} {len(reached)}/{len(curves)}   "
            f"{sum(3 * r <= random_total for r in reached)}/{len(curves)}   "
            f"{statistics.median(reached) if reached else math.nan:>6.0f} "
            f"({statistics.median(fraction) if fraction else math.nan:.2f})"
            f"                      {statistics.mean(within):.4f}"
            f"      {statistics.mean(c.epochs for c in curves):>6.0f}"
            f"        {statistics.mean(c.best for c in curves):.4f}"
        )
        per_seed.append(
            f"    {name:<31}"
            + "".join(f"{_reach(c, t, random_total):<13}" for c, t in zip(curves, targets))
        )
    return lines + per_seed


# -- (d) Fig. 2 with synchronous PBT ------------------------------------------------
def part_d(ctx: pq.Context) -> list[str]:
    values = []
    for seed in ctx.seeds:
        with schedy.SchedyDB(ctx.store_url()) as db:
            experiment = toy_experiment(
                "fig2 sync", 2, ctx.budget.toy_generations, seed, random_start=False
            )
            experiment.synchronous = True
            db.add_experiment(experiment)
            for start in pq.FIG2_STARTS:
                experiment.add_job(hyperparameters=dict(start))
            pq.run_rounds(experiment, pq.toy_job, 1)  # one worker: the barrier must hold
            values.append(pq.best_q(experiment, ctx.budget.toy_steps))
    escaped = sum(v > pq.FIG2_PLATEAU + pq.ESCAPE_MARGIN for v in values)
    return [
        "(d) Fig. 2 (population 2, h=(1,0),(0,1)), synchronous=True, one worker: best Q",
        f"    sync PBT       {_stats(values)}   escapes the 0.39 plateau in "
        f"{escaped}/{len(values)} seeds",
    ]


# -- (e) cost per claim ---------------------------------------------------------------
def _claim_costs(
    experiment: schedy.Experiment, claims: int, work: Callable[[Any], None]
) -> list[float]:
    costs = []
    for _ in range(claims):
        start = time.perf_counter()
        try:
            job = experiment.next_job(timeout=0)
        except NoJobError:
            break
        costs.append(time.perf_counter() - start)
        with job:
            work(job)
    return costs


def part_e(ctx: pq.Context, quick: bool) -> list[str]:
    population = 32
    claims = 600 if quick else 2000
    rng = random.Random(0)

    def score(job: Any) -> None:
        lr = job.hyperparameters.get("lr", 0.01)
        gain = 1 - abs(math.log10(lr) + 2) / 3 + rng.gauss(0, 0.02)
        job.results["acc"] = float(job.results.get("acc", 0.0)) + gain
        if job.budget is not None:
            job.results["epoch"] = job.budget

    space = {"lr": schedy.random.LogUniform(1e-4, 1e-1)}
    kinds: dict[str, Callable[[], schedy.Experiment]] = {
        "PBT": lambda: schedy.PopulationBasedTraining(
            "pbt",
            "max",
            "acc",
            schedy.pbt.Truncate(0.25),
            explore={"lr": schedy.pbt.Perturb()},
            initial_distributions=space,
            population_size=population,
            seed=1,
        ),
        "PBT synchronous": lambda: schedy.PopulationBasedTraining(
            "sync",
            "max",
            "acc",
            schedy.pbt.Truncate(0.25),
            explore={"lr": schedy.pbt.Perturb()},
            initial_distributions=space,
            population_size=population,
            seed=1,
            synchronous=True,
        ),
        "PB2": lambda: schedy.PB2(
            "pb2",
            "max",
            "acc",
            space,
            exploit=schedy.pbt.Truncate(0.25),
            population_size=population,
            seed=1,
        ),
        "successive halving": lambda: schedy.SuccessiveHalving(
            "sh", "max", "acc", space, max_budget=81, seed=1
        ),
        "Hyperband": lambda: schedy.Hyperband("hb", "max", "acc", space, max_budget=81, seed=1),
    }
    lines = [
        f"(e) cost per claim, SQLite, end to end through next_job, {claims} claims "
        f"(population {population}; halving: configurations grow): ms",
    ]
    for name, build in kinds.items():
        with schedy.SchedyDB(ctx.store_url()) as db:
            experiment = build()
            db.add_experiment(experiment)
            costs = sorted(_claim_costs(db.get_experiment(experiment.name), claims, score))
            costs = costs[population:] or costs
            lines.append(
                f"    {name:<20} mean {1000 * statistics.mean(costs):.3f}  median "
                f"{1000 * statistics.median(costs):.3f}  p95 "
                f"{1000 * costs[int(0.95 * len(costs))]:.3f}  max {1000 * costs[-1]:.3f}"
            )
    lines.append("    " + pb2_decision_cost())
    return lines


def pb2_decision_cost() -> str:
    """PB2's explore alone on a population of 32 at generation 1,000 (half running)."""
    from schedy._records import JobRecord, MemberRecord
    from schedy._scheduling import PB2Scheduler, SchedulingState

    scheduler = PB2Scheduler(
        "max",
        "acc",
        {"lr": schedy.random.LogUniform(1e-4, 1e-1), "m": (0.0, 1.0)},
        population_size=32,
        seed=0,
    )
    rng = random.Random(0)
    members, jobs = [], {}
    for i in range(32):
        history = json.dumps([[g, rng.random() + g] for g in range(992, 1000)])
        members.append(
            MemberRecord(
                i,
                head_id=f"h{i}",
                head_generation=999,
                score=999.5,
                busy_id=f"b{i}" if i % 2 == 0 else None,
                last_id=f"h{i}",
                history=history,
            )
        )
        point = {"lr": 10 ** rng.uniform(-4, -1), "m": rng.random()}
        jobs[f"h{i}"] = JobRecord(f"h{i}", "e", "DONE", point, {}, member=i, generation=999)
        jobs[f"b{i}"] = JobRecord(
            f"b{i}", "e", "RUNNING", point, {}, member=i, generation=1000, parent_id=f"h{i}"
        )
    state = SchedulingState(None, members, jobs.__getitem__, rng)
    scheduler.explored({"lr": 0.01, "m": 0.5}, state, members[1], 1000)  # imports
    count = 100
    start = time.perf_counter()
    for _ in range(count):
        scheduler.explored({"lr": 0.01, "m": 0.5}, state, members[1], 1000)
    each = (time.perf_counter() - start) / count * 1000
    return f"PB2 explore decision alone, population 32, generation 1,000: {each:.2f} ms"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--parts", default="a,b,c,d,e")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    budget = pq.QUICK if args.quick else pq.Budget()
    parts = set(args.parts.split(","))
    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        ctx = pq.Context(list(range(args.seeds)), budget, 0, Path(folder), use_ray=False)
        data = pq.Digits.load()
        output: list[str] = []
        parts_run: list[tuple[str, Callable[[], list[str]]]] = [
            ("a", lambda: part_a(ctx)),
            ("b", lambda: part_b(ctx, data)),
            ("c", lambda: part_c(ctx, data, args.quick)),
            ("d", lambda: part_d(ctx)),
            ("e", lambda: part_e(ctx, args.quick)),
        ]
        for part, run in parts_run:
            if part in parts:
                lines = run()
                print("\n".join(lines), flush=True)
                output += lines
    print(
        f"({time.perf_counter() - started:.0f} s, seeds {args.seeds}"
        f"{', --quick' if args.quick else ''})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
