"""The one warm-up of the Langevin samplers: windows, step size and preconditioner.

:class:`Warmup` is used by both samplers: the PyMC step methods
(:mod:`pmm_pymc.mcmc.steps`, one row per chain) and
:func:`pmm_pymc.mcmc.chains.sample_chains` (one row per chain of the batch). As
BlackJAX's window adaptation and PyMC's step-size and potential objects, it has three
parts: :meth:`Warmup.start` (before the first tuning transition), :meth:`Warmup.update`
(after every tuning transition, from its :class:`~pmm_pymc.mcmc.kernel.LangevinInfo`) and
:meth:`Warmup.finish` (when tuning ends). What it holds is PyMC sampling state
(:class:`WarmupState`), so a step method saves and restores it as PyMC expects.

The schedule (``docs/method.md`` has the reasons and the measurements):

* **Scale first.** :meth:`Warmup.start` sets the first preconditioner from the curvature
  at the start (:func:`curvature_metric`: a finite-difference Hessian of the compiled
  gradient, ``2 d`` gradient evaluations per row, made positive definite by taking the
  absolute values of its eigenvalues), so that a posterior with scales 1e-5 and 1e3 or a
  correlation of -0.99999 is well conditioned before the step size starts adapting.
* **Stan's windows** (:func:`adaptation_windows`): at the end of each slow window the
  preconditioner is re-estimated from that window's draws and gradients
  (:func:`fisher_estimate`, diagonal or dense, pooled over the rows with Chan's merge), and
  the step-size adaptation restarts.
* **Step size**: PyMC's :class:`~pymc.step_methods.step_sizes.DualAverageAdaptation` of
  the mean over the rows of the would-be MALA acceptance, or, with ``accuracy``, of the
  bias statistic (:func:`bias_terms`, :func:`accuracy_feed`) towards the requested bias;
  the dual-averaged step of the terminal interval is frozen when tuning ends.
* **Stray rows** (many chains only, ``restart_stray=True``): at the end of the initial
  interval and of each slow window, a row whose recent log density lies far below the bulk
  of the rows is restarted from a row in the bulk (:func:`stray_rows`).
* **Stability cap**: with ``stability_limit`` given, :meth:`Warmup.finish` caps the final
  step so that ``eta L`` stays below :data:`STABILITY_SAFETY` times that limit (but at most
  :data:`MAX_CAP_SHRINK` times below the dual-averaged step), ``L`` the largest of the secant
  curvatures of the preconditioned drift seen since the last
  preconditioner update (over the moves and the fired midpoints).
* **Leaving the bulk**: :meth:`Warmup.finish` also sets a floor for the log density, the
  stray-row rule (:func:`stray_threshold`) below the level of the last interval's draws;
  :meth:`Warmup.watch` says during sampling which rows' moving average fell below it.
* **Checks**: :meth:`Warmup.finish` says when the step size ended orders of magnitude
  below its start, or the would-be acceptance is near zero on some rows.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
from pymc.step_methods.state import DataClassState, WithSamplingState, dataclass_state
from pymc.step_methods.step_sizes import DualAverageAdaptation, StepSizeState

from pmm_pymc._validate import check_bool, check_real
from pmm_pymc.mcmc.kernel import LangevinInfo, LangevinState, LogpGrad, Metric, secant_curvature

__all__ = [
    "ACCURACY_SCALE",
    "CURVATURE_MAX_DIM",
    "DEFAULT_TARGET_ACCEPT",
    "DENSE_MAX_DIM",
    "PRECONDITION_KINDS",
    "CURVATURE_QUANTILE",
    "MAX_CAP_SHRINK",
    "STABILITY_SAFETY",
    "Warmup",
    "WarmupState",
    "accuracy_feed",
    "adaptation_windows",
    "bias_terms",
    "check_accuracy",
    "check_kinetic_options",
    "check_precondition",
    "check_step_options",
    "curvature_metric",
    "curvature_refreshes",
    "energy_statistic",
    "fisher_estimate",
    "initial_step_size",
    "scaled_friction",
    "stray_rows",
    "stray_threshold",
]

DEFAULT_TARGET_ACCEPT: dict[str, float] = {"lmc": 0.9, "pmm": 0.9, "ulmc": 0.95, "upmm": 0.9}
"""Default dual-averaging targets of the would-be acceptance, per method.

The kinetic ones were chosen on kidscore_momiq, arK and a regression with a -0.99
intercept-slope correlation (``docs/underdamped.md``): the most ESS per gradient with the
worst sd error within 5 %. Kinetic LMC (``"ulmc"``) needs 0.95 for that (at 0.9 its sd
errors were 4.7-6.5 %); underdamped PMM has 1.3-3.5 % at 0.9 (at 0.8 it reached 5.0 %).
"""

DENSE_MAX_DIM = 200
"""``precondition="auto"`` is ``"dense"`` up to this many dimensions and ``"diag"`` above."""

CURVATURE_MAX_DIM = 1000
"""Above this many dimensions the first preconditioner is the identity, not the curvature."""

PRECONDITION_KINDS = ("auto", "diag", "dense")

COLLAPSE_FACTOR = 1e-2
""":meth:`Warmup.finish` warns when the final step is below this times the first one."""

STUCK_ACCEPT = 0.05
""":meth:`Warmup.finish` warns about rows whose recent would-be acceptance is below this."""

STABILITY_SAFETY = 0.5
"""The final step size keeps ``eta L`` below this fraction of the sampler's stability limit."""

MAX_CAP_SHRINK = 10.0
"""The stability cap never sets the step more than this factor below the dual-averaged one."""

CURVATURE_QUANTILE = 1.0
"""``L`` of the stability cap: this quantile of the secant curvatures of the last interval
(1: the largest; 0.9 let an LMC chain on the GARCH posterior at target 0.5 blow up; the
outliers of the largest, 8e7 on eight schools, are bounded by :data:`MAX_CAP_SHRINK`)."""

MIN_ROWS_FOR_RESTART = 8
"""Stray rows are looked for only with at least this many rows (a bulk to compare with)."""

ACCURACY_SCALE = 0.8
"""The bias statistic aims at ``ACCURACY_SCALE * accuracy`` (calibrated: ``docs/accuracy.md``)."""

_FEED_MAX = 10.0  # a move's share of the bias statistic is clipped here (a divergence counts so)
_FEED_GAIN = 0.15  # dual averaging is fed _FEED_GAIN * (1 - G): G's noise is 3-5x an acceptance's

