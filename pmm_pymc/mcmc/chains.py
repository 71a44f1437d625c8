"""Many chains at once: PMM and LMC over a batch of chains with one compiled call per evaluation.

:func:`sample_chains` advances ``C`` chains of a PyMC model together. The
model's log density and its gradient are compiled once for a *batch* of raveled
points (PyTensor's graph vectorisation of the model's logp over a leading chain
axis, then the gradient of the summed batch), so a draw of all ``C`` chains
costs two compiled calls however large ``C`` is: one at the fired midpoints of
all chains (stacked) and one at the ``C`` new points. The update itself is
:func:`pmm_pymc.core.pmm_step` on the whole batch; this module holds no copy of
it.

Adaptation is pooled across the chains (one step size, one diagonal inverse
mass matrix); see :func:`sample_chains` for the schedule and why.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Literal

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
from pymc.step_methods.step_sizes import DualAverageAdaptation
from pymc.util import RandomSeed, get_default_varnames
from pymc.vartypes import discrete_types
from pytensor.graph.fg import FunctionGraph
from pytensor.graph.replace import vectorize_graph
from pytensor.tensor.blockwise import Blockwise
from pytensor.tensor.special import LogSumExp
from xarray import DataTree

from pmm_pymc._validate import check_int
from pmm_pymc.core import fired_from_mask, langevin_chain, pmm_step
from pmm_pymc.mcmc.warmup import check_step_options, initial_step_size, pmm_stability_limit

__all__ = [
    "BatchedLogpGrad",
    "DEFAULT_K",
    "batched_log_accept_ratio",
    "sample_chains",
]

DEFAULT_K = 4
"""Default number of PMM sub-steps; the same as :class:`pmm_pymc.PoissonMidpoint`'s."""

_BACKENDS = {"numba": "NUMBA", "c": "CVM"}
# pm.sample's sample_stats renames the step's "model_logp" to "lp" (pymc.backends.arviz).
_STAT_RENAME = {"model_logp": "lp"}
_MAX_INIT_TRIES = 10
MIN_ROWS_PER_THREAD = 64
"""The fewest rows per thread for which :class:`BatchedLogpGrad` splits a batch."""
_GAP_NOISE_MIN_SIZE = 8192  # C x n from which drawing noise per gap is the faster (measured)
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


