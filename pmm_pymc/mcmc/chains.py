"""Many chains at once: PMM and LMC over a batch of chains with one compiled call per evaluation.

:func:`sample_chains` advances ``C`` chains of a PyMC model together. The
model's log density and its gradient are compiled once for a *batch* of raveled
points (PyTensor's graph vectorisation of the model's logp over a leading chain
axis, then the gradient of the summed batch), so a draw of all ``C`` chains
costs two compiled calls however large ``C`` is: one at the fired midpoints of
all chains (stacked) and one at the ``C`` new points. The transition and the
warm-up are the ones the per-chain steps run (:func:`pmm_pymc.mcmc.kernel.transition`
and :class:`pmm_pymc.mcmc.warmup.Warmup`), with one row per chain; this module holds
no copy of either, only the batched log density and the loop.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any, Literal, NamedTuple

import numpy as np
import pytensor
import pytensor.tensor as pt
from pymc.backends.arviz import DataTreeConverter, dict_to_dataset
from pymc.blocking import DictToArrayBijection
from pymc.exceptions import SamplingError
from pymc.initial_point import make_initial_point_fn
from pymc.model import Model, modelcontext
from pymc.pytensorf import compile as pm_compile
from pymc.pytensorf import join_nonshared_inputs, rewrite_pregrad
from pymc.stats.convergence import SamplerWarning, WarningType, log_warnings, run_convergence_checks
from pymc.util import RandomSeed, get_default_varnames
from pymc.vartypes import discrete_types
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.replace import vectorize_graph
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.special import LogSumExp
from xarray import DataTree

from pmm_pymc._validate import check_bool, check_choice, check_int
from pmm_pymc.mcmc.blocks import advance
from pmm_pymc.mcmc.kernel import (
    OBABO_STABILITY_LIMIT,
    LangevinInfo,
    LangevinParams,
    LangevinState,
    draw_randomized_midpoint,
    finite_rows,
    pmm_stability_limit,
)
from pmm_pymc.mcmc.warmup import (
    Warmup,
    check_accuracy,
    check_kinetic_options,
    check_precondition,
    check_step_options,
)

__all__ = ["BatchedLogpGrad", "DEFAULT_K", "METHODS", "RMM_K", "reuse_compiled", "sample_chains"]

METHODS = ("pmm", "lmc", "rmm", "upmm", "ulmc")
"""``sample_chains``' methods: PMM and LMC, overdamped and kinetic (underdamped), and the
randomized midpoint method."""

DEFAULT_K = 4
"""Default number of PMM sub-steps; the same as :class:`pmm_pymc.PoissonMidpoint`'s."""

RMM_K = 64
"""Default grid of midpoint times of ``method="rmm"`` (the randomized midpoint method)."""

_BACKENDS = {"numba": "NUMBA", "c": "CVM"}
# pm.sample's sample_stats renames the step's "model_logp" to "lp" (pymc.backends.arviz).
_STAT_RENAME = {"model_logp": "lp"}
_MAX_INIT_TRIES = 10
MIN_ROWS_PER_THREAD = 64
"""The fewest rows per thread for which :class:`BatchedLogpGrad` splits a batch."""
SPLIT_SECONDS = 2e-3
"""A batch is split over threads only when one call would take longer (thread overhead)."""


# ------------------------------------------------------------------------------------------------
# The batched log density
# ------------------------------------------------------------------------------------------------


def _unblock_logsumexp(outputs: list[pt.TensorVariable]) -> list[pt.TensorVariable]:
    """Replace ``Blockwise(LogSumExp(axis))`` by ``LogSumExp`` over the shifted axes.

    PyTensor 3.3 has no vectorisation rule for ``LogSumExp`` (it has one for
    ``Softmax`` and ``LogSoftmax``), so :func:`vectorize_graph` wraps it in a
    ``Blockwise`` that loops over the batch in Python-free but per-row code;
    ``pm.Mixture``'s log density is built on it. The reduction over the core
    axes shifted past the batch axes is the same function, and a single
    vectorised kernel (about twice as fast per chain on a 10-d mixture).
    """
    fg = FunctionGraph(outputs=outputs, clone=False, copy_inputs=False)  # as rewrite_graph does
    for node in list(fg.toposort()):
        op = node.op
        if not (isinstance(op, Blockwise) and isinstance(op.core_op, LogSumExp)):
            continue
        (x,) = node.inputs
        core_ndim = len(op.inputs_sig[0])
        batch_ndim = x.type.ndim - core_ndim
        axis = tuple(batch_ndim + (a % core_ndim) for a in op.core_op.axis)
        fg.replace(node.outputs[0], LogSumExp(axis=axis)(x), import_missing=True)
    return list(fg.outputs)


