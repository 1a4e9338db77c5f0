"""The command line's small language for values: JSON words, name/value pairs, triples.

Hyperparameters, results, distributions and explore strategies are all typed
as words on a command line. One reading of them here means every command
rejects the same mistakes with the same message (an odd number of words, a
name given twice, a string without its JSON quotes, an unknown distribution)
before anything touches the store.
"""

from __future__ import annotations

import json
import shlex
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from ..pbt import _EXPLORE_STRATEGIES, ExploreStrategy
from ..random import _DISTRIBUTION_TYPES, Distribution
from ._base import UsageError

__all__ = ["DISTRIBUTION_NAMES", "STRATEGY_NAMES", "distributions", "pairs", "strategies"]

_T = TypeVar("_T")

_DISTRIBUTIONS: dict[str, Callable[[Any], Distribution]] = {
    name: cls._from_args for name, cls in _DISTRIBUTION_TYPES.items()
}
_STRATEGIES: dict[str, Callable[[Any], ExploreStrategy]] = {
    name: cls._from_params for name, cls in _EXPLORE_STRATEGIES.items()
}
#: The names a triple's DIST / STRATEGY word may take, in their registry's order (for help).
DISTRIBUTION_NAMES = tuple(_DISTRIBUTIONS)
STRATEGY_NAMES = tuple(_STRATEGIES)


def _groups(words: Sequence[str], size: int, what: str, shape: str) -> list[list[str]]:
    """Split ``words`` into groups of ``size`` whose first words (names) are unique."""
    if len(words) % size:
        raise UsageError(
            f"{what} must be given as {shape} ({size} words each), got {len(words)} "
            f"word(s): {shlex.join(words)}"
        )
    groups = [list(words[start : start + size]) for start in range(0, len(words), size)]
    seen: set[str] = set()
    for name, *_ in groups:
        if name in seen:
            raise UsageError(f"{what}: {name!r} is given twice")
        seen.add(name)
    return groups


def _json_arg(text: str, what: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as error:
        hint = f"; to pass a string, quote it: '\"{text}\"'" if text[:1].isalpha() else ""
        raise UsageError(f"invalid JSON for {what}: {text!r} ({error}){hint}") from None


def pairs(words: Sequence[str] | None, what: str) -> dict[str, Any]:
    """``x 1 y '[2, 3]'`` as ``{"x": 1, "y": [2, 3]}``; ``what`` names a value in errors."""
    return {
        name: _json_arg(value, f"{what} {name!r}")
        for name, value in _groups(words or [], 2, f"{what}s", "name/value pairs")
    }


def _build_named(
    registry: Mapping[str, Callable[[Any], _T]], kind: str, params: str, what: str, name: str
) -> _T:
    """Build the ``kind`` (a distribution or a strategy) for hyperparameter ``name``."""
    factory = registry.get(kind)
    if factory is None:
        known = ", ".join(sorted(registry))
        raise UsageError(f"unknown {what} {kind!r} for {name!r}; choose from: {known}")
    args = _json_arg(params, f"{name!r} ({kind})")
    try:
        return factory(args)
    except (TypeError, ValueError) as error:
        raise UsageError(f"invalid {what} for {name!r}: {error}") from None


def distributions(words: Sequence[str]) -> dict[str, Distribution]:
    """``x normal '{"mean": 0, "std": 5}' …`` as ``{"x": Normal(0, 5), …}``."""
    return {
        name: _build_named(_DISTRIBUTIONS, kind, params, "distribution", name)
        for name, kind, params in _groups(words, 3, "hyperparameters", "HP DIST PARAMS triples")
    }


def strategies(words: Sequence[str]) -> dict[str, ExploreStrategy]:
    """``lr perturb '{"minFactor": 0.8}' …`` (--explore's words) as ``{"lr": Perturb(0.8), …}``."""
    return {
        name: _build_named(_STRATEGIES, kind, params, "explore strategy", name)
        for name, kind, params in _groups(words, 3, "--explore", "HP STRATEGY PARAMS triples")
    }
