"""Schemathesis against ``schedy server``: the OpenAPI document is the contract.

Schemathesis reads the server's own OpenAPI document and generates requests
from it -- valid ones, and ones that break a rule on purpose -- then runs
every check it has on each answer: no 5xx, the status documented, the body
matching the documented model, invalid data rejected and valid data
accepted, the bearer scheme enforced. A server over SQLite and one over
PostgreSQL (skipped, saying why, when none answers) each holding a PBT
experiment, a manual one and a few jobs, so that generated names sometimes
hit something (the documented examples name them). Each keeps artifacts in a
folder of its own, as ``schedy server`` does by default, a job of each
experiment holding one: uploads (a streamed body), downloads (with ``Range``),
HEAD, listing and deletion are fuzzed like the rest. Examples are bounded and
derandomized, so a run takes seconds and fails the same way twice.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("fastapi", reason="the server needs: pip install 'schedy[server]'")
pytest.importorskip(
    "schemathesis", reason="the API fuzz test needs schemathesis: pip install -e '.[dev]'"
)

import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import CHECKS, load_all_checks
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from test_server_hardening import serving

import schedy
from schedy import _wire
from schedy.server import create_app
from schedy.storage._sql import SQLStorage

TOKEN = "fuzz-token-0123456789"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
#: Examples per operation and generation mode (25 operations, artifacts
#: included, two modes, two backends: 574 requests a backend, 423 before the
#: artifact routes; the file took 47 s instead of 37 s on a loaded 2-core
#: machine); $SCHEDY_FUZZ_EXAMPLES=100 for a deeper run by hand (3,804 requests
#: a backend, 0 failures, ~4 min there).
EXAMPLES = int(os.environ.get("SCHEDY_FUZZ_EXAMPLES", "15"))
#: Requests a JSON Schema cannot fully judge: an experiment's configuration
#: and a job's hyperparameters are checked by the experiment's scheduler (a
#: PBT job's hyperparameters must fit its distributions), and a job's status
#: change by the job's state (a finished PBT job stays finished), so a request
#: valid by the schema may still be refused -- with a 400 saying why, never a 5xx.
#: So may an artifact upload: its size and SHA-256 must be its body's.
JUDGED_BY_THE_SCHEDULER = [
    ("POST", "/api/v1/experiments"),
    ("PUT", "/api/v1/experiment"),
    ("POST", "/api/v1/jobs"),
    ("PATCH", "/api/v1/job"),
    ("PUT", "/api/v1/artifact"),
]
ACCEPTED = ["2xx", "400", "401", "403", "404", "409"]
#: The other answers no schema foresees, by operation and check: a download's
#: Range may start past the artifact's end (416: its size decides), and an
#: upload declaring more than the server's limit (the documented maximum) is
#: refused as too large (413), as its body would be.
ALSO: dict[tuple[str, str], dict[str, list[str]]] = {
    ("GET", "/api/v1/artifact"): {"positive_data_acceptance": ["2xx", "401", "403", "404", "416"]},
    ("PUT", "/api/v1/artifact"): {"negative_data_rejection": ["400", "401", "403", "404", "413"]},
}
#: The experiments aimed at (besides generated names, which mostly name nothing: a 404).
NAMES = ("pbt", "manual")
#: The artifact each aimed-at job holds (uploaded again before each operation:
#: the fuzzer may have deleted or replaced it).
ARTIFACT = "model.pt"
CONTENT = b"a checkpoint's bytes"


@dataclass
class Fuzzed:
    """A server being fuzzed: schemathesis's reading of its document, its database."""

    schema: Any
    database: str
    url: str
    backend: str


def _pbt(name: str) -> schedy.PopulationBasedTraining:
    return schedy.PopulationBasedTraining(
        name,
        schedy.pbt.MAXIMIZE,
        "acc",
        exploit=schedy.pbt.Truncate(),
        explore={"lr": schedy.pbt.Perturb()},
        initial_distributions={"lr": schedy.random.LogUniform(1e-4, 1e-1)},
        population_size=2,
        seed=0,
    )