class BatchedLogpGrad:
    """The model's log density and gradient at a batch of raveled points, in one compiled call.

    The value variables are raveled and joined in the order of ``value_vars``
    (as :class:`pymc.blocking.DictToArrayBijection` does), the joined logp graph
    is vectorised over a leading batch axis with
    :func:`pytensor.graph.replace.vectorize_graph`, and the gradient is that of
    the summed batch logp: the rows do not interact, so row ``m`` of it is the
    gradient of row ``m``'s log density.

    Parameters
    ----------
    model : pymc.Model
    value_vars : list of TensorVariable
        The (continuous) value variables, in raveling order.
    point : dict
        A point giving each value variable's shape.
    mode : str or pytensor Mode
        PyTensor compilation mode (``"NUMBA"``, ``"CVM"``, ...).
    vectorize : bool, default True
        Compile the vectorised graph. ``False`` (or a graph that cannot be
        vectorised, with a warning) loops over the rows with the single-point
        function: correct, and ``B`` times slower.
    compile_kwargs : dict, optional
        Passed on to :func:`pymc.pytensorf.compile`.
    threads : int, default 1
        Split a large batch (at least :data:`MIN_ROWS_PER_THREAD` rows per
        thread, and an estimated single call longer than
        :data:`SPLIT_SECONDS`) into this many contiguous parts evaluated
        concurrently, each by its own copy of the compiled function (the numba
        kernels release the GIL). The rows do not interact, so the result is
        the same numbers. Call :meth:`close` to stop the threads.

    Attributes
    ----------
    n_dim : int
        Length of a raveled point.
    vectorized : bool
        Whether the batched graph is in use.
    """

    def __init__(
        self,
        model: Model,
        value_vars: Sequence[pt.TensorVariable],
        point: dict[str, np.ndarray],
        *,
        mode: Any = "NUMBA",
        vectorize: bool = True,
        compile_kwargs: dict | None = None,
        threads: int = 1,
    ) -> None:
        compile_kwargs = dict(compile_kwargs or {})
        compile_kwargs.setdefault("mode", mode)
        self.n_dim = int(sum(np.asarray(point[v.name]).size for v in value_vars))
        self.dtype = np.dtype(pytensor.config.floatX)
        cost = rewrite_pregrad(model.logp())
        [cost_flat], x = join_nonshared_inputs(point, [cost], list(value_vars))
        self.vectorized = False
        if vectorize:
            xb = pt.tensor("x_batch", shape=(None, self.n_dim), dtype=x.dtype)
            try:
                [cost_b] = _unblock_logsumexp([vectorize_graph(cost_flat, replace={x: xb})])
                grad_b = pytensor.grad(cost_b.sum(), xb)
                with model:
                    self._fn = pm_compile([xb], [cost_b, grad_b], **compile_kwargs)
                self.vectorized = True
            except Exception as err:  # an Op without a vectorisation rule
                warnings.warn(
                    f"The model's log density could not be vectorised over chains ({err!r}); "
                    "sample_chains falls back to one compiled call per chain, which is slower.",
                    UserWarning,
                    stacklevel=3,
                )
        if not self.vectorized:
            grad = pytensor.grad(cost_flat, x)
            with model:
                self._single = pm_compile([x], [cost_flat, grad], **compile_kwargs)
        self._x_dtype = np.dtype(x.dtype)
        self.threads = int(threads) if self.vectorized else 1
        self._row_seconds = 0.0  # least cost per row of a single call seen: when to split
        self._pool: ThreadPoolExecutor | None = None
        if self.threads > 1:
            # A compiled function owns its input and output storage: one copy per thread.
            self._fns = [self._fn] + [self._fn.copy() for _ in range(self.threads - 1)]
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="pmm-batched-logp")

    def close(self) -> None:
        """Stop the worker threads (a no-op with ``threads=1``)."""
        if self._pool is not None:
            self._pool.shutdown()
            self._pool = None
            self.threads = 1

    def __call__(self, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Log density, shape ``(B,)``, and gradient, shape ``(B, n_dim)``, at ``points``."""
        points = np.ascontiguousarray(points, dtype=self._x_dtype)
        if points.ndim != 2 or points.shape[1] != self.n_dim:
            raise ValueError(f"points must have shape (B, {self.n_dim}), got shape {points.shape}")
        with np.errstate(all="ignore"):
            if self.vectorized:
                B = points.shape[0]
                n_parts = min(self.threads, B // MIN_ROWS_PER_THREAD)
                if self._pool is None or self._row_seconds * B < SPLIT_SECONDS:
                    n_parts = 1
                t0 = time.perf_counter()
                if n_parts < 2:
                    logp, grad = (np.asarray(a) for a in self._fn(points))
                else:
                    parts = np.array_split(points, n_parts)
                    res = list(self._pool.map(lambda fn, p: fn(p), self._fns[:n_parts], parts))
                    logp = np.concatenate([np.asarray(r[0]) for r in res])
                    grad = np.concatenate([np.asarray(r[1]) for r in res])
                if B >= MIN_ROWS_PER_THREAD:
                    # Single-thread cost per row, bounded above by a split call's time x parts;
                    # the least seen, so one slow call does not keep small batches split.
                    cost = (time.perf_counter() - t0) * n_parts / B
                    self._row_seconds = min(self._row_seconds, cost) if self._row_seconds else cost
                return logp, grad
            logp = np.empty(points.shape[0], dtype=self.dtype)
            grad = np.empty(points.shape, dtype=self.dtype)
            for r in range(points.shape[0]):
                lp, g = self._single(points[r])
                logp[r], grad[r] = lp, g
            return logp, grad


def _batched_point_fn(
    model: Model,
    value_vars: Sequence[pt.TensorVariable],
    point: dict[str, np.ndarray],
    compile_kwargs: dict,
) -> tuple[list[str], Callable[[np.ndarray], list[np.ndarray]]]:
    """Compile raveled unconstrained points ``(B, n)`` -> the trace's variables, batched.

    The outputs are the model's :attr:`~pymc.Model.unobserved_value_vars` (the
    free variables in constrained space and the deterministics), without the
    transformed names, exactly what ``pm.sample`` stores in the posterior.
    """
    outs = model.unobserved_value_vars
    keep = set(get_default_varnames([o.name for o in outs], include_transformed=False))
    outs = [o for o in outs if o.name in keep]
    names = [o.name for o in outs]
    outs_flat, x = join_nonshared_inputs(point, outs, list(value_vars))
    xb = pt.tensor("x_batch", shape=(None, x.type.shape[0]), dtype=x.dtype)
    try:
        outs_b = vectorize_graph(outs_flat, replace={x: xb})
        with model:
            fn = pm_compile([xb], outs_b, on_unused_input="ignore", **compile_kwargs)

        def batched(points: np.ndarray) -> list[np.ndarray]:
            res = fn(np.ascontiguousarray(points, dtype=x.dtype))
            out = []
            for r, o in zip(res, outs_flat):
                r = np.asarray(r)
                if r.ndim == o.type.ndim:  # an output that does not depend on the point
                    r = np.broadcast_to(r, (points.shape[0], *r.shape))
                out.append(r)
            return out

    except Exception:  # no vectorisation rule for some Op: loop over the rows
        with model:
            single = pm_compile([x], outs_flat, on_unused_input="ignore", **compile_kwargs)

        def batched(points: np.ndarray) -> list[np.ndarray]:
            rows = [single(np.asarray(p, dtype=x.dtype)) for p in points]
            return [np.stack([np.asarray(r[i]) for r in rows]) for i in range(len(names))]

    return names, batched


_reused: dict[tuple, Any] | None = None  # the compiled functions kept by reuse_compiled


@contextmanager
def reuse_compiled() -> Iterator[None]:
    """Within this block, :func:`sample_chains` compiles each model's functions once.

    Runs of one model with different settings (a sweep of step sizes, say) then pay the
    compilation once: the batched log density and gradient and the map to the trace's
    variables are kept, per model and compile options, until the block ends. Change no
    model inside the block (its compiled functions would be stale).
    """
    global _reused
    outer = _reused
    _reused = {} if outer is None else outer
    try:
        yield
    finally:
        if outer is None:
            for _, value in _reused.values():
                if hasattr(value, "close"):  # a BatchedLogpGrad: stop its threads
                    value.close()
            _reused = None


def _compiled(model: Model, key: tuple, build: Callable[[], Any]) -> Any:
    """``build()``, or the one kept for ``model`` under ``key`` inside :func:`reuse_compiled`."""
    if _reused is None:
        return build()
    key = (id(model), *key)
    if key not in _reused:
        _reused[key] = (model, build())  # the model is kept alive: its id stays its own
    return _reused[key][1]


# ------------------------------------------------------------------------------------------------
# Validation
# ------------------------------------------------------------------------------------------------


def _check_options(
    chains: Any,
    draws: Any,
    tune: Any,
    method: Any,
    K: Any,
    step_size: Any,
    adapt_step_size: Any,
    target_accept: Any,
    max_energy_error: Any,
    backend: Any,
) -> tuple[int, int, int, int, float | None, float]:
    chains = check_int("chains", chains, 1)
    draws = check_int("draws", draws, 1)
    tune = check_int("tune", tune, 0)
    check_choice("method", method, METHODS)
    if method in ("lmc", "ulmc"):
        if K is not None and K != 1:
            raise ValueError(f"K must be None or 1 with method={method!r}, got {K!r}")
        K = 1
    elif method == "rmm":
        K = check_int("K", RMM_K if K is None else K, 2)
    else:
        K = check_int("K", DEFAULT_K if K is None else K, 1)
    kind = "pmm" if method == "rmm" else method  # whose default target_accept
    step_size, target_accept = check_step_options(
        step_size, adapt_step_size, target_accept, max_energy_error, kind
    )
    check_choice("backend", backend, tuple(_BACKENDS))
    return chains, draws, tune, K, step_size, target_accept


def _continuous_value_vars(model: Model) -> list[pt.TensorVariable]:
    discrete = [v.name for v in model.value_vars if v.dtype in discrete_types]
    if discrete:
        raise ValueError(
            "sample_chains samples continuous variables only; the model has the discrete "
            f"variable(s) {discrete}. Use pm.sample with a CompoundStep for those."
        )
    value_vars = model.continuous_value_vars
    if not value_vars:
        raise ValueError("sample_chains needs a model with a continuous free variable; it has none")
    return value_vars


# ------------------------------------------------------------------------------------------------
# The sampler
# ------------------------------------------------------------------------------------------------


def _initial_points(
    model: Model,
    value_vars: Sequence[pt.TensorVariable],
    logp_grad: BatchedLogpGrad,
    chains: int,
    initvals: dict | None,
    jitter: bool,
    rng: np.random.Generator,
    initial_points: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jittered initial points (as pm.sample's jitter+adapt_diag), raveled, with finite logp.

    ``initial_points`` ``(chains, n)``, raveled unconstrained, are taken as they are instead.
    """
    if initial_points is not None:
        x = np.array(initial_points, dtype=logp_grad.dtype)
        if x.shape != (chains, logp_grad.n_dim):
            raise ValueError(
                f"initial_points must have shape (chains, n_dim) = ({chains}, "
                f"{logp_grad.n_dim}), got shape {x.shape}"
            )
        logp, grad = logp_grad(x)
        bad = ~finite_rows(logp, grad)
        if bad.any():
            raise SamplingError(
                f"Non-finite log density or gradient at initial_points row {int(bad.argmax())}"
            )
        return x, logp, grad
    ipfn = make_initial_point_fn(
        model=model,
        overrides=initvals,
        jitter_rvs=set(model.free_RVs) if jitter else set(),
        return_transformed=True,
    )

    def ravel(point: dict[str, np.ndarray]) -> np.ndarray:
        return DictToArrayBijection.map({v.name: point[v.name] for v in value_vars}).data

    template = DictToArrayBijection.map(
        {v.name: model.initial_point(0)[v.name] for v in value_vars}
    )

    seeds = rng.integers(2**30, size=chains)
    x = np.stack([ravel(ipfn(int(s))) for s in seeds]).astype(logp_grad.dtype)
    logp, grad = logp_grad(x)
    for _ in range(_MAX_INIT_TRIES if jitter else 0):
        bad = ~finite_rows(logp, grad)
        if not bad.any():
            break
        x[bad] = np.stack([ravel(ipfn(int(s))) for s in rng.integers(2**30, size=bad.sum())])
        logp[bad], grad[bad] = logp_grad(x[bad])
    bad = ~finite_rows(logp, grad)
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        point = DictToArrayBijection.rmap(template._replace(data=x[first]))
        model.check_start_vals(point)  # raises SamplingError naming the variables
        raise SamplingError(
            f"Non-finite gradient of the log density at the initial point of chain {first}: {point}"
        )
    return x, logp, grad