_TRACE_RATE = 0.05  # exponential moving average of each row's log density and acceptance
_CURVATURE_ROWS = 4  # rows at which the starting curvature is measured
_JITTER = 1e-3  # Stan's regulariser, relative to the current preconditioner


# ------------------------------------------------------------------------------------------------
# Options
# ------------------------------------------------------------------------------------------------


def check_step_options(
    step_size: object,
    adapt_step_size: object,
    target_accept: object,
    max_energy_error: object,
    method: str,
) -> tuple[float | None, float]:
    """Validate the step-size options shared by the per-chain steps and ``sample_chains``.

    Parameters
    ----------
    step_size, adapt_step_size, target_accept, max_energy_error : object
        The user's values. ``target_accept=None`` takes the method's default.
    method : {"lmc", "pmm", "ulmc", "upmm"}
        Which default target applies.

    Returns
    -------
    step_size : float or None
    target_accept : float

    Raises
    ------
    ValueError
        Naming the option and the bad value.
    """
    if step_size is not None:
        step_size = check_real("step_size", step_size, gt=0)
    adapt_step_size = check_bool("adapt_step_size", adapt_step_size)
    if step_size is None and not adapt_step_size:
        raise ValueError(
            "step_size=None needs adapt_step_size=True (nothing would set the step size); "
            "got adapt_step_size=False"
        )
    if target_accept is None:
        target_accept = DEFAULT_TARGET_ACCEPT[method]
    target_accept = check_real("target_accept", target_accept, gt=0, lt=1)
    check_real("max_energy_error", max_energy_error, gt=0)
    return step_size, target_accept


def check_kinetic_options(
    friction: object, energy_var_target: object, accuracy: object = None
) -> dict[str, Any]:
    """Validate kinetic Langevin's options, shared by its step methods and ``sample_chains``.

    Parameters
    ----------
    friction : float or None
        ``gamma > 0``, fixed; ``None``: adapted (:func:`scaled_friction`), starting at
        :data:`FRICTION_FACTOR`.
    energy_var_target : float or None
        Energy-error variance per dimension to adapt the step to (> 0), or ``None``.
    accuracy : object
        The user's ``accuracy``: refused unless ``None`` (it is calibrated for overdamped
        Langevin).

    Returns
    -------
    dict
        The :class:`Warmup` keyword arguments ``friction`` (the first or fixed one),
        ``adapt_friction`` and ``energy_var_target``.
    """
    if accuracy is not None:
        raise ValueError(
            f"accuracy={accuracy!r} is calibrated for overdamped Langevin (PoissonMidpoint, "
            "LangevinMC; sample_chains' 'pmm' and 'lmc'); kinetic Langevin's step adapts to "
            "target_accept or to energy_var_target"
        )
    adapt = friction is None
    friction = FRICTION_FACTOR if adapt else check_real("friction", friction, gt=0)
    if energy_var_target is not None:
        energy_var_target = check_real("energy_var_target", energy_var_target, gt=0)
    return {"friction": friction, "adapt_friction": adapt, "energy_var_target": energy_var_target}


def check_accuracy(
    accuracy: object, target_accept: object, adapt_step_size: object = True
) -> float | None:
    """Validate ``accuracy`` (a tolerated bias in posterior sd), exclusive with ``target_accept``.

    Parameters
    ----------
    accuracy, target_accept, adapt_step_size : object
        The user's values (``accuracy`` needs ``adapt_step_size=True``: it sets the step
        size through the adaptation).

    Returns
    -------
    float or None
        ``accuracy`` as a float in (0, 1), or None when not given.

    Raises
    ------
    ValueError
        When both are given, ``accuracy`` is not a number in (0, 1), or the step size does
        not adapt.
    """
    if accuracy is None:
        return None
    if adapt_step_size is False:
        raise ValueError(
            f"accuracy={accuracy!r} sets the step size by adapting it and needs "
            "adapt_step_size=True; got adapt_step_size=False"
        )
    if target_accept is not None:
        raise ValueError(
            f"give accuracy or target_accept, not both (got accuracy={accuracy!r}, "
            f"target_accept={target_accept!r}): each sets what the step size adapts to"
        )
    return check_real("accuracy", accuracy, gt=0, lt=1)


def bias_terms(
    info: LangevinInfo, step_size: float | np.ndarray, n_dim: int
) -> tuple[np.ndarray, np.ndarray]:
    """The two terms of the bias statistic of one transition, per row.

    With ``e`` the move's :attr:`~pmm_pymc.mcmc.kernel.LangevinInfo.fine_energy_error`,
    ``V`` its :attr:`~pmm_pymc.mcmc.kernel.LangevinInfo.midpoint_variance`, ``d`` the
    dimension and ``eta`` the step size::

        fine = e^2 / (8 d eta)        spread = V / (4 d eta)

    and ``sqrt(E[fine]) + E[spread]`` predicts the relative error of the stationary sd.
    Derivation, on ``N(0, Sigma)`` preconditioned by ``M^{-1} = Sigma`` (``h = eta``):
    the fine chain (``K`` Langevin sub-steps of size ``eta/K``) has stationary sd
    ``(1 - h/(2K))^{-1/2}``, an error of ``h/(4K)``, and its path energy error ``e`` per
    block has ``E[e^2] = d h^3 / (2 K^2)``, so ``sqrt(E[fine]) = h/(4K)``. PMM's midpoint
    correction adds a random error of variance ``V`` to each move; at contraction ``h`` per
    block this widens the stationary variance by ``V / (2 d h)`` relative, the sd by
    ``E[V] / (4 d h)``. For LMC (``K = 1``) ``V = 0``. Checked against the exact
    stationary laws in ``tests/test_accuracy.py``.

    Parameters
    ----------
    info : LangevinInfo
    step_size : float or numpy.ndarray, shape (B,)
    n_dim : int

    Returns
    -------
    fine, spread : numpy.ndarray, shape (B,)
        ``inf`` in ``fine`` where the proposal was not finite.
    """
    scale = 1.0 / (np.asarray(step_size, dtype=float) * n_dim)
    with np.errstate(over="ignore", invalid="ignore"):
        fine = np.nan_to_num(info.fine_energy_error**2 * (scale / 8), nan=np.inf)
    return fine, info.midpoint_variance * (scale / 4)


