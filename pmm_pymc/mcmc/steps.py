"""PyMC step methods: the Poisson Midpoint Method and Langevin Monte Carlo.

Both steps are thin PyMC adapters: :meth:`_LangevinStep.astep` runs one
:func:`pmm_pymc.mcmc.kernel.transition` of a single row (PMM with ``K`` sub-steps, or LMC
with ``K = 1``), feeds its info to the :class:`pmm_pymc.mcmc.warmup.Warmup` while tuning,
and turns the info into PyMC sampler stats. Neither holds a copy of the update, the
transition or the warm-up: :func:`pmm_pymc.mcmc.chains.sample_chains` runs the same ones
over many rows.

Conventions (``docs/method.md`` has the derivation)::

    drift  b(x) = M^{-1} grad logp(x)
    LMC    x'   = x + eta b(x) + sqrt(2 eta) M^{-1/2} xi

Random numbers, per transition and in this order (``blocks_per_draw`` transitions per
draw, one after the other), from the step's
:class:`numpy.random.Generator` (:func:`pmm_pymc.mcmc.kernel.draw` with ``B = 1``): for
``K > 1``, ``U = rng.random((K - 1, 1))`` with midpoint ``i`` firing when ``U[i - 1] < 1/K``;
``Z = rng.standard_normal((K, 1, d))`` (the sub-step noise, scaled to ``M^{-1/2} Z``); while
tuning with something adapting, one uniform for the warm-up's Metropolis adjustment.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, ClassVar, Literal

import numpy as np
from pymc.blocking import PointType, RaveledVars, StatsType
from pymc.exceptions import SamplingError
from pymc.model import Model, modelcontext
from pymc.stats.convergence import SamplerWarning, WarningType
from pymc.step_methods.arraystep import GradientSharedStep
from pymc.step_methods.compound import Competence, StepMethodState
from pymc.step_methods.state import dataclass_state
from pymc.util import RandomGenerator, get_value_vars_from_user_vars
from pymc.vartypes import discrete_types

from pmm_pymc._validate import check_int
from pmm_pymc.mcmc.blocks import advance
from pmm_pymc.mcmc.kernel import (
    OBABO_STABILITY_LIMIT,
    LangevinInfo,
    LangevinState,
    pmm_stability_limit,
)
from pmm_pymc.mcmc.warmup import (
    DENSE_MAX_DIM,
    Warmup,
    WarmupState,
    check_accuracy,
    check_kinetic_options,
    check_precondition,
    check_step_options,
)

__all__ = [
    "DENSE_MAX_DIM",
    "LangevinMC",
    "LangevinStepState",
    "PoissonMidpoint",
    "UnderdampedLangevin",
    "UnderdampedPoissonMidpoint",
]

_DEFAULT_TUNE = 1000  # pm.sample's default, for the windows until setup_chain gives the real one


@dataclass_state
class LangevinStepState(StepMethodState):
    """The per-chain state of a Langevin step, as PyMC saves and restores it."""

    tune: bool
    iter_count: int
    warmup: WarmupState
    bulk_reported: bool


class _LangevinStep(GradientSharedStep):
    """Shared machinery of :class:`LangevinMC` and :class:`PoissonMidpoint`.

    Subclasses set ``name`` and ``_K``; the transition is
    :func:`pmm_pymc.mcmc.kernel.transition` and the warm-up :class:`pmm_pymc.mcmc.warmup.Warmup`.
    """

    name: ClassVar[str]
    default_blocked = True
    _state_class = LangevinStepState
    _K: int = 1
    _reports_midpoints: ClassVar[bool] = False
    _kinetic: ClassVar[bool] = False
    _kinetic_options: dict[str, Any] = {}  # noqa: RUF012 - set per instance by kinetic steps

    stats_dtypes_shapes: ClassVar[dict[str, tuple[Any, Any]]] = {
        "step_size": (np.float64, []),
        "n_steps": (np.int64, []),
        "diverging": (bool, []),
        "energy_error": (np.float64, []),
        "model_logp": (np.float64, []),
        "tune": (bool, []),
        "left_bulk": (bool, []),
        "warning": (SamplerWarning, None),
    }

    def __init__(
        self,
        vars: Sequence[Any] | None = None,
        *,
        step_size: float | None = None,
        adapt_step_size: bool = True,
        target_accept: float | None = None,
        accuracy: float | None = None,
        max_energy_error: float = 1000.0,
        precondition: Literal["auto", "diag", "dense"] | None = "auto",
        blocks_per_draw: int = 1,
        model: Model | None = None,
        blocked: bool = True,
        rng: RandomGenerator = None,
        initial_point: PointType | None = None,
        compile_kwargs: dict | None = None,
        **pytensor_kwargs: Any,
    ) -> None:
        self.accuracy = check_accuracy(accuracy, target_accept, adapt_step_size)
        step_size, target_accept = check_step_options(
            step_size, adapt_step_size, target_accept, max_energy_error, self.name
        )
        check_precondition(precondition, 0)
        self.blocks_per_draw = check_int("blocks_per_draw", blocks_per_draw, 1)

        self._model = modelcontext(model)
        if vars is None:
            vars = self._model.continuous_value_vars
            if not vars:
                raise ValueError(
                    f"{type(self).__name__} needs a continuous free variable, and the model has "
                    f"none (free variables: {[v.name for v in self._model.value_vars]})"
                )
        else:
            vars = get_value_vars_from_user_vars(vars, self._model)
        discrete = [v.name for v in vars if v.dtype in discrete_types]
        if discrete:
            raise ValueError(
                f"{type(self).__name__} samples continuous variables only; got the discrete "
                f"variable(s) {discrete}. Assign them to another step, e.g. pm.Metropolis."
            )
        if initial_point is None:
            initial_point = self._model.initial_point()
        super().__init__(
            vars,
            model=self._model,
            blocked=blocked,
            rng=rng,
            initial_point=initial_point,
            compile_kwargs=compile_kwargs,
            **pytensor_kwargs,
        )
        # Call the compiled function directly (as PyMC's leapfrog integrator does), without
        # input validation: every point passed is a contiguous 1-D array of self._dtype.
        self._fn = self._logp_dlogp_func._pytensor_function
        self._fn.trust_input = True
        self._dtype = np.dtype(self._logp_dlogp_func.dtype)

        self._layout: list[tuple[str, tuple[int, ...], int, int, np.dtype]] = []
        start = 0
        for v in vars:
            value = np.asarray(initial_point[v.name])
            self._layout.append((v.name, value.shape, start, start + value.size, value.dtype))
            start += value.size
        self._n_dim = start
        self.precondition = check_precondition(precondition, self._n_dim)
        self.adapt_step_size = bool(adapt_step_size)
        self.target_accept = float(target_accept)
        self.max_energy_error = float(max_energy_error)
        self.warmup = Warmup(
            self._n_dim,
            step_size=step_size,
            adapt_step_size=self.adapt_step_size,
            target_accept=self.target_accept,
            precondition=self.precondition,
            stability_limit=OBABO_STABILITY_LIMIT
            if self._kinetic
            else pmm_stability_limit(self._K),
            accuracy=self.accuracy,
            **self._kinetic_options,
        )
        self.n_tune = _DEFAULT_TUNE
        self.tune = True
        self.reset_tuning()

    @property
    def step_size(self) -> float:
        """The step size of the next draw (adapting while tuning, frozen after)."""
        return self.warmup.step_size

    # --- PyMC protocol -------------------------------------------------------------------------

    @staticmethod
    def competence(var: Any, has_grad: bool) -> Competence:
        """Compatible with continuous variables that have a gradient; never auto-assigned."""
        if var.dtype not in discrete_types and has_grad:
            return Competence.COMPATIBLE
        return Competence.INCOMPATIBLE

    def reset_tuning(self, start: PointType | None = None) -> None:
        """Restart the warm-up and forget the cached point.

        The warm-up's windows are counted in transitions: ``n_tune`` tuning draws of
        ``blocks_per_draw`` transitions each.
        """
        self.warmup.reset(self.n_tune * self.blocks_per_draw)
        self.iter_count = 0
        self.bulk_reported = False
        self._pending_warnings: list[str] = []
        self._invalidate_cache()

    def setup_chain(self, rng: RandomGenerator, tune: int, draws: int) -> None:
        """Give the chain its generator and reset every per-chain quantity.

        Everything that depends on the chain is reset here, so a chain's draws
        depend only on ``rng`` and not on which process, or after which other
        chain, it runs: ``cores=1`` and ``cores>1`` give identical draws.
        """
        super().setup_chain(rng, tune, draws)
        self.tune = bool(tune)
        self.n_tune = int(tune)
        self.reset_tuning()

    def stop_tuning(self) -> None:
        """Freeze the step size at its dual-averaged value and the preconditioner."""
        self.tune = False
        self._pending_warnings = self.warmup.finish()

    def step(self, point: PointType) -> tuple[PointType, StatsType]:
        """One draw: map the point to the raveled space (reusing the cache) and back."""
        if self.shared:
            shared_changed = self._shared_values is None
            for name, shared_var in self.shared.items():
                value = point[name]
                shared_var.set_value(value, borrow=True)
                if not shared_changed and not np.array_equal(value, self._shared_values[name]):
                    shared_changed = True
            if shared_changed:
                self._x = None
                self._shared_values = {n: np.array(point[n], copy=True) for n in self.shared}

        x = self._incoming_x(point)
        x_new, stats = self.astep(x)
        out = dict(point) if self.shared else {}
        views = {}
        for name, shape, start, stop, dtype in self._layout:
            view = x_new[start:stop].reshape(shape)
            if view.dtype != dtype:
                view = view.astype(dtype)
            views[name] = view
        out.update(views)
        self._returned = views
        return out, stats

    def astep(self, q0: RaveledVars | np.ndarray) -> tuple[np.ndarray, StatsType]:
        """One draw from the raveled point ``q0``: ``blocks_per_draw`` transitions (each
        followed by the warm-up update while tuning), the last state recorded, and stats."""
        x = q0.data if isinstance(q0, RaveledVars) else q0
        n_steps = 0
        if self._x is None or (x is not self._x and not np.array_equal(x, self._x)):
            logp, grad = self._fn(x)
            n_steps += 1
            if not (np.isfinite(logp) and np.all(np.isfinite(grad))):
                raise SamplingError(self._bad_point_message(x, logp, grad))
            self._x, self._logp, self._grad = x, float(logp), grad
        state = LangevinState(self._x[None], np.array([self._logp]), self._grad[None])
        warmup = self.warmup
        if self.tune and not warmup.started:
            n_steps += warmup.start(state, self._logp_grad_rows)
        if self._kinetic:
            # A new point (from the start or another step): the velocity is refreshed from
            # its stationary law N(0, M^{-1}) (advance draws it where it is None).
            state = state._replace(v=None if n_steps or self._v is None else self._v[None])
        run = advance(
            self._logp_grad_rows,
            state,
            warmup,
            self.rng,
            K=self._K,
            n_blocks=self.blocks_per_draw,
            max_energy_error=self.max_energy_error,
            tuning=self.tune,
            gap=False,
        )
        state, info, params = run.state, run.info, run.params
        n_steps += run.n_evals
        if info.moved[0]:
            self._x, self._logp, self._grad = state.x[0], float(state.logp[0]), state.grad[0]
        if self._kinetic:
            self._v = None if state.v is None else state.v[0]
        self.iter_count += 1
        left_bulk = False if self.tune else bool(warmup.watch(state.logp)[0])
        stats = self._stats(params.step_size, n_steps + int(info.n_steps[0]), info, left_bulk)
        return self._x, [stats]

    # --- internals -----------------------------------------------------------------------------

    def _stats(
        self, step_size: float, n_steps: int, info: LangevinInfo, left_bulk: bool
    ) -> dict[str, Any]:
        """The draw's sampler stats from its transitions' combined info (:func:`combine_info`)."""
        diverging = bool(info.diverging[0])
        warning = None
        if left_bulk and not self.bulk_reported:
            self.bulk_reported = True
            warning = SamplerWarning(
                WarningType.BAD_ENERGY,
                f"{self.name}: the chain left the bulk of the posterior during sampling at draw "
                f"{self.iter_count - self.n_tune - 1}: the moving average of its log density "
                f"({float(self.warmup.lp_trace[0]):.6g}) fell below {self.warmup.bulk_floor:.6g}, "
                "far below the levels of the end of warm-up (a factor e^10 or more in density; "
                f"{'with' if diverging else 'without'} a divergence at that draw). The step size "
                f"({step_size:.4g}) is probably outside the sampler's stability region there: "
                "rerun with a higher target_accept or a smaller step_size, or use NUTS. Per "
                "draw: sample_stats['left_bulk'].",
                "warn",
                self.iter_count - 1,
            )
        elif diverging:
            if not info.midpoint_finite[0]:
                why = "a non-finite log density or gradient at a fired midpoint"
            elif not info.proposal_finite[0]:
                why = "a non-finite log density or gradient at the proposed point"
            else:
                why = f"an energy error of {info.energy_error[0]:.4g} > max_energy_error"
            kind = WarningType.TUNING_DIVERGENCE if self.tune else WarningType.DIVERGENCE
            warning = SamplerWarning(
                kind,
                f"Divergence: {why} (step_size={step_size:.4g}); the draw was rejected and the "
                "chain stays at its current point.",
                "debug",
                self.iter_count - 1,
            )
        elif self._pending_warnings:
            message = " ".join(self._pending_warnings)
            warning = SamplerWarning(WarningType.BAD_PARAMS, f"{self.name}: {message}", "warn")
            self._pending_warnings = []
        stats: dict[str, Any] = {
            "step_size": step_size,
            "n_steps": n_steps,
            "diverging": diverging,
            "energy_error": float(info.energy_error[0]),
            "model_logp": self._logp,
            "tune": self.tune,
            "left_bulk": left_bulk,
            "warning": warning,
        }
        if self._reports_midpoints:
            stats["n_midpoints"] = int(info.n_midpoints[0])
            stats["lmc_fallback"] = bool(info.fallback[0])
        if self._kinetic:
            stats["friction"] = float(self.warmup.friction)
        return stats

    def _logp_grad_rows(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The compiled log density and gradient at each row of ``points``."""
        n = points.shape[0]
        logp, grad = np.empty(n), np.empty((n, self._n_dim), dtype=self._dtype)
        for r in range(n):
            lp, g = self._fn(np.ascontiguousarray(points[r], dtype=self._dtype))
            logp[r], grad[r] = lp, g
        return logp, grad

    def _incoming_x(self, point: PointType) -> np.ndarray:
        """The raveled point; the cached array itself when the point is what we returned."""
        returned = self._returned
        if (
            returned is not None
            and self._x is not None
            and all(point[name] is returned[name] for name in self.var_names)
        ):
            return self._x
        return np.concatenate([np.ravel(point[name]) for name in self.var_names]).astype(
            self._dtype, copy=False
        )

    def _invalidate_cache(self) -> None:
        self._x: np.ndarray | None = None
        self._logp = np.nan
        self._grad: np.ndarray | None = None
        self._returned: dict[str, np.ndarray] | None = None
        self._shared_values: dict[str, np.ndarray] | None = None
        self._v: np.ndarray | None = None  # kinetic Langevin's velocity

    def _bad_point_message(self, x: np.ndarray, logp: Any, grad: np.ndarray) -> str:
        names = []
        for name, _shape, start, stop, _dtype in self._layout:
            if not np.all(np.isfinite(grad[start:stop])) or not np.all(np.isfinite(x[start:stop])):
                names.append(name)
        point = {name: x[a:b].reshape(s) for name, s, a, b, _ in self._layout}
        if self.shared:
            point.update(self._shared_values or {})
        try:
            factor_logps = self._model.point_logps(point)
            bad_factors = {k: v for k, v in factor_logps.items() if not np.isfinite(v)}
        except Exception:  # the diagnosis must not hide the error it diagnoses
            bad_factors = {}
        return (
            f"{type(self).__name__}: bad initial point: the log density ({float(logp)!r}) or "
            f"its gradient is not finite at the start of the variables {list(self.var_names)}. "
            f"Terms with a non-finite log density: {bad_factors}; variables with a non-finite "
            f"value or gradient: {names}. Check the initial point (model.debug() helps)."
        )