class _Run(NamedTuple):
    """What :func:`_run` made: the kept draws and stats, and how the run ended."""

    x: np.ndarray  # (n_recorded, C, n)
    stats: dict[str, np.ndarray]  # each (n_recorded, C)
    n_recorded: int
    n_iterations: int  # iterations completed (tuning included)
    interrupted: bool
    problems: list[str]  # the warm-up's warnings


def sample_chains(
    model: Model | None = None,
    *,
    chains: int = 256,
    draws: int = 1000,
    tune: int = 1000,
    method: Literal["pmm", "lmc", "rmm", "upmm", "ulmc"] = "pmm",
    K: int | None = None,
    step_size: float | None = None,
    adapt_step_size: bool = True,
    target_accept: float | None = None,
    accuracy: float | None = None,
    max_energy_error: float = 1000.0,
    friction: float | None = None,
    energy_var_target: float | None = None,
    precondition: Literal["auto", "diag", "dense"] | None = "auto",
    blocks_per_draw: int = 1,
    restart_stray_chains: bool = True,
    initvals: dict | None = None,
    jitter: bool = True,
    initial_points: np.ndarray | None = None,
    random_seed: RandomSeed = None,
    discard_tuned_samples: bool = True,
    compute_convergence_checks: bool = True,
    progress: bool = False,
    cores: int = 1,
    backend: Literal["numba", "c"] = "numba",
    compile_kwargs: dict | None = None,
) -> DataTree:
    r"""Run ``chains`` PMM or LMC chains together, vectorised over the chains.

    Every drift evaluation of all chains is one compiled call of the model's
    log density and gradient vectorised over a leading chain axis
    (:class:`BatchedLogpGrad`): per draw, one call at the stacked fired
    midpoints of all chains and one at the ``C`` new points. Each draw is one
    :func:`pmm_pymc.mcmc.kernel.transition` of all chains, and the warm-up is
    :class:`pmm_pymc.mcmc.warmup.Warmup` over the chains: the same transition and
    warm-up :class:`pmm_pymc.PoissonMidpoint` runs per chain.

    Parameters
    ----------
    model : pymc.Model, optional
        Default: the model on the context stack. All free variables must be
        continuous.
    chains : int, default 256
        Number of chains ``C`` (>= 1).
    draws, tune : int, default 1000
        Draws kept per chain, and warm-up iterations before them (discarded).
    method : {"pmm", "lmc", "rmm", "upmm", "ulmc"}, default "pmm"
        The Poisson Midpoint Method or unadjusted Langevin Monte Carlo, on overdamped
        Langevin (``"pmm"``, ``"lmc"``: :class:`pmm_pymc.PoissonMidpoint`,
        :class:`pmm_pymc.LangevinMC`) or kinetic Langevin (``"upmm"``, ``"ulmc"``:
        :class:`pmm_pymc.UnderdampedPoissonMidpoint`, :class:`pmm_pymc.UnderdampedLangevin`),
        or the randomized midpoint method (``"rmm"``: Shen & Lee 2019; one midpoint per step
        at a uniform time, two gradients: the same transition with
        :func:`pmm_pymc.mcmc.kernel.draw_randomized_midpoint`'s random numbers).
    K : int, optional
        PMM sub-steps per draw (default :data:`DEFAULT_K`); must be None or 1
        for ``"lmc"`` and ``"ulmc"``; for ``"rmm"`` the grid of midpoint times (default
        :data:`RMM_K`, at least 2).
    step_size : float, optional
        ``eta``, with ``x' = x + eta M^{-1} grad logp(x) + sqrt(2 eta) M^{-1/2} xi``
        for LMC. ``None``: adapted during tuning. A number with
        ``adapt_step_size=True`` is the starting value of the adaptation.
    adapt_step_size : bool, default True
        Dual averaging (PyMC's ``DualAverageAdaptation``) of the *mean over the
        chains* of the would-be MALA acceptance of each move
        (:func:`pmm_pymc.mcmc.kernel.log_accept_ratio`).
    target_accept : float, optional
        Its target; default :data:`pmm_pymc.mcmc.warmup.DEFAULT_TARGET_ACCEPT`.
    accuracy : float, optional
        Instead of ``target_accept``: the tolerated bias as a relative error of the
        posterior sds, as for :class:`pmm_pymc.PoissonMidpoint` (``docs/accuracy.md``).
        Each chain's step size adapts to its own moves' bias statistic.
    max_energy_error : float, default 1000
        A move whose energy error (minus its log MALA ratio) exceeds this is a
        divergence: rejected, the chain stays put.
    friction, energy_var_target : float, optional
        Kinetic methods only, as for :class:`pmm_pymc.UnderdampedLangevin`: the friction
        (default: adapted) and an energy-error variance per dimension to adapt the step
        size to instead of ``target_accept``.
    precondition : {"auto", "diag", "dense", None}, default "auto"
        As for the per-chain steps: ``M^{-1}`` first from the curvature at the
        start, then from the draws and gradients of all chains in Stan's windows.
        ``"auto"``: ``"dense"`` up to 200 dimensions, ``"diag"`` above.
        ``None``: ``M = I``.
    blocks_per_draw : int, default 1
        Transitions per recorded draw (thinning), as for the per-chain steps: each
        draw runs this many transitions of all chains and records the last state; the
        warm-up's windows are counted in transitions (``tune * blocks_per_draw``); the
        stats count the gradients of all transitions and combine the rest as
        :func:`pmm_pymc.mcmc.kernel.combine_info` says.
    restart_stray_chains : bool, default True
        During warm-up, restart a chain whose log density stays far below that of
        the bulk of the chains (a spurious local mode, a start it cannot leave)
        from a chain of the bulk (:func:`pmm_pymc.mcmc.warmup.stray_rows`). Turn
        it off for a posterior with genuine modes of very different density.
    initvals : dict, optional
        Initial values, as for ``pm.sample``; each chain's start is jittered
        by U(-1, 1) in the unconstrained space unless ``jitter=False``.
    jitter : bool, default True
    initial_points : numpy.ndarray, shape (chains, n_dim), optional
        Raveled unconstrained starting points, one per chain (in the order of
        ``model.continuous_value_vars``), taken as they are: e.g. reference
        draws, so that a run without warm-up measures the stationary bias.
        Replaces ``initvals`` and ``jitter``.
    random_seed : int, SeedSequence or Generator, optional
        One seed for the whole run: the same seed and ``chains`` give
        identical draws.
    discard_tuned_samples : bool, default True
        As for ``pm.sample``: ``False`` adds the warm-up draws and stats as the
        groups ``warmup_posterior`` and ``warmup_sample_stats``.
    compute_convergence_checks : bool, default True
        PyMC's checks after sampling (R-hat, ESS, divergences), logged as
        ``pm.sample`` logs them.
    progress : bool, default False
        A tqdm progress bar.
    cores : int, default 1
        Threads over which each large batched call is split (the numba
        kernels release the GIL); the draws are the same for any value. On
        the 2-core machine of ``docs/performance.md`` splitting gave 0.89-1.0x
        (the batched kernels are memory-bound there), hence the default.
    backend : {"numba", "c"}, default "numba"
        PyTensor backend of the compiled functions (numba measured faster,
        ``docs/performance.md``).
    compile_kwargs : dict, optional
        Passed on to :func:`pymc.pytensorf.compile` (``mode`` overrides
        ``backend``).

    Returns
    -------
    xarray.DataTree
        The layout of ``pm.sample``'s: ``posterior`` (constrained values and
        deterministics, dims ``chain``, ``draw`` and the model's), and
        ``sample_stats`` with the stats of the per-chain steps (``step_size``,
        ``n_steps``, ``diverging``, ``energy_error``, ``lp``, ``left_bulk``, and for PMM
        ``n_midpoints`` and ``lmc_fallback``) and ``warmup_restarts`` (dims
        ``chain``: how often each chain was restarted during warm-up), plus
        ``observed_data`` and ``constant_data`` where the model has them.
        On ``KeyboardInterrupt`` the draws made so far, with a warning; the
        ``sample_stats`` attribute ``interrupted`` says so.

    Notes
    -----
    **Pooled adaptation.** All chains share one step size and one
    preconditioner. The chains sample one posterior, so an estimate pooled over
    ``C`` chains has ``C`` times the samples of a per-chain one: the dual
    averaging is fed the mean acceptance over the chains (its noise shrinks as
    ``1/sqrt(C)``) and the preconditioner is estimated from ``C x window``
    draws, which makes short warm-ups reliable with many chains. One step size
    also keeps the update one set of coefficients for the batch. The price is
    that a few chains in a bad region drag the shared step size down for all:
    hence the stray-chain restarts, measured in ``docs/method.md``.

    **Randomness.** One :class:`numpy.random.Generator` draws the random numbers
    of all chains per iteration, so chains are independent, and the draws of
    chain ``m`` depend on ``C`` (unlike ``pm.sample``'s per-chain generators).
    """
    accuracy = check_accuracy(accuracy, target_accept, adapt_step_size)
    chains, draws, tune, K, step0, target = _check_options(
        chains,
        draws,
        tune,
        method,
        K,
        step_size,
        adapt_step_size,
        target_accept,
        max_energy_error,
        backend,
    )
    check_precondition(precondition, 0)
    blocks_per_draw = check_int("blocks_per_draw", blocks_per_draw, 1)
    kinetic = method in ("upmm", "ulmc")
    if kinetic:
        kinetic_options = check_kinetic_options(friction, energy_var_target, accuracy)
    elif friction is not None or energy_var_target is not None:
        raise ValueError(
            "friction and energy_var_target are options of the kinetic methods 'upmm' and "
            f"'ulmc', not of method={method!r}"
        )
    else:
        kinetic_options = {}
    restart_stray_chains = check_bool("restart_stray_chains", restart_stray_chains)
    discard_tuned_samples = check_bool("discard_tuned_samples", discard_tuned_samples)
    compute_convergence_checks = check_bool(
        "compute_convergence_checks", compute_convergence_checks
    )
    cores = check_int("cores", cores, 1)
    model = modelcontext(model)
    value_vars = _continuous_value_vars(model)
    compile_kwargs = dict(compile_kwargs or {})
    mode = compile_kwargs.pop("mode", _BACKENDS[backend])
    rng = np.random.default_rng(random_seed)
    point0 = model.initial_point(0)

    logp_grad = _compiled(
        model,
        ("logp_grad", repr(mode), repr(compile_kwargs), cores),
        lambda: BatchedLogpGrad(
            model, value_vars, point0, mode=mode, compile_kwargs=compile_kwargs, threads=cores
        ),
    )
    try:
        n = logp_grad.n_dim
        x, logp, grad = _initial_points(
            model, value_vars, logp_grad, chains, initvals, jitter, rng, initial_points
        )
        warmup = Warmup(
            n,
            step_size=step0,
            adapt_step_size=adapt_step_size,
            target_accept=target,
            precondition=check_precondition(precondition, n),
            restart_stray=restart_stray_chains,
            per_row_step=True,
            stability_limit=OBABO_STABILITY_LIMIT if kinetic else pmm_stability_limit(K),
            accuracy=accuracy,
            **kinetic_options,
        )
        warmup.reset(tune * blocks_per_draw)
        t_start = time.perf_counter()
        run = _run(
            logp_grad,
            LangevinState(x, logp, grad),
            warmup,
            rng,
            draws=draws,
            tune=tune,
            K=K,
            blocks_per_draw=blocks_per_draw,
            draw_fn=draw_randomized_midpoint if method == "rmm" else None,
            max_energy_error=float(max_energy_error),
            keep_tune=not discard_tuned_samples,
            progress=progress,
        )
        sampling_time = time.perf_counter() - t_start
    finally:
        if _reused is None:
            logp_grad.close()

    stats = dict(run.stats)
    if K == 1:
        stats.pop("n_midpoints")
        stats.pop("lmc_fallback")
    if not kinetic:
        stats.pop("friction")
    n_warmup = min(tune, run.n_recorded) if not discard_tuned_samples else 0
    idata = _to_datatree(
        model, value_vars, point0, run.x, stats, tune, n_warmup, sampling_time, mode, compile_kwargs
    )
    restarts = warmup.n_restarts if warmup.n_restarts is not None else np.zeros(chains, int)
    idata["sample_stats"] = (
        idata["sample_stats"].to_dataset().assign(warmup_restarts=("chain", restarts))
    )
    idata["sample_stats"].attrs["interrupted"] = int(run.interrupted)

    messages = []
    if run.interrupted:
        kept = run.n_recorded - n_warmup
        messages.append(
            f"sample_chains was interrupted after {run.n_iterations} of {tune + draws} "
            f"iterations ({min(run.n_iterations, tune)} of {tune} tuning); each of the "
            f"{chains} chains has {kept} kept draws"
            + (
                ""
                if run.n_iterations > tune
                else (
                    ", all of them from warm-up"
                    if not discard_tuned_samples
                    else ": its current point in the unfinished warm-up"
                )
            )
            + "."
        )
    notes = []
    if restarts.any():
        late = warmup.late_restarts
        text = (
            f"{int((restarts > 0).sum())} of {chains} chains were restarted during warm-up from "
            "the chains of highest log density, because theirs stayed more than a factor e^10 "
            f"below ({late} of the restarts at the end of the last window: "
            + (
                "chains still stray after most of the warm-up sit in a spurious local "
                "mode, or in a genuine mode of much lower density. If the posterior has "
                "genuine modes of very different density, pass restart_stray_chains=False"
                if late
                else "the others were chains still on their way from their start"
            )
            + "). Per chain: sample_stats['warmup_restarts']."
        )
        (messages if late else notes).append(text)
    messages += run.problems
    left = run.stats["left_bulk"][n_warmup:].any(axis=0)
    if left.any():
        messages.append(
            f"{int(left.sum())} of {chains} chains left the bulk of the posterior during "
            "sampling: the moving average of their log density fell more than the stray-chain "
            "margin below the level of the end of warm-up. The step size is probably outside "
            "the sampler's stability region there: rerun with a higher target_accept or a "
            "smaller step_size, or use NUTS. Per draw: sample_stats['left_bulk']; chains: "
            f"{np.flatnonzero(left).tolist()[:20]}."
        )
    warns = [SamplerWarning(WarningType.BAD_PARAMS, m, "info") for m in notes]
    warns += [SamplerWarning(WarningType.BAD_PARAMS, m, "warn") for m in messages]
    if compute_convergence_checks and run.n_recorded > n_warmup:
        warns += run_convergence_checks(idata, model)
    log_warnings(warns)
    return idata