def accuracy_feed(
    fine: np.ndarray, spread: np.ndarray, fine_level: np.ndarray | float, target: float
) -> np.ndarray:
    """A move's share ``G`` of the bias statistic, in units of the target bias.

    ``G = fine / (target * sqrt(fine_level)) + spread / target``, clipped at
    :data:`_FEED_MAX`. With ``fine_level`` the running mean of ``fine``, ``E[G] = 1``
    where ``sqrt(E[fine]) + E[spread] = target`` (:func:`bias_terms`): the square root is
    taken of a mean, not of each move's (noisy) ``fine``, so a single chain is not biased.

    Parameters
    ----------
    fine, spread : numpy.ndarray
        From :func:`bias_terms`.
    fine_level : numpy.ndarray or float
        A running mean of ``fine`` (> 0).
    target : float
        The bias aimed at.

    Returns
    -------
    numpy.ndarray
    """
    feed = fine / (target * np.sqrt(fine_level)) + spread / target
    return np.minimum(np.nan_to_num(feed, nan=_FEED_MAX), _FEED_MAX)


def check_precondition(precondition: object, n_dim: int) -> str | None:
    """The resolved preconditioner kind: ``"auto"`` becomes ``"dense"`` or ``"diag"``.

    Parameters
    ----------
    precondition : {"auto", "diag", "dense", None}
    n_dim : int
        Number of (raveled) dimensions.

    Returns
    -------
    {"diag", "dense", None}
    """
    if not (
        precondition is None
        or (isinstance(precondition, str) and precondition in PRECONDITION_KINDS)
    ):
        raise ValueError(
            f"precondition must be 'auto', 'diag', 'dense' or None, got {precondition!r}"
        )
    if precondition == "auto":
        return "dense" if n_dim <= DENSE_MAX_DIM else "diag"
    return precondition


def initial_step_size(n_dim: int) -> float:
    """A starting step size ``eta`` for a ``n_dim``-dimensional target.

    MALA's optimal step scales as ``n_dim^{-1/3}`` for product targets with unit
    scale (Roberts & Rosenthal, 1998); dual averaging takes it from there.

    Parameters
    ----------
    n_dim : int
        Number of (raveled) continuous dimensions.

    Returns
    -------
    float
    """
    return 0.25 * float(max(n_dim, 1)) ** (-1.0 / 3.0)


# ------------------------------------------------------------------------------------------------
# Windows and estimates
# ------------------------------------------------------------------------------------------------


def adaptation_windows(n_tune: int) -> list[tuple[int, int]]:
    """Ends of the slow windows of Stan's windowed warm-up for ``n_tune`` tuning draws.

    The schedule (Stan reference manual, "HMC algorithm parameters") is an initial fast
    interval of 75 draws in which only the step size adapts and the chain leaves its
    start, then slow windows of 25, 50, 100, ... draws whose draws alone estimate the
    preconditioner (the last one stretched to the end), then a terminal fast interval of
    50 draws in which the step size adapts to the final preconditioner. Below 150 tuning
    draws the intervals are 15 % / 75 % / 10 % of ``n_tune``, as in Stan. Below 20 the
    list is empty: the preconditioner stays where :meth:`Warmup.start` put it.

    Parameters
    ----------
    n_tune : int
        Number of tuning draws.

    Returns
    -------
    list of (int, int)
        ``(start, end)`` of each slow window, 0-based draw indices, ``end`` exclusive; after
        tuning draw ``end - 1`` the preconditioner is updated.
    """
    if n_tune < 20:
        return []
    init, term, base = 75, 50, 25
    if n_tune < init + term + base:
        init, term = int(0.15 * n_tune), int(0.1 * n_tune)
        base = n_tune - init - term
    last = n_tune - term
    ends = []
    start, size = init, base
    while start < last:
        end = start + size
        if end + 2 * size > last:  # the next window would not fit: stretch this one
            end = last
        ends.append((start, end))
        start, size = end, 2 * size
    return ends


_windows = functools.lru_cache(maxsize=16)(adaptation_windows)


