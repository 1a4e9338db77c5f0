"""The package's layering, read from its source: every import counts, at module
level, under ``TYPE_CHECKING`` or inside a function (see DESIGN.md §4)."""

from __future__ import annotations

import ast
import pathlib

import pytest

import schedy

ROOT = pathlib.Path(schedy.__file__).parent


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports() -> dict[str, set[str]]:
    """Module -> the schedy modules it imports (a name imported from a package
    counts as its submodule when there is one; a name from the root package,
    such as ``__version__``, counts as the root, whose ``__init__`` imports the
    public API: a low layer importing it would close a cycle)."""
    files = {_module_name(path): path for path in ROOT.rglob("*.py")}
    graph: dict[str, set[str]] = {name: set() for name in files}
    for name, path in files.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module or ""
                targets = [
                    f"{module}.{alias.name}" if f"{module}.{alias.name}" in files else module
                    for alias in node.names
                ]
            for target in targets:
                while target and target not in files:
                    target = target.rpartition(".")[0]
                if target and target != name:
                    graph[name].add(target)
    return graph


GRAPH = _imports()


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_graph_is_read() -> None:
    assert "schedy" in GRAPH["schedy.cli._main"]  # `from .. import __version__`
    assert "schedy.storage._sql._storage" in GRAPH
    assert "schedy._scheduling._pbt" in GRAPH["schedy.storage._sql._storage"] or any(
        target.startswith("schedy._scheduling") for target in GRAPH["schedy.storage._sql._storage"]
    )


def test_a_cycle_would_be_found() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle() -> None:
    assert _cycles(GRAPH) == []


#: Layer -> module prefixes it must never import (each layer only imports the ones below).
FORBIDDEN = {
    "schedy._values": ["schedy."],
    "schedy.errors": ["schedy."],
    "schedy.random": ["schedy._records", "schedy._scheduling", "schedy.storage", "schedy.pbt"],
    "schedy.pbt": ["schedy._records", "schedy._scheduling", "schedy.storage"],
    "schedy._records": ["schedy.random", "schedy.pbt", "schedy._scheduling", "schedy.storage"],
    "schedy._scheduling": ["schedy.storage", "schedy._wire"],
    "schedy.storage": ["schedy.server", "schedy.cli", "schedy.integrations"],
    "schedy._wire": ["schedy.storage", "schedy._scheduling", "schedy.server"],
    "schedy.integrations": ["schedy.storage", "schedy.cli", "schedy.server"],
}
#: The user-facing objects: nothing below them may import them.
DOMAIN = ["schedy.experiments", "schedy.jobs", "schedy.db", "schedy.cli", "schedy.server"]
BELOW_DOMAIN = [
    "schedy._values",
    "schedy.errors",
    "schedy.random",
    "schedy.pbt",
    "schedy._records",
    "schedy._scheduling",
    "schedy.storage",
    "schedy._wire",
]


def _in(module: str, prefix: str) -> bool:
    return module == prefix.rstrip(".") or module.startswith(prefix.rstrip(".") + ".")


@pytest.mark.parametrize("layer", sorted(set(FORBIDDEN) | set(BELOW_DOMAIN)))
def test_each_layer_imports_only_what_is_below_it(layer: str) -> None:
    forbidden = FORBIDDEN.get(layer, []) + (DOMAIN if layer in BELOW_DOMAIN else [])
    wrong = sorted(
        f"{module} -> {target}"
        for module, targets in GRAPH.items()
        if _in(module, layer)
        for target in targets
        if any(_in(target, prefix) for prefix in forbidden) and not _in(target, layer)
    )
    assert wrong == []


def test_a_new_kind_is_one_scheduler_subclass(tmp_path: pathlib.Path) -> None:
    # What the next kinds (PB2, successive halving, replay) need: a registered
    # Scheduler; the storage runs it unchanged, members and all.
    from collections.abc import Mapping
    from typing import Any

    from schedy._records import ExperimentRecord
    from schedy._scheduling import CreateJob, Decision, Scheduler, SchedulingState, register
    from schedy._scheduling._protocol import _KINDS

    @register
    class Ladder(Scheduler):
        """Member i trains with lr = 10**-i, continuing its own head."""

        kind = "test-ladder"

        @classmethod
        def from_config(cls, config: Mapping[str, Any]) -> Ladder:
            return cls()

        def to_config(self) -> dict[str, Any]:
            return {}

        def decide(self, state: SchedulingState) -> Decision:
            if len(state.members) < 2:
                index = len(state.members)
                return CreateJob({"lr": 10.0**-index}, member=index, generation=0)
            member = min((m for m in state.members if m.ready), key=lambda m: m.ready_since)
            head = state.load_job(member.head_id or "")
            return CreateJob(
                head.hyperparameters,
                head.results,
                member=member.index,
                generation=(member.head_generation or 0) + 1,
                parent_id=head.id,
            )

    try:
        db = schedy.SchedyDB(f"sqlite:///{tmp_path}/kinds.db")
        db._storage.create_experiment(ExperimentRecord("ladder", "test-ladder", "RUNNING", {}))
        experiment = db.get_experiment("ladder")
        assert type(experiment) is schedy.Experiment  # no public class needed to run it
        for step in range(6):
            with experiment.next_job() as job:
                job.results["step"] = step
        lineage = [(job.member, job.generation) for job in experiment.all_jobs()]
        assert lineage == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
        assert [member.head_generation for member in experiment.population()] == [2, 2]
        db.close()
    finally:
        del _KINDS["test-ladder"]