def _run(
    logp_grad: BatchedLogpGrad,
    state: LangevinState,
    warmup: Warmup,
    rng: np.random.Generator,
    *,
    draws: int,
    tune: int,
    K: int,
    max_energy_error: float,
    keep_tune: bool,
    blocks_per_draw: int = 1,
    draw_fn: Callable[..., Any] | None = None,
    progress: bool,
) -> _Run:
    """The loop: transitions and warm-up updates, record. Stops early, keeping all, on Ctrl-C.

    Each of the ``tune + draws`` iterations runs ``blocks_per_draw`` transitions, each
    followed by the warm-up update while tuning, and records the last state.
    """
    C, n = state.x.shape
    first_kept = 0 if keep_tune else tune
    n_kept = tune + draws - first_kept
    out_x = np.empty((n_kept, C, n), dtype=state.x.dtype)
    out = {
        "step_size": np.empty((n_kept, C)),
        "n_steps": np.empty((n_kept, C), dtype=np.int64),
        "n_midpoints": np.empty((n_kept, C), dtype=np.int64),
        "diverging": np.empty((n_kept, C), dtype=bool),
        "energy_error": np.empty((n_kept, C)),
        "model_logp": np.empty((n_kept, C)),
        "lmc_fallback": np.empty((n_kept, C), dtype=bool),
        "friction": np.empty((n_kept, C)),
        "left_bulk": np.zeros((n_kept, C), dtype=bool),
    }
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tune + draws, desc=f"sample_chains ({C} chains)")
    problems: list[str] = []
    it = 0
    interrupted = False
    last = None  # the latest (state, info, params), kept for an interrupt during warm-up
    try:
        start_evals = warmup.start(state, logp_grad) if tune else 0
        for it in range(tune + draws):
            tuning = it < tune
            run = advance(
                logp_grad,
                state,
                warmup,
                rng,
                K=K,
                n_blocks=blocks_per_draw,
                max_energy_error=max_energy_error,
                tuning=tuning,
                draw_fn=draw_fn,
            )
            state, info, params = run.state, run.info, run.params
            last = (state, info, params)
            spent = run.n_evals + (start_evals if it == 0 else 0)
            if tuning and it + 1 == tune:
                problems = warmup.finish()
            if it >= first_kept:
                _record(out_x, out, it - first_kept, state, info, params)
                out["n_steps"][it - first_kept] += spent
                if not tuning:
                    out["left_bulk"][it - first_kept] = warmup.watch(state.logp)
            if bar is not None:
                bar.update()
        it += 1
    except KeyboardInterrupt:
        interrupted = True
    finally:
        if bar is not None:
            bar.close()
    n_recorded = max(it - first_kept, 0)
    if interrupted and n_recorded == 0 and last is not None:
        # Interrupted during a warm-up whose draws are not kept: each chain's current point
        # is returned as its one draw rather than nothing (the message says so).
        _record(out_x, out, 0, *last)
        n_recorded = 1
    return _Run(
        out_x[:n_recorded],
        {k: v[:n_recorded] for k, v in out.items()},
        n_recorded,
        it,
        interrupted,
        problems,
    )