def batched_log_accept_ratio(
    logp: np.ndarray,
    logp_new: np.ndarray,
    x: np.ndarray,
    x_new: np.ndarray,
    grad: np.ndarray,
    grad_new: np.ndarray,
    step_size: float,
    inv_mass: np.ndarray | None = None,
) -> np.ndarray:
    """Row-wise :func:`pmm_pymc.mcmc.warmup.langevin_log_accept_ratio` for a batch of moves.

    Parameters
    ----------
    logp, logp_new : numpy.ndarray, shape (B,)
        ``log pi`` at the starts and the ends of the moves.
    x, x_new : numpy.ndarray, shape (B, d)
    grad, grad_new : numpy.ndarray, shape (B, d)
        ``grad log pi`` at ``x`` and ``x_new`` (not preconditioned).
    step_size : float
    inv_mass : numpy.ndarray, shape (d,), optional

    Returns
    -------
    numpy.ndarray, shape (B,)
        The log MALA acceptance ratio of each move, ``-inf`` where not finite.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        diff = grad_new - grad
        if inv_mass is not None:
            diff *= inv_mass
        diff *= step_size
        diff += 2.0 * (x_new - x)
        log_ratio = logp_new - logp - 0.25 * np.einsum("ij,ij->i", diff, grad + grad_new)
    return np.where(np.isfinite(log_ratio), log_ratio, -np.inf)


def _gap_noise(rng: np.random.Generator, mask: np.ndarray, n: int) -> np.ndarray:
    """Sub-step noise ``(K, C, n)`` for the Langevin chain, one Gaussian per gap between firings.

    With ``a_i = 1`` and equal ``s_i`` (:func:`pmm_pymc.core.langevin_chain`),
    :func:`pmm_pymc.core.pmm_step` uses the noise only through its partial sums
    ``S_i = sum_{j<i} noise[j]`` at the fired midpoints ``i`` and ``S_K`` at the
    end: a Gaussian random walk seen at those sub-steps. Drawing, for each gap
    ``[i, i')`` between consecutive fired sub-steps (``0`` and ``K`` included),
    one ``N(0, (i' - i) I)`` vector placed at sub-step ``i`` and zeros elsewhere
    gives those sums exactly their joint law, at ``1 + #fired`` Gaussian vectors
    per chain instead of ``K`` (the midpoints that do not fire are never used).
    With ``K = 1`` it is the same draws as ``rng.standard_normal((1, C, n))``.

    Parameters
    ----------
    rng : numpy.random.Generator
    mask : numpy.ndarray of bool, shape (K, C)
        The fired midpoints (row 0 ignored).
    n : int
        Dimension of a chain's state.
    """
    K, C = mask.shape
    starts = mask.copy()
    starts[0] = True
    gap = np.empty((K, C))
    following = np.full(C, K)  # the first start after sub-step j (or K)
    for j in range(K - 1, -1, -1):
        gap[j] = following - j
        following = np.where(starts[j], j, following)
    z = rng.standard_normal((int(starts.sum()), n))
    z *= np.sqrt(gap[starts])[:, None]
    noise = np.zeros((K, C, n))
    noise[starts] = z
    return noise


# ------------------------------------------------------------------------------------------------
# Pooled adaptation
# ------------------------------------------------------------------------------------------------


def _adaptation_windows(tune: int) -> list[tuple[int, int]]:
    """Stan's windowed schedule for the inverse mass matrix: ``[(start, end), ...]``.

    An initial buffer of 75 iterations (step size only), slow windows of 25,
    50, 100, ... iterations (the last one stretched to the terminal buffer),
    and a terminal buffer of 50 (step size only). Short warm-ups use 15% / 75% /
    10%, as Stan does. Fewer than 20 tuning iterations: no window.
    """
    if tune < 20:
        return []
    init, term, base = 75, 50, 25
    if init + term + base > tune:
        init, term = int(0.15 * tune), int(0.1 * tune)
        base = tune - init - term
    windows = []
    start, size, last = init, base, tune - term
    while start < last:
        end = start + size
        if end + 2 * size > last:
            end = last
        windows.append((start, end))
        start, size = end, 2 * size
    return windows


@dataclass
class _PooledVariance:
    """Welford/Chan accumulator of the variance of rows pooled over chains and iterations."""

    n: int
    mean: np.ndarray
    m2: np.ndarray

    @classmethod
    def empty(cls, d: int) -> _PooledVariance:
        return cls(0, np.zeros(d), np.zeros(d))

    def add(self, rows: np.ndarray) -> None:
        nb = rows.shape[0]
        mb = rows.mean(axis=0)
        m2b = ((rows - mb) ** 2).sum(axis=0)
        n = self.n + nb
        delta = mb - self.mean
        self.mean = self.mean + delta * (nb / n)
        self.m2 = self.m2 + m2b + delta**2 * (self.n * nb / n)
        self.n = n

    def regularized(self) -> np.ndarray:
        """Stan's shrunk variance ``n/(n+5) var + 1e-3 * 5/(n+5)``."""
        var = self.m2 / max(self.n - 1, 1)
        return (self.n / (self.n + 5.0)) * var + 1e-3 * (5.0 / (self.n + 5.0))


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
    precondition: Any,
    backend: Any,
) -> tuple[int, int, int, int, float | None, float]:
    chains = check_int("chains", chains, 1)
    draws = check_int("draws", draws, 1)
    tune = check_int("tune", tune, 0)
    if not (isinstance(method, str) and method in ("pmm", "lmc")):
        raise ValueError(f"method must be 'pmm' or 'lmc', got {method!r}")
    if method == "lmc":
        if K is not None and K != 1:
            raise ValueError(f"K must be None or 1 with method='lmc', got {K!r}")
        K = 1
    else:
        K = check_int("K", DEFAULT_K if K is None else K, 1)
    step_size, target_accept = check_step_options(
        step_size, adapt_step_size, target_accept, max_energy_error, method
    )
    if not (precondition is None or (isinstance(precondition, str) and precondition == "diag")):
        raise ValueError(f"precondition must be 'diag' or None, got {precondition!r}")
    if not (isinstance(backend, str) and backend in _BACKENDS):
        raise ValueError(f"backend must be one of {sorted(_BACKENDS)}, got {backend!r}")
    return (
        chains,
        draws,
        tune,
        K,
        step_size,
        target_accept,
    )


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
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Jittered initial points (as pm.sample's jitter+adapt_diag), raveled, with finite logp."""
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
        bad = ~(np.isfinite(logp) & np.isfinite(grad).all(axis=1))
        if not bad.any():
            break
        x[bad] = np.stack([ravel(ipfn(int(s))) for s in rng.integers(2**30, size=bad.sum())])
        logp[bad], grad[bad] = logp_grad(x[bad])
    bad = ~(np.isfinite(logp) & np.isfinite(grad).all(axis=1))
    if bad.any():
        first = int(np.flatnonzero(bad)[0])
        point = DictToArrayBijection.rmap(template._replace(data=x[first]))
        model.check_start_vals(point)  # raises SamplingError naming the variables
        raise SamplingError(
            f"Non-finite gradient of the log density at the initial point of chain {first}: {point}"
        )
    return x, logp, grad


def sample_chains(
    model: Model | None = None,
    *,
    chains: int = 256,
    draws: int = 1000,
    tune: int = 1000,
    method: Literal["pmm", "lmc"] = "pmm",
    K: int | None = None,
    step_size: float | None = None,
    adapt_step_size: bool = True,
    target_accept: float | None = None,
    max_energy_error: float = 1000.0,
    precondition: Literal["diag"] | None = "diag",
    initvals: dict | None = None,
    jitter: bool = True,
    random_seed: RandomSeed = None,
    discard_tuned_samples: bool = True,
    progress: bool = False,
    cores: int = 1,
    backend: Literal["numba", "c"] = "numba",
    compile_kwargs: dict | None = None,
) -> DataTree:
    r"""Run ``chains`` PMM or LMC chains together, vectorised over the chains.

    Every drift evaluation of all chains is one compiled call of the model's
    log density and gradient vectorised over a leading chain axis
    (:class:`BatchedLogpGrad`): per draw, one call at the stacked fired
    midpoints of all chains and one at the ``C`` new points. The update is
    :func:`pmm_pymc.core.pmm_step` on the batch, the same one
    :class:`pmm_pymc.PoissonMidpoint` runs per chain.

    Parameters
    ----------
    model : pymc.Model, optional
        Default: the model on the context stack. All free variables must be
        continuous.
    chains : int, default 256
        Number of chains ``C`` (>= 1).
    draws, tune : int, default 1000
        Draws kept per chain, and warm-up iterations before them (discarded).
    method : {"pmm", "lmc"}, default "pmm"
        The Poisson Midpoint Method or unadjusted Langevin Monte Carlo.
    K : int, optional
        PMM sub-steps per draw (default :data:`DEFAULT_K`); must be None or 1
        for ``"lmc"``.
    step_size : float, optional
        ``eta``, with ``x' = x + eta M^{-1} grad logp(x) + sqrt(2 eta) M^{-1/2} xi``
        for LMC. ``None``: adapted during tuning. A number with
        ``adapt_step_size=True`` is the starting value of the adaptation.
    adapt_step_size : bool, default True
        Dual averaging (PyMC's ``DualAverageAdaptation``) of the *mean over the
        chains* of the would-be MALA acceptance of each move
        (:func:`pmm_pymc.mcmc.warmup.langevin_log_accept_ratio`).
    target_accept : float, optional
        Its target; default :data:`pmm_pymc.mcmc.warmup.DEFAULT_TARGET_ACCEPT`.
    max_energy_error : float, default 1000
        A move whose energy error (minus its log MALA ratio) exceeds this is a
        divergence: rejected, the chain stays put.
    precondition : {"diag", None}, default "diag"
        ``"diag"``: ``M^{-1}`` is the posterior variance pooled over all chains,
        estimated in Stan's windows during tuning. ``None``: ``M = I``.
    initvals : dict, optional
        Initial values, as for ``pm.sample``; each chain's start is jittered
        by U(-1, 1) in the unconstrained space unless ``jitter=False``.
    jitter : bool, default True
    random_seed : int, SeedSequence or Generator, optional
        One seed for the whole run: the same seed and ``chains`` give
        identical draws.
    discard_tuned_samples : bool, default True
        As for ``pm.sample``: ``False`` adds the warm-up draws and stats as the
        groups ``warmup_posterior`` and ``warmup_sample_stats``.
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
        ``n_steps``, ``diverging``, ``energy_error``, ``lp``, and for PMM
        ``n_midpoints`` and ``lmc_fallback``), plus ``observed_data`` and
        ``constant_data`` where the model has them.

    Notes
    -----
    **Pooled adaptation.** All chains share one step size and one diagonal
    inverse mass matrix. The chains sample one posterior, so an estimate
    pooled over ``C`` chains has ``C`` times the samples of a per-chain one:
    the dual averaging is fed the mean acceptance over the chains (its noise
    shrinks as ``1/sqrt(C)``) and the variance is estimated from
    ``C x window`` draws, which makes short warm-ups reliable with many
    chains. A single step size also keeps the update one set of coefficients
    for the batch (:class:`pmm_pymc.core.AffineChain` holds scalars). The
    inverse mass matrix is re-estimated at the end of each of Stan's windows
    (75-iteration initial buffer, windows of 25, 50, 100, ..., 50-iteration
    terminal buffer) and the step-size adaptation restarts after each update.
    While the step size adapts, warm-up moves are Metropolis-adjusted with
    their MALA acceptance (as :class:`pmm_pymc.PoissonMidpoint` does), so a
    too-large trial step cannot throw chains out of the typical set; the kept
    draws are unadjusted. The cost: chains in very different regions (e.g.
    different modes of different scale) share one step size.

    **Randomness.** One :class:`numpy.random.Generator` draws the noise of all
    chains per iteration, so chains are independent, and the draws of chain
    ``m`` depend on ``C`` (unlike ``pm.sample``'s per-chain generators).
    """
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
        precondition,
        backend,
    )
    cores = check_int("cores", cores, 1)
    if not isinstance(discard_tuned_samples, bool | np.bool_):
        raise ValueError(
            f"discard_tuned_samples must be True or False, got {discard_tuned_samples!r}"
        )
    model = modelcontext(model)
    value_vars = _continuous_value_vars(model)
    compile_kwargs = dict(compile_kwargs or {})
    mode = compile_kwargs.pop("mode", _BACKENDS[backend])
    rng = np.random.default_rng(random_seed)
    point0 = model.initial_point(0)

    logp_grad = BatchedLogpGrad(
        model, value_vars, point0, mode=mode, compile_kwargs=compile_kwargs, threads=cores
    )
    try:
        n = logp_grad.n_dim
        x, logp, grad = _initial_points(model, value_vars, logp_grad, chains, initvals, jitter, rng)
        t_start = time.perf_counter()
        run = _run(
            logp_grad,
            x,
            logp,
            grad,
            rng,
            draws=draws,
            tune=tune,
            K=K,
            step0=step0 if step0 is not None else initial_step_size(n),
            adapt_step_size=bool(adapt_step_size),
            target=target,
            max_energy_error=float(max_energy_error),
            precondition=precondition,
            keep_tune=not discard_tuned_samples,
            progress=progress,
        )
        sampling_time = time.perf_counter() - t_start
    finally:
        logp_grad.close()

    n_div = int(run["diverging"][tune if not discard_tuned_samples else 0 :].sum())
    if n_div:
        warnings.warn(
            f"There were {n_div} divergences after tuning (of {chains * draws} draws): "
            "non-finite or exploding moves that were rejected. Decrease step_size or "
            "increase target_accept.",
            UserWarning,
            stacklevel=2,
        )
    stats = {k: v for k, v in run.items() if k != "x"}
    if method == "lmc":
        stats.pop("n_midpoints")
        stats.pop("lmc_fallback")
    return _to_datatree(
        model,
        value_vars,
        point0,
        run["x"],
        stats,
        tune,
        0 if discard_tuned_samples else tune,
        sampling_time,
        mode,
        compile_kwargs,
    )


def _run(
    logp_grad: BatchedLogpGrad,
    x: np.ndarray,
    logp: np.ndarray,
    grad: np.ndarray,
    rng: np.random.Generator,
    *,
    draws: int,
    tune: int,
    K: int,
    step0: float,
    adapt_step_size: bool,
    target: float,
    max_energy_error: float,
    precondition: str | None,
    keep_tune: bool,
    progress: bool,
) -> dict[str, np.ndarray]:
    """The warm-up and sampling loop; returns the kept draws ``(n_kept, C, n)`` and stats.

    ``n_kept`` is ``draws``, or ``tune + draws`` with ``keep_tune``.
    """
    C, n = x.shape
    inv_mass = np.ones(n) if precondition == "diag" else None
    noise_sd = None
    windows = _adaptation_windows(tune) if precondition == "diag" else []
    window_ends = {end: start for start, end in windows}
    window_starts = {start for start, _ in windows}
    pooled: _PooledVariance | None = None

    def new_dual_averaging(initial: float) -> DualAverageAdaptation:
        # The constants of pymc's NUTS and of pmm_pymc.PoissonMidpoint.
        return DualAverageAdaptation(initial, target, 0.05, 0.75, 10)

    dual = new_dual_averaging(step0)
    eta = step0
    chain = langevin_chain(eta, K)
    eta_of_chain = eta

    first_kept = 0 if keep_tune else tune
    n_kept = tune + draws - first_kept
    out_x = np.empty((n_kept, C, n), dtype=x.dtype)
    out = {
        "step_size": np.empty((n_kept, C)),
        "n_steps": np.empty((n_kept, C), dtype=np.int64),
        "n_midpoints": np.empty((n_kept, C), dtype=np.int64),
        "diverging": np.empty((n_kept, C), dtype=bool),
        "energy_error": np.empty((n_kept, C)),
        "model_logp": np.empty((n_kept, C)),
        "lmc_fallback": np.empty((n_kept, C), dtype=bool),
    }
    midpoint_ok = np.ones(C, dtype=bool)
    stiffness = np.zeros(C)
    limit = pmm_stability_limit(K)

    def drift(points: np.ndarray, groups: Any) -> np.ndarray:
        lp, g = logp_grad(points)
        members = groups[0][1] if len(groups) == 1 else np.concatenate([i for _, i in groups])
        finite = np.isfinite(lp) & np.isfinite(g).all(axis=1)
        midpoint_ok[members[~finite]] = False
        b = g if inv_mass is None else g * inv_mass
        # Secant estimate of the local Lipschitz constant of the preconditioned drift between
        # each chain's start and its fired midpoints, ||M^{1/2} db|| / ||M^{1/2} dx||, as
        # pmm_pymc.PoissonMidpoint computes it per chain.
        with np.errstate(all="ignore"):
            dx = points - x[members]
            db = b - drift0[members]
            if inv_mass is not None:
                num, den = (db * db / inv_mass).sum(axis=1), (dx * dx / inv_mass).sum(axis=1)
            else:
                num, den = (db * db).sum(axis=1), (dx * dx).sum(axis=1)
            ratio = np.sqrt(num / den)
        ratio = np.where(finite & (den > 0), ratio, 0.0)
        start = 0
        for _, idx in groups:  # members are unique within a group: plain fancy indexing
            stop = start + idx.shape[0]
            stiffness[idx] = np.maximum(stiffness[idx], ratio[start:stop])
            start = stop
        return b

    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=tune + draws, desc=f"sample_chains ({C} chains)")
    for it in range(tune + draws):
        tuning = it < tune
        eta_used = eta
        if it in window_starts:
            pooled = _PooledVariance.empty(n)
        if eta != eta_of_chain:
            chain, eta_of_chain = langevin_chain(eta, K), eta
        drift0 = grad if inv_mass is None else grad * inv_mass
        mask = np.zeros((K, C), dtype=bool)
        if K > 1:
            mask[1:] = rng.random((K - 1, C)) < 1.0 / K
            fired = fired_from_mask(mask)
        else:
            fired = [None]
        n_mid = mask.sum(axis=0)
        if K > 1 and C * n >= _GAP_NOISE_MIN_SIZE:
            noise = _gap_noise(rng, mask, n)
        else:  # small batches: one call is cheaper than the gap bookkeeping
            noise = rng.standard_normal((K, C, n))
        if noise_sd is not None:
            noise *= noise_sd
        midpoint_ok[:] = True
        stiffness[:] = 0.0
        x_new, info = pmm_step(drift, x, drift0, noise, fired, chain)
        # Outside PMM's stability region: the frozen-drift endpoint, which is exactly the LMC
        # step of size eta with the same noise (the per-chain step's fallback).
        fallback = midpoint_ok & (eta * stiffness > limit)
        if fallback.any():
            x_new = np.where(fallback[:, None], info.endpoint, x_new)
        logp_new, grad_new = logp_grad(x_new)
        ok = midpoint_ok & np.isfinite(logp_new) & np.isfinite(grad_new).all(axis=1)
        log_ratio = batched_log_accept_ratio(
            logp, logp_new, x, x_new, grad, grad_new, eta, inv_mass
        )
        energy_error = np.where(ok, -log_ratio, np.inf)
        ok &= energy_error <= max_energy_error
        moved = ok
        adapting = tuning and adapt_step_size
        if tuning and (adapting or precondition == "diag"):
            # Warm-up only: Metropolis-adjust with the would-be MALA acceptance.
            u = rng.random(C)
            with np.errstate(over="ignore"):
                moved = ok & ((energy_error <= 0) | (u < np.exp(-energy_error)))
        if moved.all():  # the usual case after warm-up: no copies
            x, logp, grad = x_new, logp_new, grad_new
        else:
            x = np.where(moved[:, None], x_new, x)
            logp = np.where(moved, logp_new, logp)
            grad = np.where(moved[:, None], grad_new, grad)

        if adapting:
            with np.errstate(over="ignore"):
                accept = np.where(energy_error > 0, np.exp(-energy_error), 1.0)
            dual.update(float(accept.mean()), True)
            eta = float(dual.current(True))
        if pooled is not None and tuning:
            pooled.add(x)
            if it + 1 in window_ends:
                inv_mass = pooled.regularized()
                noise_sd = np.sqrt(inv_mass)
                pooled = None
                if adapt_step_size:
                    dual = new_dual_averaging(eta)
        if it + 1 == tune and adapt_step_size:
            eta = float(dual.current(False))
        if it >= first_kept:
            d = it - first_kept
            out_x[d] = x
            out["step_size"][d] = eta_used
            out["n_steps"][d] = 1 + n_mid
            out["n_midpoints"][d] = n_mid
            out["diverging"][d] = ~ok
            out["energy_error"][d] = energy_error
            out["model_logp"][d] = logp
            out["lmc_fallback"][d] = fallback
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    out["x"] = out_x
    return out


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
    names, fn = _batched_point_fn(model, value_vars, point0, {"mode": mode, **compile_kwargs})
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