def _targets(fuzzed: Fuzzed) -> dict[str, list[str]]:
    """Make sure the experiments the fuzzer aims at exist, each with jobs, the first
    holding artifact ``ARTIFACT`` (a test before may have deleted them); their job
    ids by experiment."""
    with schedy.SchedyDB(fuzzed.database) as db:
        names = {experiment.name for experiment in db.get_experiments()}
        if "pbt" not in names:
            pbt = _pbt("pbt")
            db.add_experiment(pbt)
            with pbt.next_job() as job:
                job.results["acc"] = 0.5
        if "manual" not in names:
            db.add_experiment(schedy.ManualSearch("manual"))
        found = {}
        for name in NAMES:
            experiment = db.get_experiment(name)
            if not any(True for _ in experiment.all_jobs()):
                experiment.add_job({"lr": 0.01})
            found[name] = [job.id for job in experiment.all_jobs()]
    for name, jobs in found.items():
        stored = requests.put(
            f"{fuzzed.url}{_wire.API_PREFIX}/artifact",
            params={"experiment": name, "job": jobs[0], "file": ARTIFACT, **_declared(CONTENT)},
            data=CONTENT,
            headers=AUTH,
            timeout=30,
        )
        assert stored.status_code == 201, stored.text
    return found


def _declared(content: bytes) -> dict[str, Any]:
    """What an upload of ``content`` declares."""
    return {"sha256": hashlib.sha256(content).hexdigest(), "size": len(content)}


def _checks(method: str, path: str) -> dict[str, Any]:
    """The expected statuses of ``method path``'s checks, where they are not schemathesis's."""
    found = {
        check: {"expected-statuses": statuses}
        for check, statuses in ALSO.get((method, path), {}).items()
    }
    if (method, path) in JUDGED_BY_THE_SCHEDULER:
        found["positive_data_acceptance"] = {"expected-statuses": ACCEPTED}
    return found


load_all_checks()
#: Every check schemathesis has (not only the default set).
ALL_CHECKS = list(CHECKS.get_all())

#: Every operation of the document, read once at collection (the document is
#: static: it does not depend on the store), with each generation mode.
#: Negative cases break a parameter's or the body's rule: only where there is one.
with tempfile.TemporaryDirectory() as _folder:  # artifacts on, as `schedy server` has them
    DOCUMENT = create_app("sqlite://", TOKEN, artifacts=_folder).openapi()
CASES = [
    (method.upper(), path, mode)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    for mode in GenerationMode
    if mode is GenerationMode.POSITIVE or "parameters" in operation or "requestBody" in operation
]
#: The operations that take a body.
BODIES = {
    (method.upper(), path)
    for path, item in DOCUMENT["paths"].items()
    for method, operation in item.items()
    if "requestBody" in operation
}


@pytest.fixture(params=["sqlite", "postgresql"])
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Fuzzed]:
    """A seeded server of each backend, and schemathesis's reading of its document."""
    database = (
        f"sqlite:///{tmp_path}/fuzz.db"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres_url")  # or a skip saying why
    )
    storage = SQLStorage(database)
    app = create_app(storage, TOKEN, artifacts=str(tmp_path / "artifacts"))
    try:
        with serving(app) as url:
            config = SchemathesisConfig.from_dict(
                {
                    "base-url": url,
                    "headers": AUTH,
                    "generation": {"max-examples": EXAMPLES},
                    "operations": [
                        {  # by name: include-method and include-path match either
                            "include-name": f"{method} {path}",
                            "checks": _checks(method, path),
                        }
                        for method, path in sorted({*JUDGED_BY_THE_SCHEDULER, *ALSO})
                    ],
                }
            )
            yield Fuzzed(
                schemathesis.openapi.from_dict(app.openapi(), config=config),
                database,
                url,
                request.param,
            )
    finally:
        storage.close()


