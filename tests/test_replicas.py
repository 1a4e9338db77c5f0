"""Two ``schedy server`` replicas over one PostgreSQL, behind a load balancer.

A server holds no state of its own beyond the database (only a few seconds'
cache of token lookups), so replicas need no coordination: any request may
go to either. Workers take one URL, that of the load balancer in front
(nginx, HAProxy, a Kubernetes Service); here a tiny round-robin TCP proxy
plays it. When a replica dies the balancer stops routing to it, and what was
in flight there is retried by the client (a claim under its request id,
which returns the same job if the first try had committed), so the workers
carry on through the other replica without noticing.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

import schedy
from schedy.storage._http import HTTPStorage

pytestmark = pytest.mark.slow

TOKEN = "replica-test-token-0123456789"


@contextmanager
def _replica(url: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """``schedy server`` in a process of its own over ``url``; yields its URL."""
    pytest.importorskip("fastapi", reason="the server needs: pip install 'schedy[server]'")
    command = [sys.executable, "-m", "schedy", "--db", url, "server", "--port", "0"]
    env = dict(os.environ, SCHEDY_TOKEN=TOKEN)
    process = subprocess.Popen(command, env=env, stderr=subprocess.PIPE, text=True)
    try:
        assert process.stderr is not None
        found = None
        for line in process.stderr:
            found = re.search(r"on (http://\S+) \(", line)
            if found:
                break
        assert found, f"the replica did not start (exit code {process.wait()})"
        threading.Thread(target=process.stderr.read, daemon=True).start()  # never a full pipe
        yield found.group(1), process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


class _Balancer:
    """A round-robin TCP load balancer: each connection goes to the next replica
    that accepts it (a dead one is skipped), as any HTTP load balancer does."""

    def __init__(self, backends: list[str]) -> None:
        self.backends = [(u.split(":")[1].strip("/"), int(u.rsplit(":", 1)[1])) for u in backends]
        self.connections = [0] * len(backends)
        self._turn = itertools.cycle(range(len(backends)))
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._handle, "127.0.0.1", 0)
        )
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        self._ready.set()
        self._loop.run_forever()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for _ in self.backends:
            index = next(self._turn)
            try:
                up_reader, up_writer = await asyncio.open_connection(*self.backends[index])
            except OSError:
                continue
            self.connections[index] += 1
            break
        else:
            writer.close()
            return

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            try:
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            except OSError:  # a reset: the connection is over
                pass

        tasks = [
            asyncio.ensure_future(pipe(reader, up_writer)),
            asyncio.ensure_future(pipe(up_reader, writer)),
        ]
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        for task in tasks:
            task.cancel()
        for stream in (writer, up_writer):  # one side gone: the connection is over
            stream.close()

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


#: A worker process: PBT jobs of ~50 ms through the balancer, each claimed
#: job's id printed; it ends when the experiment is finished.
_WORKER = textwrap.dedent(
    """
    import sys, time, schedy
    db = schedy.SchedyDB(sys.argv[1], lease_seconds=10)
    experiment = db.get_experiment("replicated")
    while True:
        try:
            job = experiment.next_job()
        except schedy.errors.NoJobError:
            break
        with job:
            print(job.id, flush=True)
            time.sleep(0.05)
            job.results["acc"] = job.hyperparameters["q"] + 0.01 * (job.generation or 0)
    """
)


def test_two_replicas_share_one_database_and_survive_one_killed(
    postgres_url: str, tmp_path: Path
) -> None:
    with schedy.SchedyDB(postgres_url) as db:
        db.add_experiment(
            schedy.PopulationBasedTraining(
                "replicated",
                schedy.pbt.MAXIMIZE,
                "acc",
                exploit=schedy.pbt.Truncate(),
                explore={"q": schedy.pbt.Perturb()},
                initial_distributions={"q": schedy.random.Uniform(0.0, 1.0)},
                population_size=6,
                max_generations=8,
            )
        )
        db.add_experiment(schedy.ManualSearch("leases"))
        db.get_experiment("leases").add_job(hyperparameters={"x": 1})
    with _replica(postgres_url) as (first, first_process), _replica(postgres_url) as (second, _):
        # A lease claimed through one replica is renewed and ended through the other.
        one, other = HTTPStorage(first, token=TOKEN), HTTPStorage(second, token=TOKEN)
        claim = one.claim_job("leases", 30.0)
        assert claim.job is not None and claim.job.lease_token
        assert other.renew_lease("leases", claim.job.id, claim.job.lease_token, 30.0)
        assert not one.renew_lease("leases", claim.job.id, "not-the-lease", 30.0)
        one.close()
        other.close()
        # A token created on the database (as `schedy token create` does) is
        # valid on both replicas at once, with no restart.
        made = subprocess.run(
            [sys.executable, "-m", "schedy", "--db", postgres_url, "token", "create"],
            capture_output=True,
            text=True,
            check=True,
        )
        secret = made.stdout.strip()
        for url in (first, second):
            with schedy.SchedyDB(url, token=secret) as db:
                assert "replicated" in {e.name for e in db.get_experiments()}

        balancer = _Balancer([first, second])
        env = dict(os.environ, SCHEDY_TOKEN=TOKEN)
        workers = [
            subprocess.Popen(
                [sys.executable, "-c", _WORKER, balancer.url],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for _ in range(4)
        ]
        try:
            with schedy.SchedyDB(postgres_url) as db:
                experiment = db.get_experiment("replicated")
                deadline = time.monotonic() + 60
                while sum(j.status == "DONE" for j in experiment.all_jobs()) < 12:
                    assert time.monotonic() < deadline, "the run does not progress"
                    time.sleep(0.05)
                assert all(balancer.connections), balancer.connections  # spread over both
                first_process.kill()  # SIGKILL mid-run: no goodbye to anyone
                first_process.wait()
                served_before = balancer.connections[1]
                outputs = [worker.communicate(timeout=90) for worker in workers]
                assert [worker.returncode for worker in workers] == [0] * 4, outputs
                assert balancer.connections[1] > served_before  # the survivor took over
                jobs = list(experiment.all_jobs())
                assert db.get_experiment("replicated").status == schedy.Experiment.DONE
        finally:
            for worker in workers:
                if worker.poll() is None:
                    worker.kill()
            balancer.close()

    claimed = [line for out, _ in outputs for line in out.split()]
    assert len(claimed) == len(set(claimed)), "a job was handed out twice"
    by_id = {job.id: job for job in jobs}
    assert set(claimed) <= set(by_id)
    assert {job.status for job in jobs} <= {"DONE", "CRASHED", "PRUNED"}
    for job in jobs:  # lineages: every parent exists, one generation earlier
        if job.parent_id is None:
            assert job.generation == 0
        else:
            assert by_id[job.parent_id].generation == (job.generation or 0) - 1
    for member in {job.member for job in jobs}:  # never two jobs of a member at once
        spans = sorted((j.created_at, j.updated_at) for j in jobs if j.member == member)
        for (_, ended), (started, _) in itertools.pairwise(spans):
            assert started >= ended
    assert max(job.generation or 0 for job in jobs) == 7
