"""A member's recent scores by generation, so PBT compares members fairly.

With fewer workers than members, members run at different generations: the
one that waited longest is also the one behind, and its latest score would
be compared with scores of models trained one or more jobs longer. Keeping
each member's last few ``(generation, score)`` pairs along its lineage lets
the ranking judge members ahead at the generation of the member being
decided. The text form is stored in the population summary and parsed only
for members that are ahead, keeping a claim cheap.
"""

from __future__ import annotations

import functools
import json

#: Generations of scores kept per member (a member rarely runs further ahead).
KEEP = 8


def extend(text: str | None, generation: int | None, score: float | None) -> str:
    """Append a finished job's score to a member's history (the last KEEP kept)."""
    pairs = json.loads(text) if text else []
    pairs = [pair for pair in pairs if generation is None or pair[0] < generation]
    pairs.append([generation, score])
    return json.dumps(pairs[-KEEP:], separators=(",", ":"))


def score_at(text: str | None, generation: int) -> tuple[bool, float | None]:
    """The member's score at the latest generation <= ``generation`` (found?, score)."""
    if not text:
        return False, None
    scores = _parse(text)
    if generation in scores:  # the usual case: lineages have every generation
        return True, scores[generation]
    earlier = [g for g in scores if g <= generation]
    return (True, scores[max(earlier)]) if earlier else (False, None)


@functools.lru_cache(maxsize=4096)
def _parse(text: str) -> dict[int, float | None]:
    """Parsed once per distinct history: a member's text only changes when it
    finishes a job, while every claim reads the histories of members ahead.
    (Callers must not mutate the cached dict.)"""
    return {generation: score for generation, score in json.loads(text) if generation is not None}
