"""PyMC step methods: the Poisson Midpoint Method and Langevin Monte Carlo.

Both steps are thin PyMC adapters around :func:`pmm_pymc.core.pmm_step`:
:class:`LangevinMC` runs the core with ``langevin_chain(step_size, 1)``
(one Euler-Maruyama step, nothing can fire) and :class:`PoissonMidpoint` with
``langevin_chain(step_size, K)`` and midpoints that fire with probability
``1/K``. Neither holds a copy of the update.

Conventions (``docs/method.md`` has the derivation)::

    drift  b(x) = M^{-1} grad logp(x)
    LMC    x'   = x + eta b(x) + sqrt(2 eta) M^{-1/2} xi

Random numbers, per draw and in this order, from the step's
:class:`numpy.random.Generator`: ``Z = rng.standard_normal((K, 1, d))`` (the
sub-step noise, scaled to ``M^{-1/2} Z``), then, for ``K > 1``,
``U = rng.random(K - 1)`` with midpoint ``i`` firing when ``U[i - 1] < 1/K``.
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
from pymc.step_methods.step_sizes import DualAverageAdaptation, StepSizeState
from pymc.util import RandomGenerator, get_value_vars_from_user_vars
from pymc.vartypes import discrete_types

from pmm_pymc.core import AffineChain, langevin_chain, pmm_step
from pmm_pymc.mcmc.warmup import (
    MassMatrixAdaptation,
    MassMatrixState,
    check_step_options,
    initial_step_size,
    langevin_log_accept_ratio,
    pmm_stability_limit,
)

__all__ = ["DENSE_MAX_DIM", "LangevinMC", "LangevinState", "PoissonMidpoint"]

_FIRST_MEMBER = np.zeros(1, dtype=np.intp)  # the batch index of the single chain (B = 1)
_KINDS = ("auto", "diag", "dense")
DENSE_MAX_DIM = 200
"""``precondition="auto"`` is ``"dense"`` up to this many dimensions and ``"diag"`` above."""
_DEFAULT_TUNE = 1000  # pm.sample's default, for the windows until setup_chain gives the real one


@dataclass_state
class LangevinState(StepMethodState):
    """The per-chain state of a Langevin step, as PyMC saves and restores it."""

    step_size: float
    adapt_step_size: bool
    tune: bool
    iter_count: int
    step_adapt: StepSizeState
    mass_adapt: MassMatrixState | None
    n_tune: int


class _LangevinStep(GradientSharedStep):
    """Shared machinery of :class:`LangevinMC` and :class:`PoissonMidpoint`.

    Subclasses set ``name`` and ``_K``; the update itself is
    :func:`pmm_pymc.core.pmm_step`.
    """

    name: ClassVar[str]
    default_blocked = True
    _state_class = LangevinState
    _K: int = 1
    _reports_midpoints: ClassVar[bool] = False

    stats_dtypes_shapes: ClassVar[dict[str, tuple[Any, Any]]] = {
        "step_size": (np.float64, []),
        "n_steps": (np.int64, []),
        "diverging": (bool, []),
        "energy_error": (np.float64, []),
        "model_logp": (np.float64, []),
        "tune": (bool, []),
        "warning": (SamplerWarning, None),
    }

    def __init__(
        self,
        vars: Sequence[Any] | None = None,
        *,
        step_size: float | None = None,
        adapt_step_size: bool = True,
        target_accept: float | None = None,
        max_energy_error: float = 1000.0,
        precondition: Literal["auto", "diag", "dense"] | None = "auto",
        model: Model | None = None,
        blocked: bool = True,
        rng: RandomGenerator = None,
        initial_point: PointType | None = None,
        compile_kwargs: dict | None = None,
        **pytensor_kwargs: Any,
    ) -> None:
        step_size, target_accept = check_step_options(
            step_size, adapt_step_size, target_accept, max_energy_error, self.name
        )
        if not (precondition is None or (isinstance(precondition, str) and precondition in _KINDS)):
            raise ValueError(
                f"precondition must be 'auto', 'diag', 'dense' or None, got {precondition!r}"
            )

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
        x0 = np.concatenate([np.ravel(initial_point[v.name]) for v in vars]).astype(self._dtype)
        self._n_dim = x0.size
        if precondition == "auto":
            precondition = "dense" if self._n_dim <= DENSE_MAX_DIM else "diag"
        self._fixed_step_size = None if step_size is None else float(step_size)
        self.adapt_step_size = bool(adapt_step_size)
        self.target_accept = float(target_accept)
        self.max_energy_error = float(max_energy_error)
        self._adjusted_warmup = self.adapt_step_size or precondition is not None
        self._stability_limit = pmm_stability_limit(self._K)
        self.precondition = precondition
        first = self._fixed_step_size or initial_step_size(self._n_dim)
        self.step_adapt = self._dual_averaging(first)
        self.mass_adapt: MassMatrixAdaptation | None = None
        if precondition is not None:
            self.mass_adapt = MassMatrixAdaptation(self._n_dim, precondition, self._dtype)
        self.n_tune = _DEFAULT_TUNE
        self.tune = True
        self.reset_tuning()

    # --- PyMC protocol -------------------------------------------------------------------------

    @staticmethod
    def competence(var: Any, has_grad: bool) -> Competence:
        """Compatible with continuous variables that have a gradient; never auto-assigned."""
        if var.dtype not in discrete_types and has_grad:
            return Competence.COMPATIBLE
        return Competence.INCOMPATIBLE

    def reset_tuning(self, start: PointType | None = None) -> None:
        """Restart the step-size and preconditioner adaptation and forget the cached point."""
        self.step_adapt = self._dual_averaging(
            self._fixed_step_size or initial_step_size(self._n_dim)
        )
        if self.mass_adapt is not None:
            self.mass_adapt.reset(self.n_tune)
        self.step_size = self._fixed_step_size or float(self.step_adapt.current(True))
        self.iter_count = 0
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
        if self.adapt_step_size:
            self.step_size = float(self.step_adapt.current(False))

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
        """One PMM block from the raveled point ``q0`` (a cached point is reused)."""
        x = q0.data if isinstance(q0, RaveledVars) else q0
        n_steps = 0
        if self._x is None or (x is not self._x and not np.array_equal(x, self._x)):
            logp, grad = self._fn(x)
            n_steps += 1
            if not (np.isfinite(logp) and np.all(np.isfinite(grad))):
                raise SamplingError(self._bad_point_message(x, logp, grad))
            self._x, self._logp, self._grad = x, float(logp), grad
        x, logp, grad = self._x, self._logp, self._grad

        eta = self.step_size
        if self._chain is None or self._chain_eta != eta:
            self._chain, self._chain_eta = langevin_chain(eta, self._K), eta
        K = self._K
        mass = self.mass_adapt
        inv_mass = None if mass is None else mass.inv_mass
        drift0 = grad if mass is None else mass.drift(grad)

        noise = self.rng.standard_normal((K, 1, self._n_dim))
        if mass is not None:
            noise = mass.scale_noise(noise)
        fired: list[np.ndarray | None] = [None] * K
        if K > 1:
            for i in np.flatnonzero(self.rng.random(K - 1) < 1.0 / K):
                fired[i + 1] = _FIRST_MEMBER
        self._midpoint_ok = True
        self._stiffness = 0.0
        self._start, self._start_drift = x, drift0
        x_new, info = pmm_step(self._drift, x[None], drift0[None], noise, fired, self._chain)
        n_steps += info.n_evals
        x_new = x_new[0]
        n_fallback = 0
        if self._midpoint_ok and eta * self._stiffness > self._stability_limit:
            # Outside PMM's stability region: take the frozen-drift endpoint, which is exactly
            # the LMC step of size eta with the same noise (stable up to eta L < 2).
            x_new = info.endpoint[0]
            n_fallback = 1

        ok = self._midpoint_ok
        if ok:
            logp_new, grad_new = self._fn(x_new)
            n_steps += 1
            ok = bool(np.isfinite(logp_new) and np.all(np.isfinite(grad_new)))

        energy_error = np.inf
        moved = True
        if ok:
            with np.errstate(over="ignore", invalid="ignore"):
                energy_error = -langevin_log_accept_ratio(
                    logp, float(logp_new), x, x_new, grad, grad_new, eta, inv_mass
                )
            if energy_error > self.max_energy_error:
                ok = False
                why = f"an energy error of {energy_error:.4g} > max_energy_error"
        elif not self._midpoint_ok:
            why = "a non-finite log density or gradient at a fired midpoint"
        else:
            why = "a non-finite log density or gradient at the proposed point"
        warning = None
        if ok and self.tune and self._adjusted_warmup:
            # Warm-up only: Metropolis-adjust with the would-be MALA acceptance, so that a step
            # size too large while dual averaging explores cannot throw the chain out of the
            # typical set (warm-up draws are discarded; sampling is unadjusted).
            if energy_error > 0 and self.rng.random() >= np.exp(-energy_error):
                moved = False
        if ok and moved:
            self._x, self._logp, self._grad = x_new, float(logp_new), grad_new
        elif not ok:
            kind = WarningType.TUNING_DIVERGENCE if self.tune else WarningType.DIVERGENCE
            warning = SamplerWarning(
                kind,
                f"Divergence: {why} (step_size={eta:.4g}); the draw was rejected and the "
                "chain stays at its current point.",
                "debug",
                self.iter_count,
            )
        adapting = self.tune and self.adapt_step_size
        if adapting:
            accept = float(np.exp(-energy_error)) if energy_error > 0 else 1.0
            self.step_adapt.update(accept, True)
            self.step_size = float(self.step_adapt.current(True))
        if (
            self.tune
            and mass is not None
            and mass.update(self._x, self._grad)
            and self.adapt_step_size
        ):
            # New preconditioner: the step size learnt for the old one is stale; restart dual
            # averaging from it (Stan's windowed adaptation does the same).
            self.step_adapt = self._dual_averaging(self.step_size)
            self.step_size = float(self.step_adapt.current(True))
        self.iter_count += 1

        stats: dict[str, Any] = {
            "step_size": eta,
            "n_steps": n_steps,
            "diverging": not ok,
            "energy_error": energy_error,
            "model_logp": self._logp,
            "tune": self.tune,
            "warning": warning,
        }
        if self._reports_midpoints:
            stats["n_midpoints"] = info.n_evals
            stats["lmc_fallback"] = bool(n_fallback)
        return self._x, [stats]

    # --- internals -----------------------------------------------------------------------------

    def _dual_averaging(self, initial_step: float) -> DualAverageAdaptation:
        """PyMC's NUTS step-size adaptation (same constants), started at ``initial_step``."""
        return DualAverageAdaptation(initial_step, self.target_accept, 0.05, 0.75, 10)

    def _drift(self, points: np.ndarray, groups: Any) -> np.ndarray:
        """``M^{-1} grad logp`` at each fired midpoint (rows of ``points``)."""
        out = np.empty_like(points)
        for r in range(points.shape[0]):
            logp, grad = self._fn(points[r])
            out[r] = grad
            if not np.isfinite(logp):
                self._midpoint_ok = False
        if not np.all(np.isfinite(out)):
            self._midpoint_ok = False
            return out
        mass = self.mass_adapt
        if mass is not None:
            out = mass.drift(out)
        # Secant estimate of the local Lipschitz constant of the (preconditioned) drift
        # between the start and each fired midpoint: ||M^{1/2} db|| / ||M^{1/2} dx||.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            for r in range(points.shape[0]):
                dx = points[r] - self._start
                db = out[r] - self._start_drift
                if mass is None:
                    num, den = np.dot(db, db), np.dot(dx, dx)
                else:
                    num, den = mass.mass_norm_sq(db), mass.mass_norm_sq(dx)
                if den > 0:
                    self._stiffness = max(self._stiffness, float(np.sqrt(num / den)))
        return out

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
        self._chain: AffineChain | None = None
        self._chain_eta = np.nan

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
    evaluation per draw. Runs :func:`pmm_pymc.core.pmm_step` with
    ``langevin_chain(step_size, 1)``; nothing fires.

    Parameters
    ----------
    vars : list of variables, optional
        Continuous value variables to sample; default all continuous ones.
    step_size : float, optional
        ``eta``. ``None`` (default): adapted during tuning. A number with
        ``adapt_step_size=True`` is the starting value of the adaptation.
    adapt_step_size : bool, default True
        Dual averaging of the would-be MALA acceptance
        (:func:`pmm_pymc.mcmc.warmup.langevin_log_accept_ratio`) during tuning.
    target_accept : float, optional
        Its target; default :data:`pmm_pymc.mcmc.warmup.DEFAULT_TARGET_ACCEPT`.
    precondition : {"auto", "dense", "diag", None}, default "auto"
        ``"dense"``: ``M^{-1}`` is a full matrix estimated during tuning from the
        draws and their gradients, in Stan's windows, with the step-size adaptation
        restarted after each update (:class:`pmm_pymc.mcmc.warmup.MassMatrixAdaptation`).
        ``"diag"``: its diagonal version, ``O(d)`` per draw instead of ``O(d^2)``.
        ``"auto"``: ``"dense"`` up to :data:`DENSE_MAX_DIM` dimensions, ``"diag"``
        above. ``None``: ``M = I``. The resolved kind is the attribute ``precondition``.
    model, blocked, rng, initial_point, compile_kwargs
        As for every PyMC gradient-based step (see :class:`pymc.NUTS`).

    Notes
    -----
    With ``step_size`` given, ``adapt_step_size=False`` and
    ``precondition=None`` the step is exactly the update above and nothing
    adapts.
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
    adapt_step_size, target_accept, precondition, model, blocked, rng, initial_point, compile_kwargs
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
        if isinstance(K, bool) or not isinstance(K, int | np.integer) or K < 1:
            raise ValueError(f"K must be an integer >= 1, got {K!r}")
        self._K = int(K)
        super().__init__(vars, **kwargs)

    @property
    def K(self) -> int:  # noqa: N802 - the method's own name for it
        """Number of sub-steps per block."""
        return self._K
