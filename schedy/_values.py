"""JSON values: what hyperparameters and results may hold, and their encoding.

Values are checked and converted *before* anything is written, so that an
unstorable value raises a ``TypeError`` naming its key and leaves the store
untouched. NaN and +/-inf are legal (a diverged run reports ``nan`` loss) and
survive a round trip because every backend stores the JSON text that
:func:`dumps` writes, never a database-native JSON type.
"""

from __future__ import annotations

import enum
import json
import math
from collections.abc import Mapping
from typing import Any

__all__ = ["StrEnum", "dumps", "loads", "normalize", "normalize_mapping"]


class StrEnum(str, enum.Enum):
    """An enum whose members are their string values in every respect.

    Unlike a bare ``(str, Enum)`` mix-in, ``str()``, ``format()`` and
    ``hash()`` are the string's, so a member prints as ``DONE``, and finds and
    is found by the plain string in dicts and sets.
    """

    __str__ = str.__str__
    __format__ = str.__format__  # type: ignore[assignment]
    __hash__ = str.__hash__

    def __repr__(self) -> str:
        return repr(self.value)


def _scalar_item(value: Any) -> Any:
    """Unwrap numpy scalars and 0-d arrays/tensors without importing numpy/torch."""
    item = getattr(value, "item", None)
    if item is None or not callable(item):
        return None
    shape = getattr(value, "shape", None)
    if shape is None or tuple(shape) != ():
        return None
    try:
        return item()
    except (TypeError, ValueError, RuntimeError):
        return None


def normalize(value: Any, where: str) -> Any:
    """Return ``value`` as plain JSON data (dict/list/str/int/float/bool/None).

    ``where`` names the value in errors, e.g. ``"results['loss']"``.
    Tuples become lists; numpy/torch scalars become Python scalars.
    """
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(
                    f"{where} has a non-string key {key!r} ({type(key).__name__}); "
                    "JSON objects need string keys: convert it with str()."
                )
            out[key] = normalize(item, f"{where}[{key!r}]")
        return out
    if isinstance(value, (list, tuple)):
        return [normalize(item, f"{where}[{index}]") for index, item in enumerate(value)]
    scalar = _scalar_item(value)
    if scalar is not None:
        return normalize(scalar, where)
    raise TypeError(
        f"{where} = {value!r} ({type(value).__module__}.{type(value).__qualname__}) "
        "cannot be stored: use JSON values (numbers, strings, booleans, None, lists "
        "and dicts of them), e.g. float(x) for a tensor or str(p) for a path."
    )


def normalize_mapping(values: Any, what: str) -> dict[str, Any]:
    """Normalize a ``hyperparameters``/``results`` dict, naming ``what`` in errors."""
    if values is None:
        return {}
    if not isinstance(values, Mapping):
        raise TypeError(f"{what} must be a dict of JSON values, not {type(values).__name__}.")
    result = normalize(values, what)
    assert isinstance(result, dict)
    return result


def dumps(value: Any) -> str:
    """Encode normalized data; NaN/inf are written as JSON5-style literals."""
    return json.dumps(value, allow_nan=True, separators=(",", ":"))


def canonical(value: Any) -> str:
    """One text per JSON value (keys sorted), for equality and ordering: it
    tells 1, 1.0 and true apart and makes NaN equal to itself."""
    return json.dumps(value, sort_keys=True, allow_nan=True)


def loads(text: str) -> Any:
    """Decode text written by :func:`dumps` (accepts ``NaN``/``Infinity``)."""
    return json.loads(text)


def is_number(value: Any) -> bool:
    """True for int/float but not bool (``True`` is an int in Python)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def as_score(value: Any) -> float | None:
    """Turn a result value into a rankable float; ``None`` for missing or NaN."""
    if not is_number(value):
        return None
    number = float(value)
    return None if math.isnan(number) else number