def _record(
    out_x: np.ndarray,
    out: dict[str, np.ndarray],
    d: int,
    state: LangevinState,
    info: LangevinInfo,
    params: LangevinParams,
) -> None:
    out_x[d] = state.x
    out["step_size"][d] = params.step_size  # one for all chains, or one per chain
    out["friction"][d] = np.nan if params.friction is None else params.friction
    out["n_steps"][d] = info.n_steps
    out["n_midpoints"][d] = info.n_midpoints
    out["diverging"][d] = info.diverging
    out["energy_error"][d] = info.energy_error
    out["model_logp"][d] = state.logp
    out["lmc_fallback"][d] = info.fallback


def _to_datatree(
    model: Model,
    value_vars: Sequence[pt.TensorVariable],
    point0: dict[str, np.ndarray],
    draws_x: np.ndarray,
    stats: dict[str, np.ndarray],
    tune: int,
    n_warmup: int,
    sampling_time: float,
    mode: Any,
    compile_kwargs: dict,
) -> DataTree:
    """``pm.sample``'s DataTree from raveled unconstrained draws ``(n_warmup + draws, C, n)``."""
    import pymc

    n_draws, C, n = draws_x.shape
    names, fn = _compiled(
        model,
        ("point_fn", repr(mode), repr(compile_kwargs)),
        lambda: _batched_point_fn(model, value_vars, point0, {"mode": mode, **compile_kwargs}),
    )
    flat = draws_x.reshape(n_draws * C, n)
    chunk = max(1, 2**22 // max(n, 1))
    pieces: list[list[np.ndarray]] = [fn(flat[i : i + chunk]) for i in range(0, len(flat), chunk)]
    posterior = {}
    for j, name in enumerate(names):
        values = np.concatenate([p[j] for p in pieces], axis=0)
        values = values.reshape(n_draws, C, *values.shape[1:])
        posterior[name] = np.swapaxes(values, 0, 1)
    converter = DataTreeConverter(prior={}, model=model)  # for coords, dims and data groups
    attrs = {"sampling_time": sampling_time, "tuning_steps": tune}
    stats = {_STAT_RENAME.get(k, k): np.swapaxes(v, 0, 1) for k, v in stats.items()}
    groups: dict[str, Any] = {}
    with warnings.catch_warnings():
        # Many chains and few draws is this sampler's normal use, not a mislabelled array.
        warnings.filterwarnings("ignore", message="Found chain dimension to be longer")
        for prefix, part in (("warmup_", slice(0, n_warmup)), ("", slice(n_warmup, None))):
            if part.stop == 0:
                continue
            groups[f"{prefix}posterior"] = dict_to_dataset(
                {k: v[:, part] for k, v in posterior.items()},
                inference_library=pymc,
                coords=converter.coords,
                dims=converter.dims,
                attrs=attrs,
            )
            groups[f"{prefix}sample_stats"] = dict_to_dataset(
                {k: v[:, part] for k, v in stats.items()},
                inference_library=pymc,
                dims=None,
                coords=converter.coords,
                attrs=attrs,
            )
    groups["observed_data"] = converter.observed_data_to_xarray()
    groups["constant_data"] = converter.constant_data_to_xarray()
    order = ["posterior", "sample_stats", "observed_data", "constant_data"]
    order += ["warmup_posterior", "warmup_sample_stats"]
    return DataTree.from_dict({f"/{k}": groups[k] for k in order if groups.get(k) is not None})