class LangevinMC(_LangevinStep):
    r"""Unadjusted Langevin Monte Carlo (LMC, also called ULA).

    ``x' = x + eta M^{-1} grad logp(x) + sqrt(2 eta) M^{-1/2} xi``, one gradient
    evaluation per draw: :func:`pmm_pymc.mcmc.kernel.transition` with ``K = 1``
    (:func:`pmm_pymc.core.pmm_step` with ``langevin_chain(step_size, 1)``; nothing fires).

    Parameters
    ----------
    vars : list of variables, optional
        Continuous value variables to sample; default all continuous ones.
    step_size : float, optional
        ``eta``. ``None`` (default): adapted during tuning. A number with
        ``adapt_step_size=True`` is the starting value of the adaptation.
    adapt_step_size : bool, default True
        Dual averaging of the would-be MALA acceptance
        (:func:`pmm_pymc.mcmc.kernel.log_accept_ratio`) during tuning.
    target_accept : float, optional
        Its target; default :data:`pmm_pymc.mcmc.warmup.DEFAULT_TARGET_ACCEPT`.
    accuracy : float, optional
        Instead of ``target_accept``: the tolerated bias, as a relative error of the
        posterior sds (0.02: about 2 %). The step size adapts so that a statistic of the
        moves that tracks the stationary bias of LMC and of PMM alike
        (:func:`pmm_pymc.mcmc.warmup.bias_terms`) predicts that bias; PMM then takes a
        larger step than LMC at the same accuracy. Calibration and measured errors:
        ``docs/accuracy.md``. Exclusive with ``target_accept``.
    max_energy_error : float, default 1000
        A move whose energy error (minus its log would-be MALA ratio) is larger is a
        divergence: rejected, the chain stays put.
    precondition : {"auto", "dense", "diag", None}, default "auto"
        ``"dense"``: ``M^{-1}`` is a full matrix, first from the curvature at the start, then
        estimated during tuning from the draws and their gradients in Stan's windows, with
        the step-size adaptation restarted after each update
        (:class:`pmm_pymc.mcmc.warmup.Warmup`). ``"diag"``: its diagonal version, ``O(d)``
        per draw instead of ``O(d^2)``. ``"auto"``: ``"dense"`` up to :data:`DENSE_MAX_DIM`
        dimensions, ``"diag"`` above. ``None``: ``M = I``. The resolved kind is the
        attribute ``precondition``.
    blocks_per_draw : int, default 1
        Transitions per recorded draw (thinning): each draw runs this many transitions
        and records the last state, so ``pm.sample``'s per-draw cost (trace, point
        function, stats) is paid once per ``blocks_per_draw`` transitions. While tuning,
        each transition updates the warm-up, whose windows are counted in transitions
        (``tune * blocks_per_draw``). The stats count the gradients of all transitions
        (``n_steps``, ``n_midpoints``); ``diverging`` and ``lmc_fallback`` hold if they
        held in any; ``energy_error`` is that of the first diverging transition, else of
        the last one; ``step_size`` is the last one's
        (:func:`pmm_pymc.mcmc.kernel.combine_info`).
    model, blocked, rng, initial_point, compile_kwargs
        As for every PyMC gradient-based step (see :class:`pymc.NUTS`).

    Notes
    -----
    With ``step_size`` given, ``adapt_step_size=False`` and
    ``precondition=None`` the step is exactly the update above and nothing
    adapts.

    An adapted step is capped when tuning ends so that ``eta L`` stays within half the
    step's stability limit at the largest curvature the warm-up saw
    (:attr:`pmm_pymc.mcmc.warmup.Warmup.stability_cap`). During sampling the stat
    ``left_bulk`` says when the chain's recent log density has fallen far below the levels
    of the end of warm-up (:meth:`pmm_pymc.mcmc.warmup.Warmup.watch`); the first such draw
    of a chain carries a ``SamplerWarning``.
    """

    name = "lmc"
    _K = 1