@functools.lru_cache(maxsize=16)
def curvature_refreshes(n_tune: int) -> frozenset[int]:
    """After which tuning draws the curvature is measured again: thirds of the initial interval.

    A far start sees a curvature that has little to do with the posterior's (a scale
    parameter whose gradient is dominated by huge residuals there). Measuring it again at
    the rows' current places after a third and two thirds of the initial interval, and at
    its end, gives the first slow window a preconditioner of the region the chains have
    reached, without waiting for them to spread.

    Parameters
    ----------
    n_tune : int

    Returns
    -------
    frozenset of int
        Counts of tuning draws done (``it + 1``) after which to measure.
    """
    windows = _windows(n_tune)
    if not windows:
        return frozenset()
    init = windows[0][0]
    return frozenset(k for k in (init // 3, (2 * init) // 3, init) if k > 0)


def _spd_sqrt(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix^{1/2}, matrix^{-1/2})`` of a symmetric positive-definite matrix."""
    values, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    if not np.all(values > 0):
        raise np.linalg.LinAlgError("matrix is not positive definite")
    root = np.sqrt(values)
    return (vectors * root) @ vectors.T, (vectors / root) @ vectors.T


def _prior_diag(metric: Metric, n_dim: int) -> np.ndarray:
    if metric.inv_mass is None:
        return np.ones(n_dim)
    return metric.inv_mass if metric.inv_mass.ndim == 1 else np.diagonal(metric.inv_mass)


def fisher_estimate(
    n: int, cov_x: np.ndarray, cov_g: np.ndarray, kind: str, prior: Metric
) -> np.ndarray | None:
    """The regularised Fisher-divergence estimate of ``M^{-1}`` from draws and gradients.

    With ``S_x = Cov(x)`` and ``S_g = Cov(grad log pi(x))`` over a window (the estimator of
    nutpie's mass-matrix adaptation, by Seyboldt, Carlson and Carpenter):

    * ``"diag"``: ``M^{-1}_ii = sqrt(S_x,ii / S_g,ii)``;
    * ``"dense"``: ``M^{-1} = S_x # S_g^{-1}``, the matrix geometric mean
      ``A^{1/2} (A^{-1/2} B A^{-1/2})^{1/2} A^{1/2}`` of ``A = S_x`` and ``B = S_g^{-1}``,
      computed in the coordinates standardised by the diagonal estimate.

    On ``N(mu, Sigma)`` at stationarity both give ``Sigma``; during the transient a chain that
    has seen only a narrow slice of a ridge still gets the local inverse curvature. The
    estimate is shrunk as Stan's is, with weight ``5 / (n + 5)``: the diagonal towards
    ``1e-3`` times the diagonal of the ``prior`` preconditioner (Stan's absolute ``1e-3``
    when the prior is the identity; relative, so that a coordinate of scale 1e-5 is not
    swamped), the dense estimate first towards the diagonal one.

    Parameters
    ----------
    n : int
        Draws (rows times iterations) behind the covariances.
    cov_x, cov_g : numpy.ndarray, shape (d,) or (d, d)
        Variances (``"diag"``) or covariances (``"dense"``) of the draws and gradients.
    kind : {"diag", "dense"}
    prior : Metric
        The preconditioner in use, towards which the estimate is regularised.

    Returns
    -------
    numpy.ndarray or None
        The estimate, or None when it is degenerate (fewer than 3 draws, a zero or
        non-finite variance): keep the prior.
    """
    if n < 3:
        return None
    weight = n / (n + 5.0)
    d = cov_x.shape[0]
    jitter = (1 - weight) * _JITTER * _prior_diag(prior, d)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        var_x = np.diagonal(cov_x) if kind == "dense" else cov_x
        var_g = np.diagonal(cov_g) if kind == "dense" else cov_g
        scale = np.sqrt(var_x / var_g)
        if not np.all(np.isfinite(scale) & (scale > 0)):
            return None
        if kind == "diag":
            return weight * scale + jitter
        # standardise by the diagonal estimate, take the geometric mean there
        root = np.sqrt(scale)
        eye = np.eye(d)
        cov_x = weight * cov_x / np.outer(root, root) + (1 - weight) * eye
        cov_g = weight * cov_g * np.outer(root, root) + (1 - weight) * eye
        if not (np.all(np.isfinite(cov_x)) and np.all(np.isfinite(cov_g))):
            return None
        try:
            g_half, g_half_inv = _spd_sqrt(cov_g)
            middle, _ = _spd_sqrt(g_half @ cov_x @ g_half)
        except np.linalg.LinAlgError:
            return None
        sigma = g_half_inv @ middle @ g_half_inv
        sigma = 0.5 * (sigma + sigma.T) * np.outer(root, root)
        sigma[np.diag_indices_from(sigma)] += jitter
    if not np.all(np.isfinite(sigma)):
        return None
    return sigma


def curvature_metric(
    logp_grad: LogpGrad, rows: np.ndarray, kind: str, rel_step: float = 1e-5
) -> tuple[Metric | None, int]:
    """A preconditioner from the curvature of the log density at ``rows``.

    The Hessian at each row is the central finite difference of the gradient along each
    coordinate (``2 d`` gradient evaluations per row, in one call of ``logp_grad``), with a
    step of ``rel_step * max(1, |x_i|)``. The negative Hessians are made positive definite
    by taking the absolute values of their eigenvalues (floored at ``1e-6 min(1,
    lambda_max)``, so a flat direction gets a variance of at most 1e6, and at
    ``1e-15 lambda_max``, the round-off of the eigenvalues), averaged over the rows, and
    inverted: ``M^{-1}`` is the
    covariance of the Laplace approximation (``"dense"``) or its diagonal (``"diag"``).

    Parameters
    ----------
    logp_grad : callable
        ``logp_grad(points) -> (logp, grad)`` on rows.
    rows : numpy.ndarray, shape (R, d)
        Points at which to measure the curvature.
    kind : {"diag", "dense"}
    rel_step : float, default 1e-5

    Returns
    -------
    metric : Metric or None
        None when a gradient was not finite (keep the identity).
    n_evals : int
        Gradient evaluations spent, per row of ``rows`` (``2 d``).
    """
    R, d = rows.shape
    eps = rel_step * np.maximum(1.0, np.abs(rows))  # (R, d)
    eye = np.eye(d)
    points = np.concatenate(
        [np.concatenate([x + e[:, None] * eye, x - e[:, None] * eye]) for x, e in zip(rows, eps)]
    )
    _, grads = logp_grad(points)
    if not np.all(np.isfinite(grads)):
        return None, 2 * d
    precision = np.zeros((d, d))
    for r in range(R):
        g = grads[2 * d * r : 2 * d * (r + 1)]
        hess = (g[:d] - g[d:]) / (2 * eps[r][:, None])  # row i: d grad / d x_i
        neg = -0.5 * (hess + hess.T)
        values, vectors = np.linalg.eigh(neg)
        absval = np.abs(values)
        top = float(absval.max())
        if not (np.isfinite(top) and top > 0):
            return None, 2 * d
        absval = np.maximum(absval, max(1e-6 * min(1.0, top), 1e-15 * top))
        precision += (vectors * absval) @ vectors.T / R
    values, vectors = np.linalg.eigh(precision)
    cov = (vectors / values) @ vectors.T
    cov = 0.5 * (cov + cov.T)
    if kind == "diag":
        return Metric.diag(np.diagonal(cov).copy()), 2 * d
    try:
        return Metric.dense(cov), 2 * d
    except np.linalg.LinAlgError:
        return Metric.diag(np.diagonal(cov).copy()), 2 * d


def stray_rows(lp_trace: np.ndarray, n_dim: int) -> np.ndarray:
    """Rows whose recent log density lies far below that of the best rows.

    The reference is the 90th percentile ``q`` of the rows' moving averages of the log
    density: the region the best tenth of the rows has found. A row is stray when it is
    below ``q`` by more than ``6 sqrt(d/2) + 10 + 8 s``, where ``sqrt(d/2)`` is the
    standard deviation of the log density of a ``d``-dimensional Gaussian (so a row in the
    same typical set is never that far below) and ``s`` the scaled median deviation of the
    top quarter of the rows (their own spread). Such a row sits where the density is lower
    by a factor ``e^10`` or more than anywhere in the best rows' typical set: a spurious
    local mode, or a start the step size cannot bring back. A genuine mode of much lower
    density but much larger volume looks the same, which is why restarting is an option.

    Parameters
    ----------
    lp_trace : numpy.ndarray, shape (B,)
    n_dim : int

    Returns
    -------
    numpy.ndarray of bool, shape (B,)
    """
    finite = np.isfinite(lp_trace)
    if finite.sum() < MIN_ROWS_FOR_RESTART:
        return np.zeros(lp_trace.shape, dtype=bool)
    level, spread = _bulk_level(lp_trace[finite])
    return ~finite | (lp_trace < level - stray_threshold(n_dim, spread))


def stray_threshold(n_dim: int, spread: float) -> float:
    """How far below the bulk's log density a row is stray: ``6 sqrt(d/2) + 10 + 8 s``.

    ``sqrt(d/2)`` is the standard deviation of the log density of a ``d``-dimensional
    Gaussian, so a row in the same typical set is never that far below; ``s`` is the
    bulk's own spread (:func:`stray_rows`).

    Parameters
    ----------
    n_dim : int
    spread : float

    Returns
    -------
    float
    """
    return 6.0 * math.sqrt(n_dim / 2.0) + 10.0 + 8.0 * spread


def _bulk_level(values: np.ndarray) -> tuple[float, float]:
    """The 90th percentile of finite log densities and the scaled MAD of their top quarter."""
    top = np.sort(values)[-max(2, values.size // 4) :]
    spread = 1.4826 * float(np.median(np.abs(top - np.median(top))))
    return float(np.quantile(values, 0.9)), spread


def energy_statistic(energy_error: np.ndarray, n_dim: int, target: float) -> np.ndarray:
    """An acceptance-like statistic whose mean is ``ENERGY_STAT_TARGET`` at the target variance.

    ``1 - min(r, ENERGY_RATIO_CLIP) / 2`` with ``r = e^2 / (d target)`` for each energy error
    ``e`` (``r = inf`` for a non-finite one). Its mean is 1/2 when ``E[e^2] / d = target``,
    up to the clip, which moves it by less than 1e-5 for Gaussian energy errors
    (``P(chi^2_1 > 20) = 8e-6``) and keeps one divergent move from collapsing the step. So
    PyMC's dual averaging, fed it with the target 1/2, adapts the step to the energy-error
    variance per dimension ``target``, as MCLMC tunes its step (Robnik et al. 2023):
    ``E[e^2]`` is the variance plus the squared mean, which is of higher order in the step.

    Parameters
    ----------
    energy_error : numpy.ndarray
    n_dim : int
    target : float

    Returns
    -------
    numpy.ndarray
        Values in ``[1 - ENERGY_RATIO_CLIP / 2, 1]``.
    """
    with np.errstate(over="ignore", invalid="ignore"):
        ratio = np.where(np.isfinite(energy_error), energy_error**2 / (n_dim * target), np.inf)
    return 1.0 - 0.5 * np.minimum(ratio, ENERGY_RATIO_CLIP)


ENERGY_RATIO_CLIP = 20.0
""":func:`energy_statistic` clips ``e^2 / (d target)`` here."""

ENERGY_STAT_TARGET = 0.5
"""The dual-averaging target of :func:`energy_statistic`."""

FRICTION_FACTOR = 1.0
"""Kinetic Langevin's friction over the widest preconditioned scale (:func:`scaled_friction`)."""


def scaled_friction(cov_x: np.ndarray, metric: Metric, current: float) -> float:
    """The friction ``FRICTION_FACTOR / sigma_max`` for the window's draws.

    ``sigma_max^2`` is the largest variance of the draws in the units of the
    preconditioner (``Var(x_j) / M^{-1}_jj``): about 1 once the preconditioner fits, the
    widest scale of the posterior with ``M = I``. Kinetic Langevin in a harmonic well of
    standard deviation ``sigma`` is critically damped at ``gamma = 2 / sigma``; half of that
    for the widest direction lets the velocity carry the chain across it, as the
    underdamped chain's advantage needs, and damps it within about one period.

    Parameters
    ----------
    cov_x : numpy.ndarray, shape (d,) or (d, d)
    metric : Metric
    current : float
        Kept when the variances are degenerate.

    Returns
    -------
    float
    """
    var = np.diagonal(cov_x) if cov_x.ndim == 2 else cov_x
    scaled = var / _prior_diag(metric, var.shape[0])
    top = float(np.max(scaled)) if scaled.size else 0.0
    if not (np.isfinite(top) and top > 0):
        return current
    return FRICTION_FACTOR / math.sqrt(top)


# ------------------------------------------------------------------------------------------------
# The warm-up
# ------------------------------------------------------------------------------------------------


@dataclass_state
class WarmupState(DataClassState):
    """The state of :class:`Warmup`, as PyMC saves and restores it."""

    n_tune: int
    iteration: int
    started: bool
    step_size: float | np.ndarray
    metric: Metric
    friction: float | None
    step_adapt: StepSizeState
    n_window: int
    mean_x: np.ndarray
    m2_x: np.ndarray
    mean_g: np.ndarray
    m2_g: np.ndarray
    lp_trace: np.ndarray | None
    accept_trace: np.ndarray | None
    n_restarts: np.ndarray | None
    late_restarts: int
    last_x: np.ndarray | None
    last_grad: np.ndarray | None
    recent_curvature: list
    recent_lp: list
    stability_cap: float | None
    bulk_floor: float | None
    fine_level: float | np.ndarray | None


class Warmup(WithSamplingState):
    """Step size and preconditioner of a Langevin sampler during tuning, over rows.

    Parameters
    ----------
    n_dim : int
        Number of (raveled) dimensions.
    step_size : float, optional
        The first step size (default :func:`initial_step_size`), and the step size
        throughout when ``adapt_step_size=False``.
    adapt_step_size : bool
    target_accept : float
        The dual-averaging target of the mean would-be MALA acceptance.
    accuracy : float, optional
        From the first slow window on, adapt the step size instead so that the bias
        statistic (:func:`bias_terms`) predicts a relative error of the posterior sd of
        ``ACCURACY_SCALE * accuracy``: dual averaging (in log step size) of
        :func:`accuracy_feed` towards 1, without restarts at the window ends.
        ``target_accept`` is used in the initial interval.
    precondition : {"diag", "dense", None}
        Resolved kind (:func:`check_precondition`). ``None``: ``M = I`` throughout.
    restart_stray : bool, default False
        Restart stray rows from the bulk (:func:`stray_rows`; needs at least
        :data:`MIN_ROWS_FOR_RESTART` rows).
    per_row_step : bool, default False
        One step size per row, each dual-averaged on its own row's acceptance (PyMC's
        :class:`~pymc.step_methods.step_sizes.DualAverageAdaptation` works elementwise),
        instead of one for all rows fed their mean acceptance. Rows in different regions
        (a far start, a funnel's neck) then do not drag each other's step size.
    friction : float, optional
        Kinetic Langevin's friction ``gamma`` (its first value when ``adapt_friction``);
        ``None`` for overdamped Langevin.
    adapt_friction : bool, default False
        Set ``gamma = FRICTION_FACTOR / sigma_max`` at the end of each slow window, with
        ``sigma_max`` the largest standard deviation of the window's draws in the units
        of the new preconditioner (:func:`scaled_friction`).
    energy_var_target : float, optional
        Adapt the step size to this variance of the energy error per dimension instead of
        to ``target_accept`` (:func:`energy_statistic`).
    stability_limit : float, optional
        The largest ``eta L`` at which the sampler is stable on a Gaussian of curvature
        ``L`` (:func:`pmm_pymc.mcmc.kernel.pmm_stability_limit`; 2 for LMC). Given, the
        final adapted step is capped at ``STABILITY_SAFETY * stability_limit / L`` with
        ``L`` the :data:`CURVATURE_QUANTILE` quantile of the curvatures seen since the last
        preconditioner update (:attr:`recent_curvature`). ``None``: no cap.

    Notes
    -----
    The window's moments are Welford's per row (``mean_x`` and ``mean_g`` have one row
    per row of the state), pooled within rows: see :meth:`_accumulate`.

    Attributes
    ----------
    step_size : float or numpy.ndarray
        The step size of the next transition (one per row with ``per_row_step`` after
        :meth:`start`).
    metric : Metric
        The preconditioner of the next transition.
    n_restarts : numpy.ndarray of int, shape (B,) or None
        Restarts of each row so far (after the first :meth:`update`).
    late_restarts : int
        Restarts at the end of the last slow window: rows still stray after most of the
        warm-up (a spurious mode, rather than a far start or a slow transient).
    recent_curvature : list of numpy.ndarray
        Per tuning transition since the last preconditioner update, the secant estimates
        ``||M^{1/2} (b' - b)|| / ||M^{1/2} (x' - x)||`` of the preconditioned drift's
        Lipschitz constant of the rows' accepted moves and fired midpoints (the larger,
        :attr:`pmm_pymc.mcmc.kernel.LangevinInfo.stiffness`).
    stability_cap : float or None
        The cap :meth:`finish` put on the step size (``None`` before, or without
        ``stability_limit``).
    bulk_floor : float or None
        After :meth:`finish`: the log density below which a row's moving average has left
        the bulk (:meth:`watch`); ``None`` with too few draws to tell.
    """

    _state_class = WarmupState

    def __init__(
        self,
        n_dim: int,
        *,
        step_size: float | None,
        adapt_step_size: bool,
        target_accept: float,
        precondition: str | None,
        restart_stray: bool = False,
        per_row_step: bool = False,
        friction: float | None = None,
        adapt_friction: bool = False,
        energy_var_target: float | None = None,
        stability_limit: float | None = None,
        accuracy: float | None = None,
    ) -> None:
        self.n_dim = int(n_dim)
        self.first_friction = None if friction is None else float(friction)
        self.adapt_friction = bool(adapt_friction) and friction is not None
        self.energy_var_target = None if energy_var_target is None else float(energy_var_target)
        self.per_row_step = bool(per_row_step)
        self.first_step = float(step_size) if step_size is not None else initial_step_size(n_dim)
        self.adapt_step_size = bool(adapt_step_size)
        self.target_accept = float(target_accept)
        self.accuracy = None if accuracy is None else float(accuracy)
        self.kind = precondition
        self.restart_stray = bool(restart_stray)
        self.stability_limit = None if stability_limit is None else float(stability_limit)
        self.reset(0)

    @property
    def windows(self) -> list[tuple[int, int]]:
        """The slow windows of the ``n_tune`` tuning draws (:func:`adaptation_windows`)."""
        return _windows(self.n_tune)

    @property
    def adjusts(self) -> bool:
        """Whether tuning transitions are Metropolis-adjusted (something adapts)."""
        return self.adapt_step_size or self.kind is not None

    def reset(self, n_tune: int) -> None:
        """Back to the first step size and ``M = I``, with the windows of ``n_tune`` draws."""
        self.n_tune = int(n_tune)
        self.iteration = 0
        self.started = False
        self.step_size = self.first_step
        self.metric = Metric.identity()
        self.friction = self.first_friction
        self.step_adapt = self._dual_averaging(self.first_step)
        self.lp_trace = self.accept_trace = self.n_restarts = None
        self.fine_level = None
        self.late_restarts = 0
        self.last_x = self.last_grad = None
        self.recent_curvature = []
        self.recent_lp = []
        self.bulk_floor = None
        self.stability_cap = None
        self._restart_window()

    def start(self, state: LangevinState, logp_grad: LogpGrad) -> int:
        """Before the first tuning transition: the preconditioner from the curvature.

        Parameters
        ----------
        state : LangevinState
            The rows' starting points.
        logp_grad : callable
            ``logp_grad(points) -> (logp, grad)`` on rows.

        Returns
        -------
        int
            Gradient evaluations spent per row (0 without a preconditioner).
        """
        self.started = True
        self.last_x, self.last_grad = state.x, state.grad
        if self.per_row_step:
            self.step_size = np.full(state.x.shape[0], float(np.mean(self.step_size)))
            self.step_adapt = self._dual_averaging(self.step_size)
        return self._measure_curvature(state, logp_grad)

    def _measure_curvature(self, state: LangevinState, logp_grad: LogpGrad) -> int:
        """The preconditioner from the curvature at the rows of highest log density."""
        if self.kind is None or self.n_dim > CURVATURE_MAX_DIM:
            return 0
        order = np.argsort(-np.nan_to_num(state.logp, nan=-np.inf), kind="stable")
        rows = state.x[order[:_CURVATURE_ROWS]]
        metric, n_evals = curvature_metric(logp_grad, rows, self.kind)
        if metric is not None:
            self.metric = metric
            self._restart_step_size()
        return math.ceil(n_evals * rows.shape[0] / state.x.shape[0])

    def _restart_step_size(self) -> None:
        # The curvature and log density of the new preconditioner's interval start afresh.
        self.recent_curvature = []
        self.recent_lp = []
        # Towards accuracy the statistic is in the units of the current preconditioner, so the
        # step learnt carries over a new one: restarting the dual average for each short window
        # (the terminal one has 50 draws) was measured to end on steps 1.5x too small.
        if self.adapt_step_size and not self._aims_accuracy:
            # New preconditioner: the step size learnt for the old one is stale; restart
            # dual averaging from it (Stan's windowed adaptation does the same).
            self.step_adapt = self._dual_averaging(self.step_size)
            self.step_size = self._current_step(tune=True)

    def update(
        self, state: LangevinState, info: LangevinInfo, logp_grad: LogpGrad
    ) -> tuple[LangevinState, int]:
        """After one tuning transition: adapt, and restart stray rows where it is time.

        Parameters
        ----------
        state : LangevinState
            The rows after the transition.
        info : LangevinInfo
            What the transition did.
        logp_grad : callable
            ``logp_grad(points) -> (logp, grad)`` on rows, for the curvature measured
            again during the initial interval (:func:`curvature_refreshes`).

        Returns
        -------
        state : LangevinState
            ``state``, with stray rows replaced by rows of the bulk at a check.
        n_evals : int
            Gradient evaluations spent per row (by a curvature measurement).
        """
        it = self.iteration
        self.iteration += 1
        B = state.x.shape[0]
        self._record_curvature(state, info)
        if self.lp_trace is None or self.lp_trace.shape[0] != B:
            self.lp_trace = np.array(state.logp, dtype=float)
            self.accept_trace = np.array(info.accept_prob, dtype=float)
            self.n_restarts = np.zeros(B, dtype=np.int64)
        else:
            self.lp_trace += _TRACE_RATE * (state.logp - self.lp_trace)
            self.accept_trace += _TRACE_RATE * (info.accept_prob - self.accept_trace)
        if self.adapt_step_size:
            if self.accuracy is not None and it == self._accuracy_start:
                self.step_adapt = self._dual_averaging(self.step_size)  # now towards accuracy
                self.fine_level = None
            if self._aims_accuracy:
                stat = self._accuracy_stat(info)
            else:
                stat = info.accept_prob
                if self.energy_var_target is not None:
                    stat = energy_statistic(info.energy_error, self.n_dim, self.energy_var_target)
                if not self.per_row_step:
                    stat = float(np.mean(stat))
            self.step_adapt.update(stat, True)
            self.step_size = self._current_step(tune=True)

        window = next(((a, b) for a, b in self.windows if a <= it < b), None)
        if self.kind is not None and window is not None:
            self._accumulate(state)
        window_end = window is not None and it + 1 == window[1]
        refresh = it + 1 in curvature_refreshes(self.n_tune)
        restarted = False
        if self.restart_stray and (window_end or refresh):
            state, restarted = self._restart_strays(state)
        n_evals = self._measure_curvature(state, logp_grad) if refresh else 0
        if window_end and self.kind is not None:
            if not restarted:  # else the window's moments include the strays' draws
                new = fisher_estimate(
                    self._draws_in_window(), *self._covariances(), kind=self.kind, prior=self.metric
                )
                if new is not None:
                    try:
                        self.metric = Metric.diag(new) if self.kind == "diag" else Metric.dense(new)
                    except np.linalg.LinAlgError:
                        pass
            if self.adapt_friction and not restarted:
                self.friction = scaled_friction(self._covariances()[0], self.metric, self.friction)
            self._restart_window()
            self._restart_step_size()
        self.last_x, self.last_grad = state.x, state.grad
        self.recent_lp.append(np.array(state.logp, dtype=float))
        return state, n_evals

    def finish(self) -> list[str]:
        """Freeze the step size at its dual average; return what looks wrong, in words.

        Returns
        -------
        list of str
            Warnings: a step size that ended below ``COLLAPSE_FACTOR`` times its start, or
            rows whose recent would-be acceptance is below ``STUCK_ACCEPT``.
        """
        if self.adapt_step_size:
            self.step_size = self._current_step(tune=False)
            self._cap_step_size()
        self.bulk_floor = self._bulk_floor()
        problems = []
        cause = (
            "The likely cause is a boundary the unadjusted Langevin step cannot approach "
            "(a Potential or constraint where the log density drops to -inf) or a region it "
            "cannot cross (a funnel, scales that change by orders of magnitude). The draws "
            "are probably too narrow or stuck: use NUTS (pm.sample()) or reparameterise."
        )
        steps = np.atleast_1d(self.step_size)
        collapsed = steps < COLLAPSE_FACTOR * self.first_step
        if self.adapt_step_size and collapsed.any():
            where = "" if steps.size == 1 else f" on {int(collapsed.sum())} of {steps.size} chains"
            low = float(steps.min())
            problems.append(
                f"The step size collapsed during tuning{where}: it ended at {low:.3g}, "
                f"{self.first_step / low:.3g} times below its start ({self.first_step:.3g}). "
                f"{cause}"
            )
        if self.adjusts and self.accept_trace is not None and self.iteration > 0:
            stuck = int((self.accept_trace < STUCK_ACCEPT).sum())
            if stuck:
                rows = self.accept_trace.shape[0]
                where = "the chain" if rows == 1 else f"{stuck} of {rows} chains"
                problems.append(
                    f"The would-be acceptance of the moves was near zero at the end of tuning "
                    f"on {where} (below {STUCK_ACCEPT}). {cause}"
                )
        return problems

    def watch(self, logp: np.ndarray) -> np.ndarray:
        """During sampling: which rows have left the bulk, from their log density after a draw.

        Each row's moving average of the log density (the one the warm-up kept) is
        updated with ``logp``; a row whose average is below :attr:`bulk_floor` has left
        the bulk: it sits where the density is lower by a factor ``e^10`` or more than
        anywhere in the typical set of the end of warm-up (the stray-row rule,
        :func:`stray_threshold`), a chain thrown out by a step outside its stability
        region, with or without divergences.

        Parameters
        ----------
        logp : numpy.ndarray, shape (B,)

        Returns
        -------
        numpy.ndarray of bool, shape (B,)
        """
        logp = np.asarray(logp, dtype=float)
        if self.lp_trace is None or self.lp_trace.shape != logp.shape:
            self.lp_trace = logp.copy()
        else:
            self.lp_trace += _TRACE_RATE * (logp - self.lp_trace)
        if self.bulk_floor is None:
            return np.zeros(logp.shape, dtype=bool)
        return ~np.isfinite(self.lp_trace) | (self.lp_trace < self.bulk_floor)

    # --- internals -----------------------------------------------------------------------------

    def _record_curvature(self, state: LangevinState, info: LangevinInfo) -> None:
        """The largest secant curvature of the moves (from :attr:`last_x`) and midpoints."""
        if self.last_x is None or self.last_x.shape != state.x.shape:
            return
        metric = self.metric  # the transition's: updated later in this call, if at all
        secant = secant_curvature(
            metric, metric.drift(state.grad - self.last_grad), state.x - self.last_x, info.moved
        )
        seen = np.fmax(secant, info.stiffness)
        self.recent_curvature.append(seen[seen > 0])

    def _cap_step_size(self) -> None:
        """Keep ``eta L`` (kinetic: ``eta sqrt(L)``) within ``STABILITY_SAFETY`` of the limit."""
        if self.stability_limit is None or not self.recent_curvature:
            return
        seen = np.concatenate(self.recent_curvature)
        if seen.size == 0:
            return
        curvature = float(np.quantile(seen, CURVATURE_QUANTILE))
        if not curvature > 0:  # an infinite one caps at MAX_CAP_SHRINK below
            return
        if self.friction is not None:  # kinetic: the limits are on eta sqrt(L)
            curvature = math.sqrt(curvature)
        cap = STABILITY_SAFETY * self.stability_limit / curvature
        # At most a factor MAX_CAP_SHRINK below the dual-averaged step: a cap further down
        # comes from a few extreme secants (a chain at the edge of a funnel), not from the bulk.
        cap = max(cap, float(np.max(self.step_size)) / MAX_CAP_SHRINK)
        self.stability_cap = cap
        if self.per_row_step:
            self.step_size = np.minimum(self.step_size, cap)
        else:
            self.step_size = min(float(self.step_size), cap)

    def _bulk_floor(self) -> float | None:
        """The stray-row rule's floor below the log density of the last interval's draws."""
        if not self.recent_lp:
            return None
        values = np.concatenate(self.recent_lp)
        values = values[np.isfinite(values)]
        if values.size < MIN_ROWS_FOR_RESTART:
            return None
        level, spread = _bulk_level(values)
        return level - stray_threshold(self.n_dim, spread)

    def _dual_averaging(self, initial_step: float | np.ndarray) -> DualAverageAdaptation:
        """PyMC's NUTS step-size adaptation (same constants), started at ``initial_step``.

        With ``accuracy``, from the first slow window on, it is fed ``_FEED_GAIN * (1 - G)``
        (:meth:`_accuracy_stat`) with target 0.
        """
        if self._aims_accuracy:
            target = 0.0
        elif self.energy_var_target is not None:
            target = ENERGY_STAT_TARGET
        else:
            target = self.target_accept
        return DualAverageAdaptation(initial_step, target, 0.05, 0.75, 10)

    @property
    def _accuracy_start(self) -> int:
        """The tuning draw from which the step adapts to ``accuracy``: the first slow window.

        Before it the chains are still on their way from their starts, where the energy
        errors say nothing about the stationary bias (and would shrink the step until the
        chains cannot arrive); the step adapts to ``target_accept`` there.
        """
        return self.windows[0][0] if self.windows else 0

    @property
    def _aims_accuracy(self) -> bool:
        return self.accuracy is not None and self.iteration > self._accuracy_start

    def _accuracy_stat(self, info: LangevinInfo) -> np.ndarray | float:
        """``_FEED_GAIN * (1 - G)`` (:func:`accuracy_feed`), per row or of the rows' mean."""
        target = ACCURACY_SCALE * self.accuracy
        fine, spread = bias_terms(info, self.step_size, self.n_dim)
        fine = np.minimum(fine, (_FEED_MAX * target) ** 2)  # a divergence counts as the clip
        if not self.per_row_step:
            fine, spread = float(np.mean(fine)), float(np.mean(spread))
        if self.fine_level is None or np.shape(self.fine_level) != np.shape(fine):
            self.fine_level = np.full(np.shape(fine), target**2)
        self.fine_level = self.fine_level + _TRACE_RATE * (fine - self.fine_level)
        feed = accuracy_feed(fine, spread, np.maximum(self.fine_level, 1e-300), target)
        stat = _FEED_GAIN * (1.0 - feed)
        return stat if self.per_row_step else float(stat)

    def _current_step(self, tune: bool) -> float | np.ndarray:
        step = self.step_adapt.current(tune)
        return np.array(step, dtype=float) if self.per_row_step else float(step)

    def _restart_window(self) -> None:
        d = self.n_dim
        self.n_window = 0
        self.mean_x = np.zeros((0, d))
        self.mean_g = np.zeros((0, d))
        self.m2_x = np.zeros(d if self.kind != "dense" else (d, d))
        self.m2_g = np.zeros_like(self.m2_x)

    def _accumulate(self, state: LangevinState) -> None:
        """Welford's update of each row's draws and gradients, pooled within rows.

        The window's covariances are those of each row's draws about that row's own mean,
        pooled over the rows. Rows that are still far apart (different places of a
        transient, a funnel's neck and mouth) would otherwise put their spread between
        each other, which says nothing about the local scales, into the estimate.
        """
        if self.n_window == 0:
            B, d = state.x.shape
            self.mean_x, self.mean_g = np.zeros((B, d)), np.zeros((B, d))
        self.n_window += 1
        for name, rows in (("x", state.x), ("g", state.grad)):
            mean = getattr(self, f"mean_{name}")
            delta = rows - mean
            mean = mean + delta / self.n_window
            after = rows - mean
            if self.kind == "dense":
                update = delta.T @ after
            else:
                update = np.einsum("ij,ij->j", delta, after)
            setattr(self, f"mean_{name}", mean)
            setattr(self, f"m2_{name}", getattr(self, f"m2_{name}") + update)

    def _draws_in_window(self) -> int:
        return self.n_window * self.mean_x.shape[0] if self.n_window else 0

    def _covariances(self) -> tuple[np.ndarray, np.ndarray]:
        rows = self.mean_x.shape[0] if self.n_window else 1
        n = max(self.n_window * rows - rows, 1)
        return self.m2_x / n, self.m2_g / n

    def _restart_strays(self, state: LangevinState) -> tuple[LangevinState, bool]:
        stray = stray_rows(self.lp_trace, self.n_dim)
        if not stray.any():
            return state, False
        bulk = np.flatnonzero(~stray)
        lost = np.flatnonzero(stray)
        # evenly spread over the bulk, deterministically (the warm-up owns no generator)
        source = bulk[(np.arange(lost.size) * bulk.size) // lost.size]
        # every field (velocities included) is copied from the source rows
        fields = [None if a is None else np.array(a, copy=True) for a in state]
        for a in fields:
            if a is not None:
                a[lost] = a[source]
        self.lp_trace[lost] = self.lp_trace[source]
        self.accept_trace[lost] = self.accept_trace[source]
        self.n_restarts[lost] += 1
        if self.windows and self.iteration == self.windows[-1][1]:
            self.late_restarts += lost.size
        if self.per_row_step:  # a restarted row takes its source's step size too
            self.step_size[lost] = self.step_size[source]
            self._restart_step_size()
        return LangevinState(*fields), True
