"""The whole example in one command: create the experiment, run N local workers, report.

    python examples/pbt_mnist/run.py --framework lightning --workers 2 --dataset digits

Uses the embedded store (./schedy.db, or --db / $SCHEDY_URL), launches the
chosen worker script N times with ``schedy.run_workers`` (one GPU each where
there are GPUs), printing one line per finished job (``--quiet``: none;
``--verbose``: the frameworks' own output too), then prints the population,
the best job, its score and its hyperparameter schedule (``schedy show``).
"""

from __future__ import annotations

import argparse
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from create_experiment import NAME, create, make_experiment  # noqa: E402

import schedy  # noqa: E402
import schedy.cli  # noqa: E402
from schedy.errors import NotFoundError  # noqa: E402

WORKERS = {
    "lightning": "lightning_worker.py",
    "keras": "keras_worker.py",
    "torch": "torch_worker.py",
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--framework", choices=sorted(WORKERS), default="lightning")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument(
        "--db", default=None, help="store URL (default: $SCHEDY_URL or ./schedy.db)"
    )
    parser.add_argument("--dataset", choices=["mnist", "digits"], default="digits")
    parser.add_argument("--data-dir", default="data/mnist")
    parser.add_argument("--download", action="store_true")
    parser.add_argument("--population", type=int, default=4)
    parser.add_argument(
        "--generations", type=int, default=4, help="jobs (of --epochs-per-job) per model"
    )
    parser.add_argument("--epochs-per-job", type=int, default=1)
    parser.add_argument("--max-layers", type=int, default=3)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--checkpoint-dir", default="checkpoints")
    parser.add_argument(
        "--fresh",
        action="store_true",
        help="delete the experiment a previous run left and start over (default: resume it)",
    )
    talk = parser.add_mutually_exclusive_group()
    talk.add_argument("--quiet", action="store_true", help="no line per finished job")
    talk.add_argument(
        "--verbose", action="store_true", help="the workers' and frameworks' whole output"
    )
    args = parser.parse_args(argv)

    db = schedy.SchedyDB(args.db)
    experiment = make_experiment(
        NAME, args.population, args.generations, args.seed, args.max_layers
    )
    try:
        existing = None if args.fresh else db.get_experiment(NAME)
    except NotFoundError:
        existing = None
    if existing is None:
        create(db, experiment, replace=args.fresh)
    else:  # resume what an earlier (maybe interrupted) run left: its jobs and checkpoints
        done = sum(1 for job in existing.all_jobs() if job.status == schedy.Job.DONE)
        print(
            f"resuming {NAME!r} on {db.url} ({existing.status}, {done} job(s) done); "
            "--fresh starts it over"
        )
    command = [
        sys.executable,
        os.path.join(HERE, WORKERS[args.framework]),
        "--dataset", args.dataset,
        "--data-dir", args.data_dir,
        "--epochs-per-job", str(args.epochs_per_job),
        "--checkpoint-dir", args.checkpoint_dir,
    ]  # fmt: skip
    if args.download:
        command.append("--download")
    if args.verbose:
        command.append("--verbose")
    print(
        f"{args.workers} {args.framework} workers on {db.url}: population {args.population}, "
        f"{args.generations} generations of {args.epochs_per_job} epoch(s) on {args.dataset}"
    )
    progress = "quiet" if args.quiet else "verbose" if args.verbose else "lines"
    code = schedy.run_workers(command, NAME, workers=args.workers, db=db.url, progress=progress)
    schedy.cli.main(["--db", db.url, "show", NAME])
    return code


if __name__ == "__main__":
    sys.exit(main())