class PoissonMidpoint(_LangevinStep):
    r"""The Poisson Midpoint Method (Kandasamy & Nagaraj, NeurIPS 2024).

    One PMM step of size ``eta`` stands in for ``K`` Langevin steps of size
    ``eta/K`` at ``2 - 1/K`` gradient evaluations per draw on average: the
    drift is frozen at the current point for the ``K`` sub-steps and corrected
    at midpoints that fire independently with probability ``1/K``. Runs
    :func:`pmm_pymc.core.pmm_step` with ``langevin_chain(step_size, K)``.

    Parameters
    ----------
    vars : list of variables, optional
        Continuous value variables to sample; default all continuous ones.
    step_size : float, optional
        ``eta`` (the whole block). ``None`` (default): adapted during tuning.
    K : int, default 4
        Number of sub-steps. The default balances the bias (on N(0, 1) at
        ``eta = 0.2`` the stationary variance is 1.0372 for K=4, 1.0277 for
        K=8, 1.1111 for LMC) against the mean-square stability limit
        (``eta L < 1.52`` for K=4, 1.35 for K=8, 2 for LMC); see
        ``docs/method.md``.
    adapt_step_size, target_accept, accuracy, precondition, blocks_per_draw
        As for :class:`LangevinMC`.
    model, blocked, rng, initial_point, compile_kwargs
        As for :class:`LangevinMC`.
    """

    name = "pmm"
    _reports_midpoints = True

    stats_dtypes_shapes: ClassVar[dict[str, tuple[Any, Any]]] = {
        **_LangevinStep.stats_dtypes_shapes,
        "n_midpoints": (np.int64, []),
        "lmc_fallback": (bool, []),
    }

    def __init__(self, vars: Sequence[Any] | None = None, *, K: int = 4, **kwargs: Any) -> None:
        self._K = check_int("K", K, 1)
        super().__init__(vars, **kwargs)

    @property
    def K(self) -> int:  # noqa: N802 - the method's own name for it
        """Number of sub-steps per block."""
        return self._K