def _strategy(fuzzed: Fuzzed, method: str, path: str, mode: GenerationMode) -> Any:
    """Generated requests, half of them aimed at a seeded experiment (and job):
    names drawn from the schema alone would almost only meet 404s."""
    operation = fuzzed.schema[path][method]
    generated = operation.as_strategy(generation_mode=mode)
    names = {parameter.name for parameter in operation.query}
    headers = {parameter.name for parameter in operation.headers}
    if "name" not in names and "experiment" not in names:
        return generated
    if mode is GenerationMode.NEGATIVE and (method, path) not in BODIES:
        return generated  # the name fixed, nothing would be left to break
    aimed = []
    for experiment, jobs in _targets(fuzzed).items():
        query: dict[str, Any] = (
            {"name": experiment} if "name" in names else {"experiment": experiment}
        )
        if "id" in names:
            query["id"] = jobs[0]
        if "job" in names:
            query["job"] = jobs[0]
        if "file" in names:
            query["file"] = ARTIFACT
        aimed.append(operation.as_strategy(generation_mode=mode, query=query))
        if "Range" in headers and mode is GenerationMode.POSITIVE:  # spans in and past it
            aimed.append(
                st.from_regex(r"\Abytes=[0-9]{0,2}-[0-9]{0,2}\Z").flatmap(
                    lambda span, query=query: operation.as_strategy(
                        generation_mode=mode, query=query, headers={"Range": span}
                    )
                )
            )
        if "sha256" in names and mode is GenerationMode.POSITIVE:  # an upload that fits
            aimed.append(
                st.binary(max_size=256).flatmap(
                    lambda content, query=query: operation.as_strategy(
                        generation_mode=mode,
                        query={**query, **_declared(content)},
                        body=content,
                        media_type="application/octet-stream",
                    )
                )
            )
    return st.one_of(generated, *aimed)


def test_only_the_judged_operations_may_refuse_valid_data(api: Fuzzed) -> None:
    for method, path, _ in CASES:
        operation = api.schema[path][method]
        allowed = api.schema.config.checks_config_for(operation=operation, phase=None)
        statuses = allowed.positive_data_acceptance.expected_statuses
        assert ("400" in statuses) == ((method, path) in JUDGED_BY_THE_SCHEDULER), (method, path)


def test_every_answer_is_documented_and_no_request_gets_a_5xx(api: Fuzzed) -> None:
    """Every operation in both modes against one server; every failure is
    collected (schemathesis's report: the check, the answer, a curl line)."""
    seen: Counter[int] = Counter()
    by_operation: dict[str, Counter[int]] = {}
    failures: list[str] = []
    for method, path, mode in CASES:
        statuses = by_operation.setdefault(f"{method} {path}", Counter())

        @given(case=_strategy(api, method, path, mode))
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            derandomize=True,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def check(case: Any) -> None:
            # The token given here too, so that schemathesis knows it for the real one
            # (not generated) and probes without it and with a wrong one: from the
            # configuration alone it took the token of an operation with header
            # parameters (the download's Range) for a generated one, wrongly refused.
            answer = case.call_and_validate(headers=AUTH, checks=ALL_CHECKS)
            seen[answer.status_code] += 1
            statuses[answer.status_code] += 1  # noqa: B023 - called before the loop moves on

        try:
            check()
        # A FailureGroup is a BaseExceptionGroup, no Exception: caught by name, or the
        # first failing operation would end the run and hide the others.
        except (FailureGroup, Exception) as error:  # schemathesis's failures, hypothesis's errors
            failures.append(f"{method} {path} ({mode.value}):\n{error}")
    print(
        f"\nschemathesis over {api.backend}: {sum(seen.values())} requests, "
        f"statuses {dict(sorted(seen.items()))}"
    )
    for operation, statuses in by_operation.items():
        if "artifact" in operation:
            print(f"  {operation}: {dict(sorted(statuses.items()))}")
    assert not failures, "\n\n".join(failures)
    assert seen and max(seen) < 500
    # The artifact routes were reached, not only refused: the aimed requests hit
    # the seeded artifacts (a fuzzer meeting 400s and 404s alone tests little).
    for operation, statuses in by_operation.items():
        if "artifact" in operation:
            assert any(200 <= status < 300 for status in statuses), (operation, statuses)
