"""Population Based Bandits (PB2, Parker-Holder et al., NeurIPS 2020, arXiv 2002.02518).

PB2 is PBT whose *explore* step is a bandit instead of a random perturbation:
when a bottom member copies a top one (exploit, unchanged from PBT), its new
numeric hyperparameters maximise a UCB acquisition over ``bounds`` of a
Gaussian process fitted to recent ``(generation, hyperparameters) -> score
improvement in one generation`` data, with a time-varying kernel

    k((t, x), (t', x')) = exp(-|x - x'|^2 / (2 l^2)) * (1 - eps) ** (|t - t'| / 2)

so old observations count less as training goes on (the objective drifts).
With few members this finds good schedules where random perturbation needs
a large population. Categorical hyperparameters are explored as PBT does.

*Batch-aware* (the paper's parallel GP-UCB): the members still running are
added to the GP that gives the acquisition its variance, with their
predicted mean as value, so the uncertainty around a point already being
tried collapses and two concurrent explores do not pick the same point.

Everything comes from the compact state, nothing new is stored: each
member's score history (``_history``: recent ``(generation, score)`` pairs)
gives its improvements, and ONE ``load_job`` per member recent enough (its
running job, else its head) gives the hyperparameters that produced them
(a continuation trains with its parent's hyperparameters, so a head that is
no exploit accounts for its two last improvements). The data is bounded
(``window`` generations, two points per member), the GP's kernel
parameters are picked from a small grid by marginal likelihood and the
acquisition is maximised over a few hundred candidates, so a claim stays
in the low milliseconds inside the store's write lock. numpy and scipy are
imported only here, when an explore happens (``pip install 'schedy[pb2]'``).
Deterministic under ``seed``: every draw comes from the decision's RNG.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Mapping
from contextlib import AbstractContextManager
from typing import Any, ClassVar

from .._records import MemberRecord
from ..pbt import ExploreStrategy, Resample, Truncate
from ..random import Choice, Distribution, IntLogUniform, IntUniform, LogUniform, Uniform
from . import _history
from ._pbt import PBTScheduler
from ._protocol import (
    SchedulingState,
    config_object,
    distributions_from_json,
    distributions_to_json,
    register,
)

__all__ = ["PB2Scheduler", "check_bounds"]

#: Kernel parameters tried (lengthscale in the unit cube, time decay per generation).
_LENGTHSCALES = (0.1, 0.2, 0.4, 0.8)
_DECAYS = (0.01, 0.1, 0.3)
#: Observation noise on standardized improvements.
_NOISE = 0.05
#: Candidates the acquisition is evaluated at: uniform in the bounds, and
#: around the best observed points.
_RANDOM_CANDIDATES = 256
_LOCAL_CANDIDATES = 128
#: Members whose data enter the GP at most (the most recent first).
_MAX_MEMBERS = 32
#: The probability a categorical hyperparameter is resampled (as Ray's PBT).
_RESAMPLE_PROBABILITY = 0.25


_BLAS: list[Any] = []  # the threadpoolctl controller, built once (None: not installed)


def _one_blas_thread() -> AbstractContextManager[Any]:
    if not _BLAS:
        try:
            from threadpoolctl import ThreadpoolController

            _BLAS.append(ThreadpoolController())
        except ImportError:  # pragma: no cover - threadpoolctl comes with scikit-learn
            _BLAS.append(None)
    controller = _BLAS[0]
    if controller is None:  # pragma: no cover
        return contextlib.nullcontext()
    limited: AbstractContextManager[Any] = controller.limit(limits=1, user_api="blas")
    return limited


def _numeric(dist: Distribution) -> bool:
    return isinstance(dist, (Uniform, LogUniform, IntUniform, IntLogUniform))


def check_bounds(bounds: Any) -> dict[str, Distribution]:
    """``bounds`` as distributions: ``(low, high)`` is ``Uniform`` (``IntUniform`` for
    ints); ``LogUniform``/``IntLogUniform`` search on a log scale; ``Choice`` is
    categorical (explored as PBT does)."""
    if not isinstance(bounds, Mapping) or not bounds:
        raise ValueError(
            "bounds must be a non-empty dict of hyperparameter name -> (low, high), e.g. "
            f"{{'lr': (1e-4, 1e-1)}}, not {bounds!r}"
        )
    checked: dict[str, Distribution] = {}
    for key, value in bounds.items():
        if not isinstance(key, str):
            raise TypeError(f"bounds keys must be hyperparameter names (str), not {key!r}")
        if isinstance(value, (tuple, list)) and len(value) == 2:
            low, high = value
            ints = all(isinstance(v, int) and not isinstance(v, bool) for v in value)
            dist: Distribution = IntUniform(low, high) if ints else Uniform(low, high)
        elif isinstance(value, Distribution) and (_numeric(value) or isinstance(value, Choice)):
            dist = value
        else:
            raise ValueError(
                f"bounds[{key!r}] = {value!r}: give (low, high), or a schedy.random Uniform, "
                "LogUniform, IntUniform, IntLogUniform or Choice"
            )
        checked[key] = dist
    return checked


class _Space:
    """The numeric bounds as the unit cube the GP works in (log scales, integers)."""

    def __init__(self, bounds: Mapping[str, Distribution]) -> None:
        self.keys = [key for key, dist in bounds.items() if _numeric(dist)]
        #: (low, high) in the GP's scale (logs for a log scale), log?, integer?
        self.ranges: list[tuple[float, float, bool, bool]] = []
        #: The bounds as given, which a decoded value never leaves.
        self.limits: list[tuple[float, float]] = []
        for key in self.keys:
            dist: Any = bounds[key]
            log = isinstance(dist, (LogUniform, IntLogUniform))
            integer = isinstance(dist, (IntUniform, IntLogUniform))
            low, high = float(dist.low), float(dist.high)
            self.limits.append((low, high))
            self.ranges.append(
                (math.log(low), math.log(high), log, integer) if log else (low, high, log, integer)
            )

    def encode(self, hyperparameters: Mapping[str, Any]) -> list[float] | None:
        point = []
        for key, (low, high, log, _) in zip(self.keys, self.ranges):
            value = hyperparameters.get(key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                return None
            if log:
                if value <= 0:
                    return None
                value = math.log(value)
            span = high - low
            point.append(min(1.0, max(0.0, (value - low) / span)) if span > 0 else 0.5)
        return point

    def decode(self, point: Any) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for key, unit, (low, high, log, integer), (lo, hi) in zip(
            self.keys, point, self.ranges, self.limits
        ):
            value = low + min(1.0, max(0.0, float(unit))) * (high - low)
            if log:
                value = math.exp(value)
            value = min(hi, max(lo, value))
            values[key] = round(value) if integer else value
        return values


@register
class PB2Scheduler(PBTScheduler):
    """PB2's configuration (PBT's, with ``bounds``) and its GP-bandit explore."""

    kind = "pb2"
    arguments: ClassVar[tuple[str, ...]] = (
        "objective",
        "result_name",
        "bounds",
        "exploit",
        "explore",
        "initial_distributions",
        "population_size",
        "max_generations",
        "seed",
        "max_member_crashes",
        "window",
        "synchronous",
    )

    def __init__(
        self,
        objective: str,
        result_name: str,
        bounds: Mapping[str, Any],
        exploit: Truncate | None = None,
        explore: Mapping[str, ExploreStrategy] | None = None,
        initial_distributions: Mapping[str, Distribution] | None = None,
        population_size: int | None = None,
        max_generations: int | None = None,
        seed: int | None = None,
        max_member_crashes: int = 3,
        window: int = 8,
        synchronous: bool = False,
    ) -> None:
        self.bounds = check_bounds(bounds)
        explore = dict(explore or {})
        for key, dist in self.bounds.items():
            if key in explore and _numeric(dist):
                raise ValueError(
                    f"{key!r} is in bounds: PB2 chooses it, so it takes no explore strategy "
                    "(explore is for hyperparameters PB2 does not bound, e.g. categorical)"
                )
            if isinstance(dist, Choice):
                explore.setdefault(key, Resample(dist, _RESAMPLE_PROBABILITY))
        if initial_distributions is None:
            initial_distributions = dict(self.bounds)
        else:
            initial_distributions = dict(initial_distributions)
            missing = sorted(set(self.bounds) - set(initial_distributions))
            if missing:
                raise ValueError(
                    f"initial_distributions must define every bounded hyperparameter; "
                    f"missing {missing}"
                )
        if not isinstance(window, int) or isinstance(window, bool) or window < 1:
            raise ValueError(f"window must be an int >= 1 (generations of data), not {window!r}")
        self.window = window
        super().__init__(
            objective,
            result_name,
            Truncate() if exploit is None else exploit,
            explore=explore,
            initial_distributions=initial_distributions,
            population_size=population_size,
            max_generations=max_generations,
            seed=seed,
            max_member_crashes=max_member_crashes,
            synchronous=synchronous,
        )
        self._space = _Space(self.bounds)
        # The GP fits the recent points of every member: PB2 reads them all.
        self.member_sample = None

    # -- configuration ---------------------------------------------------------
    def to_config(self) -> dict[str, Any]:
        return {
            **super().to_config(),
            "bounds": distributions_to_json(self.bounds),
            "window": self.window,
        }

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> PB2Scheduler:
        config = config_object(config, cls.kind)
        if "bounds" not in config:
            raise ValueError("a PB2 experiment's configuration needs 'bounds'")
        pbt = PBTScheduler.from_config(config)
        return cls(
            pbt.objective,
            pbt.result_name,
            distributions_from_json(config["bounds"], "bounds"),
            exploit=pbt.exploit,
            explore=pbt.explore,
            initial_distributions=pbt.initial_distributions,
            population_size=pbt.population_size,
            max_generations=pbt.max_generations,
            seed=pbt.seed,
            max_member_crashes=pbt.max_member_crashes,
            window=config.get("window", 8),
            synchronous=pbt.synchronous,
        )

    # -- explore -----------------------------------------------------------------
    def explored(
        self,
        hyperparameters: Mapping[str, Any],
        state: SchedulingState,
        member: MemberRecord,
        generation: int,
    ) -> dict[str, Any]:
        """PBT's explore for categorical hyperparameters, then the GP-UCB choice of the
        numeric ones at ``generation``."""
        explored = super().explored(hyperparameters, state, member, generation)
        if self._space.keys:
            data, running = self.observations(state, member, generation)
            explored.update(self.acquire(data, running, generation, state))
        return explored

    def observations(
        self, state: SchedulingState, member: MemberRecord, generation: int
    ) -> tuple[list[tuple[float, list[float], float]], list[tuple[float, list[float]]]]:
        """``(data, running)``: recent ``(t, x, improvement)`` points and the points
        other members are training now ``(t, x)``, from one job read per member."""
        oldest = generation - self.window
        recent = [
            m
            for m in state.members
            if (m.head_generation is not None and m.head_generation >= oldest)
            or (m.busy_id is not None and m.index != member.index)
        ]
        recent.sort(key=lambda m: (-(m.head_generation or -1), m.index))
        data: list[tuple[float, list[float], float]] = []
        running: list[tuple[float, list[float]]] = []
        for m in recent[:_MAX_MEMBERS]:
            busy = m.busy_id is not None and m.index != member.index
            job = state.load_job((m.busy_id if busy else m.head_id) or "")
            point = self._space.encode(job.hyperparameters)
            if point is None:
                continue
            if busy:
                running.append((float(job.generation or 0), point))
                # A continuation of the head trains with the head's hyperparameters.
                if job.parent_id != m.head_id or job.exploited_from is not None:
                    continue
                own_points = 1
            else:
                own_points = 2 if job.exploited_from is None else 1
            if m.head_generation is None or not m.history:
                continue
            scores = _history._parse(m.history)
            for back in range(own_points):
                g = m.head_generation - back
                now, before = scores.get(g), scores.get(g - 1)
                if g >= oldest and now is not None and before is not None:
                    data.append((float(g), point, now - before))
        return data, running

    def acquire(
        self,
        data: list[tuple[float, list[float], float]],
        running: list[tuple[float, list[float]]],
        generation: int,
        state: SchedulingState,
    ) -> dict[str, Any]:
        """The numeric hyperparameters maximising UCB at time ``generation``.

        The matrices are tiny (a few dozen rows): a multithreaded BLAS only
        adds synchronisation, which on a loaded machine made the decision 4-5
        times slower, inside the write lock; so BLAS runs on one thread here
        (threadpoolctl, which scikit-learn brings, when it is installed)."""
        with _one_blas_thread():
            return self._acquire(data, running, generation, state)

    def _acquire(
        self,
        data: list[tuple[float, list[float], float]],
        running: list[tuple[float, list[float]]],
        generation: int,
        state: SchedulingState,
    ) -> dict[str, Any]:
        try:
            import numpy as np
            from scipy.linalg import cho_solve, cholesky, solve_triangular
        except ImportError:  # pragma: no cover - the pb2 extra
            raise ImportError("PB2 needs numpy and scipy: pip install 'schedy[pb2]'") from None
        dims = len(self._space.keys)
        seed = state.rng.getrandbits(63)
        rng = np.random.default_rng(seed)
        if len(data) < 2:  # nothing to model yet: a uniform draw in the bounds
            return self._space.decode(rng.random(dims))
        times = np.array([d[0] for d in data])
        points = np.array([d[1] for d in data])
        values = np.array([d[2] for d in data])
        spread = values.std()
        y = (values - values.mean()) / spread if spread > 1e-12 else np.zeros_like(values)

        def distances(ta: Any, xa: Any, tb: Any, xb: Any) -> tuple[Any, Any]:
            """Squared distances in the cube and time gaps: the kernel's inputs, computed
            once and reused for every kernel parameter tried."""
            gap = xa[:, None, :] - xb[None, :, :]
            return np.einsum("ijk,ijk->ij", gap, gap), np.abs(ta[:, None] - tb[None, :]) / 2

        def kernel(inputs: tuple[Any, Any], scale: float, decay: float) -> Any:
            return np.exp(-inputs[0] / (2 * scale**2) + inputs[1] * math.log(1 - decay))

        n = len(y)
        own = distances(times, points, times, points)
        noise = _NOISE * np.eye(n)
        best: tuple[float, float, float, Any] | None = None
        for scale in _LENGTHSCALES:
            for decay in _DECAYS:
                try:
                    factor = cholesky(kernel(own, scale, decay) + noise, lower=True)
                except np.linalg.LinAlgError:  # pragma: no cover - the noise prevents it
                    continue
                alpha = cho_solve((factor, True), y)
                evidence = -0.5 * y @ alpha - np.log(np.diag(factor)).sum()
                if best is None or evidence > best[0]:
                    best = (float(evidence), scale, decay, (factor, alpha))
        if best is None:  # pragma: no cover - the noise keeps the matrix positive definite
            return self._space.decode(rng.random(dims))
        _, scale, decay, (factor, alpha) = best
        # Candidates: uniform in the cube, and around the best observed points.
        top = points[np.argsort(-y)[:4]]
        local = top[rng.integers(0, len(top), _LOCAL_CANDIDATES)] + rng.normal(
            0.0, 0.1, (_LOCAL_CANDIDATES, dims)
        )
        candidates = np.clip(np.vstack([rng.random((_RANDOM_CANDIDATES, dims)), local]), 0, 1)
        at = np.full(len(candidates), float(generation))
        cross = kernel(distances(at, candidates, times, points), scale, decay)
        mean = cross @ alpha
        # The variance comes from the data plus the running members' points
        # (their value would not change the variance, only the mean): PB2's
        # batch rule, so a point being tried now is not chosen again.
        if running:
            times = np.concatenate([times, np.array([r[0] for r in running])])
            points = np.vstack([points, np.array([r[1] for r in running])])
            gram = kernel(distances(times, points, times, points), scale, decay)
            factor = cholesky(gram + _NOISE * np.eye(len(times)), lower=True)
            cross = kernel(distances(at, candidates, times, points), scale, decay)
        v = solve_triangular(factor, cross.T, lower=True)
        variance = np.clip(1.0 - np.einsum("ij,ij->j", v, v), 1e-12, None)
        beta = max(0.2 * math.log(0.4 * n**2 + 1.0), 0.5)  # GP-UCB's log growth, as in PB2
        ucb = mean + math.sqrt(beta) * np.sqrt(variance)
        return self._space.decode(candidates[int(np.argmax(ucb))])