_KINETIC_STATS: dict[str, tuple[Any, Any]] = {"friction": (np.float64, [])}


class UnderdampedLangevin(_LangevinStep):
    r"""Unadjusted kinetic (underdamped) Langevin Monte Carlo: one OBABO step per draw.

    The chain moves a position ``u`` and a velocity ``v``::

        du = v dt,   dv = M^{-1} grad logp(u) dt - gamma v dt + sqrt(2 gamma) M^{-1/2} dW,

    discretised by OBABO with the gradient cached between steps
    (:func:`pmm_pymc.core.kinetic_step`): one gradient evaluation per draw, like
    :class:`LangevinMC`, but the velocity carries the chain along a direction for about
    ``1/gamma`` time, so it crosses a posterior of condition number ``kappa`` in about
    ``sqrt(kappa)`` steps instead of ``kappa``. Runs :func:`pmm_pymc.mcmc.kernel.transition`
    with ``K = 1`` and ``friction`` set.

    Parameters
    ----------
    vars : list of variables, optional
        Continuous value variables to sample; default all continuous ones.
    friction : float, optional
        ``gamma``. ``None`` (default): adapted during tuning to the posterior's widest
        scale in the units of the preconditioner
        (:func:`pmm_pymc.mcmc.warmup.scaled_friction`).
    energy_var_target : float, optional
        Adapt the step size to this variance of the energy error per dimension (as MCLMC
        does) instead of to ``target_accept``
        (:func:`pmm_pymc.mcmc.warmup.energy_statistic`).
    **kwargs
        ``step_size``, ``adapt_step_size``, ``target_accept``, ``max_energy_error``,
        ``precondition`` and PyMC's options, as for :class:`LangevinMC`; the step size is
        the time of one OBABO step and the acceptance that of its leapfrog step
        (:func:`pmm_pymc.mcmc.kernel.kinetic_log_accept_ratio`).

    Notes
    -----
    The velocity is part of the chain: it is drawn from ``N(0, M^{-1})`` at the start, when
    another step has moved the point, and when the preconditioner changes during tuning.
    A rejected or divergent move reverses it, as generalised HMC does.
    """

    name = "ulmc"
    _kinetic = True

    stats_dtypes_shapes: ClassVar[dict[str, tuple[Any, Any]]] = {
        **_LangevinStep.stats_dtypes_shapes,
        **_KINETIC_STATS,
    }

    def __init__(
        self,
        vars: Sequence[Any] | None = None,
        *,
        friction: float | None = None,
        energy_var_target: float | None = None,
        **kwargs: Any,
    ) -> None:
        self._kinetic_options = check_kinetic_options(
            friction, energy_var_target, kwargs.get("accuracy")
        )
        super().__init__(vars, **kwargs)

    @property
    def friction(self) -> float:
        """The friction ``gamma`` of the next draw (adapting while tuning, frozen after)."""
        return float(self.warmup.friction)


class UnderdampedPoissonMidpoint(UnderdampedLangevin):
    r"""The Poisson Midpoint Method on kinetic (underdamped) Langevin.

    One block of time ``eta`` stands in for ``K`` OBABO steps of time ``eta/K``: the
    gradient is frozen at the block's start for the ``K`` sub-steps, each an affine map of
    ``(u, v)`` with 2x2 coefficients (:func:`pmm_pymc.core.kinetic_langevin_chain`), and
    corrected at midpoints in ``u`` that fire independently with probability ``1/K``,
    weighted by the product of the later sub-steps' matrices (:func:`pmm_pymc.core.pmm_step`).
    ``2 - 1/K`` gradient evaluations per draw on average.

    Parameters
    ----------
    vars : list of variables, optional
    K : int, default 4
        Number of sub-steps.
    friction, energy_var_target, **kwargs
        As for :class:`UnderdampedLangevin`.
    """

    name = "upmm"
    _reports_midpoints = True

    stats_dtypes_shapes: ClassVar[dict[str, tuple[Any, Any]]] = {
        **PoissonMidpoint.stats_dtypes_shapes,
        **_KINETIC_STATS,
    }

    def __init__(self, vars: Sequence[Any] | None = None, *, K: int = 4, **kwargs: Any) -> None:
        self._K = check_int("K", K, 1)
        super().__init__(vars, **kwargs)

    @property
    def K(self) -> int:  # noqa: N802 - the method's own name for it
        """Number of sub-steps per block."""
        return self._K
