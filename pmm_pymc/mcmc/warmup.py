"""Step-size adaptation for unadjusted Langevin steps.

An unadjusted sampler accepts every move, so it has no acceptance rate to
tune towards. What it does have, at no extra gradient cost, is the log density
and its gradient at both ends of every move. From those this module computes
the Metropolis-adjusted Langevin (MALA) acceptance probability the move
``x -> x'`` *would* have had as a Langevin proposal of size ``eta`` with
inverse mass ``M^{-1}``:

.. math::

    \\alpha = \\min\\Big(1, \\frac{\\pi(x')\\, q(x \\mid x')}{\\pi(x)\\, q(x' \\mid x)}\\Big),
    \\qquad q(y \\mid x) = N\\big(y;\\, x + \\eta M^{-1}\\nabla\\log\\pi(x),\\, 2\\eta M^{-1}\\big).

The statistic is computed and never applied: the chain stays unadjusted. Its
average is fed to PyMC's dual averaging
(:class:`pymc.step_methods.step_sizes.DualAverageAdaptation`) exactly as NUTS
feeds its mean tree acceptance. ``1 - alpha`` measures how badly the move
violates detailed balance, which is the local discretization error the step
size controls; a move that leaves the typical set (the start of an
instability) scores near 0 and shrinks the step. See ``docs/method.md`` for the
choice of targets and its caveat.
"""

from __future__ import annotations

import numpy as np
from pymc.step_methods.state import DataClassState, WithSamplingState, dataclass_state

__all__ = [
    "DEFAULT_TARGET_ACCEPT",
    "check_step_options",
    "MassMatrixAdaptation",
    "MassMatrixState",
    "adaptation_windows",
    "initial_step_size",
    "pmm_stability_limit",
    "langevin_log_accept_ratio",
]

DEFAULT_TARGET_ACCEPT: dict[str, float] = {"lmc": 0.9, "pmm": 0.9}
"""Default dual-averaging targets of the would-be MALA acceptance, per step method."""


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
    method : {"lmc", "pmm"}
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
    if step_size is not None and (
        isinstance(step_size, bool)
        or not isinstance(step_size, int | float | np.number)
        or not (np.isfinite(step_size) and step_size > 0)
    ):
        raise ValueError(f"step_size must be a finite number > 0 or None, got {step_size!r}")
    if not isinstance(adapt_step_size, bool | np.bool_):
        raise ValueError(f"adapt_step_size must be True or False, got {adapt_step_size!r}")
    if step_size is None and not adapt_step_size:
        raise ValueError(
            "step_size=None needs adapt_step_size=True (nothing would set the step size); "
            "got adapt_step_size=False"
        )
    if target_accept is None:
        target_accept = DEFAULT_TARGET_ACCEPT[method]
    if isinstance(target_accept, bool) or not (
        isinstance(target_accept, int | float) and 0 < target_accept < 1
    ):
        raise ValueError(f"target_accept must be a number in (0, 1), got {target_accept!r}")
    if isinstance(max_energy_error, bool) or not (
        isinstance(max_energy_error, int | float) and max_energy_error > 0
    ):
        raise ValueError(f"max_energy_error must be a number > 0, got {max_energy_error!r}")
    return (None if step_size is None else float(step_size)), float(target_accept)


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


def langevin_log_accept_ratio(
    logp: float,
    logp_new: float,
    x: np.ndarray,
    x_new: np.ndarray,
    grad: np.ndarray,
    grad_new: np.ndarray,
    step_size: float,
    inv_mass: np.ndarray | None = None,
) -> float:
    """Log MALA acceptance ratio of the move ``x -> x_new``, computed and not applied.

    MALA is HMC with one leapfrog step of size ``sqrt(2 eta)``, and this ratio is minus
    that step's energy error; the acceptance probability is ``min(1, exp(ratio))``.
    With ``b = M^{-1} g`` and ``delta = x' - x`` the two Gaussian proposal densities
    combine into one inner product (``||v||_M^2 = v^T M v``)::

        ||x - x' - eta b'||_M^2 - ||x' - x - eta b||_M^2 = eta (2 delta + eta (b' - b))^T (g + g')

    so no division by ``M^{-1}`` is needed.

    Parameters
    ----------
    logp, logp_new : float
        ``log pi`` at ``x`` and at ``x_new``.
    x, x_new : numpy.ndarray, shape (d,)
        The start and the end of the move.
    grad, grad_new : numpy.ndarray, shape (d,)
        ``grad log pi`` at ``x`` and at ``x_new`` (not preconditioned).
    step_size : float
        ``eta``, with the convention ``x' = x + eta b(x) + sqrt(2 eta) M^{-1/2} xi``.
    inv_mass : numpy.ndarray, shape (d,) or (d, d), optional
        The diagonal of ``M^{-1}``, or the whole (symmetric) matrix; identity when omitted.

    Returns
    -------
    float
        ``log pi(x') + log q(x | x') - log pi(x) - log q(x' | x)``; ``-inf`` when
        it is not finite (an overflowing move counts as a certain rejection).
    """
    diff = grad_new - grad
    if inv_mass is not None:
        diff = inv_mass @ diff if inv_mass.ndim == 2 else inv_mass * diff
    diff *= step_size
    diff += 2.0 * (x_new - x)
    log_ratio = logp_new - logp - 0.25 * float(np.dot(diff, grad + grad_new))
    if not np.isfinite(log_ratio):
        return -np.inf
    return float(log_ratio)


def pmm_stability_limit(K: int) -> float:
    """The largest ``eta L`` at which PMM(eta, K) is mean-square stable on a Gaussian.

    On the drift ``b(x) = -L x`` one PMM block is ``x' = A x + B`` with
    ``A = 1 - h + h^2 S``, ``h = eta L`` and ``S = sum_{fired i} i/K`` (the midpoints
    ``H_i ~ Bernoulli(1/K)`` independent). The second moment contracts iff
    ``E[A^2] < 1``; this returns the root of ``E[A^2] = 1`` in ``h``. It is 2 for
    ``K <= 2`` (LMC's limit) and shrinks with ``K``: 1.52 for ``K = 4``, 1.35 for
    ``K = 8``, towards about 1.2.

    Parameters
    ----------
    K : int
        Number of sub-steps.

    Returns
    -------
    float
    """
    p = 1.0 / K
    i_over_k = np.arange(1, K) / K
    mean_s = p * i_over_k.sum()
    second_s = p * (1 - p) * np.sum(i_over_k**2) + mean_s**2

    def excess(h: float) -> float:  # E[A^2] - 1
        return (1 - h) ** 2 + 2 * (1 - h) * h**2 * mean_s + h**4 * second_s - 1.0

    lo, hi = 1e-6, 2.0
    if excess(hi) <= 0:
        return 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if excess(mid) < 0 else (lo, mid)
    return float(lo)


def adaptation_windows(n_tune: int) -> list[tuple[int, int]]:
    """Ends of the slow windows of Stan's windowed warm-up for ``n_tune`` tuning draws.

    The schedule (Stan reference manual, "HMC algorithm parameters") is an initial fast
    interval of 75 draws in which only the step size adapts and the chain leaves its
    start, then slow windows of 25, 50, 100, ... draws whose draws alone estimate the
    preconditioner (the last one stretched to the end), then a terminal fast interval of
    50 draws in which the step size adapts to the final preconditioner. Below 150 tuning
    draws the intervals are 15 % / 75 % / 10 % of ``n_tune``, as in Stan. Below 20 the
    list is empty: the preconditioner stays at the identity.

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


@dataclass_state
class MassMatrixState(DataClassState):
    """The state of :class:`MassMatrixAdaptation`, as PyMC saves and restores it."""

    inv_mass: np.ndarray
    windows: list[tuple[int, int]]
    n_seen: int
    n_window: int
    mean_x: np.ndarray
    m2_x: np.ndarray
    mean_g: np.ndarray
    m2_g: np.ndarray


class MassMatrixAdaptation(WithSamplingState):
    """A diagonal or dense preconditioner ``M^{-1}`` from draws and gradients, in Stan's windows.

    During each slow window of :func:`adaptation_windows` the tuning draws ``x`` and their
    gradients ``g = grad log pi(x)`` are accumulated (Welford). At the end of the window
    ``M^{-1}`` becomes the estimate that minimises the Fisher divergence between the target
    and a Gaussian approximation, the estimator of nutpie's mass-matrix adaptation
    (Seyboldt, Carlson & Carpenter; ``docs/method.md``): with ``S_x = Cov(x)`` and
    ``S_g = Cov(g)``,

    * ``"diag"``: ``M^{-1}_ii = sqrt(S_x,ii / S_g,ii)``;
    * ``"dense"``: ``M^{-1} = S_x # S_g^{-1}``, the matrix geometric mean
      ``A^{1/2} (A^{-1/2} B A^{-1/2})^{1/2} A^{1/2}`` of ``A = S_x`` and ``B = S_g^{-1}``.

    On a Gaussian target ``N(mu, Sigma)`` both ``S_x`` and ``S_g^{-1}`` equal ``Sigma`` at
    stationarity, so the estimate is the covariance. The reason to use the gradients is the
    transient: a chain that has so far explored only a narrow slice of the posterior (a
    ridge it is still crawling along) has a tiny ``S_x`` but an equally tiny ``S_g = H S_x
    H`` (``H`` the local Hessian), and ``S_x # S_g^{-1} = H^{-1}`` whatever ``S_x`` is: the
    estimate is the local inverse curvature, not the width of what the chain has seen. The
    sample variance alone (Stan's and PyMC's estimate) can only grow as fast as the chain
    explores, which for an unadjusted Langevin chain on a ridge of condition number
    ``kappa`` takes ``O(kappa)`` draws per window.

    The estimate is regularised as Stan does, by shrinking towards ``1e-3`` with weight
    ``5 / (n + 5)`` (``"dense"``: in the coordinates standardised by the diagonal
    estimate, towards the diagonal estimate). Each window learns only from its own
    draws, never from the transient before it; the caller restarts its step-size
    adaptation whenever :meth:`update` returns True.

    Parameters
    ----------
    n_dim : int
        Number of (raveled) dimensions.
    kind : {"diag", "dense"}
        Shape of ``M^{-1}``.
    dtype : numpy.dtype
        Floating dtype of the points.
    """

    _state_class = MassMatrixState

    def __init__(self, n_dim: int, kind: str, dtype: np.dtype) -> None:
        if kind not in ("diag", "dense"):
            raise ValueError(f"kind must be 'diag' or 'dense', got {kind!r}")
        self.n_dim, self.kind, self.dtype = int(n_dim), kind, np.dtype(dtype)
        self.windows: list[tuple[int, int]] = []
        self.reset(0)

    def reset(self, n_tune: int) -> None:
        """Back to ``M = I`` with the windows of ``n_tune`` tuning draws."""
        d = self.n_dim
        self.windows = adaptation_windows(int(n_tune))
        self.inv_mass = (
            np.ones(d, self.dtype) if self.kind == "diag" else np.eye(d, dtype=self.dtype)
        )
        self.n_seen = 0
        self._restart_window()
        self._factor()

    def update(self, x: np.ndarray, grad: np.ndarray) -> bool:
        """Record tuning draw ``x`` and ``grad log pi(x)``; True when ``M^{-1}`` changed."""
        index = self.n_seen
        self.n_seen += 1
        window = next(((a, b) for a, b in self.windows if a <= index < b), None)
        if window is None:
            return False
        self.n_window += 1
        self.mean_x, self.m2_x = self._welford(self.mean_x, self.m2_x, x)
        self.mean_g, self.m2_g = self._welford(self.mean_g, self.m2_g, grad)
        if index + 1 < window[1]:
            return False
        new = self._estimate()
        if new is not None:
            self.inv_mass = new.astype(self.dtype)
            self._factor()
        self._restart_window()
        return True

    def _welford(
        self, mean: np.ndarray, m2: np.ndarray, value: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        delta = value - mean
        mean = mean + delta / self.n_window
        if self.kind == "diag":
            return mean, m2 + delta * (value - mean)
        return mean, m2 + np.outer(delta, value - mean)

    def _estimate(self) -> np.ndarray | None:
        """The regularised Fisher-divergence estimate of ``M^{-1}``, or None if degenerate."""
        n = self.n_window
        if n < 3:
            return None
        weight = n / (n + 5.0)
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            var_x = (
                np.diagonal(self.m2_x) / (n - 1) if self.kind == "dense" else self.m2_x / (n - 1)
            )
            var_g = (
                np.diagonal(self.m2_g) / (n - 1) if self.kind == "dense" else self.m2_g / (n - 1)
            )
            scale = np.sqrt(var_x / var_g)
            if not np.all(np.isfinite(scale) & (scale > 0)):
                return None
            diag = weight * scale + (1 - weight) * 1e-3
            if self.kind == "diag":
                return diag
            # standardise by the diagonal estimate, take the geometric mean there
            root = np.sqrt(scale)
            cov_x = (self.m2_x / (n - 1)) / np.outer(root, root)
            cov_g = (self.m2_g / (n - 1)) * np.outer(root, root)
            eye = np.eye(self.n_dim)
            cov_x = weight * cov_x + (1 - weight) * eye
            cov_g = weight * cov_g + (1 - weight) * eye
            if not (np.all(np.isfinite(cov_x)) and np.all(np.isfinite(cov_g))):
                return None
            try:
                g_half, g_half_inv = _spd_sqrt(cov_g)
                middle, _ = _spd_sqrt(g_half @ cov_x @ g_half)
            except np.linalg.LinAlgError:
                return None
            sigma = g_half_inv @ middle @ g_half_inv
            sigma = 0.5 * (sigma + sigma.T) * np.outer(root, root)
            sigma[np.diag_indices_from(sigma)] += (1 - weight) * 1e-3
        if not np.all(np.isfinite(sigma)):
            return None
        return sigma

    def drift(self, grad: np.ndarray) -> np.ndarray:
        """``M^{-1} g`` for one gradient (1-D) or one per row (2-D)."""
        if self.kind == "diag":
            return grad * self.inv_mass
        return grad @ self.inv_mass  # symmetric

    def scale_noise(self, z: np.ndarray) -> np.ndarray:
        """``M^{-1/2} z`` along the last axis (a Cholesky factor for ``"dense"``)."""
        if self.kind == "diag":
            return z * self._sqrt
        return z @ self._sqrt.T

    def mass_norm_sq(self, v: np.ndarray) -> float:
        """``v^T M v``."""
        if self.kind == "diag":
            return float(np.dot(v, v / self.inv_mass))
        w = self._inv_sqrt @ v
        return float(np.dot(w, w))

    def _restart_window(self) -> None:
        d = self.n_dim
        self.n_window = 0
        self.mean_x = np.zeros(d, np.float64)
        self.mean_g = np.zeros(d, np.float64)
        self.m2_x = np.zeros(d if self.kind == "diag" else (d, d), np.float64)
        self.m2_g = np.zeros_like(self.m2_x)

    def _factor(self) -> None:
        if self.kind == "diag":
            self._sqrt = np.sqrt(self.inv_mass)
        else:
            self._sqrt = np.linalg.cholesky(self.inv_mass)
            self._inv_sqrt = np.linalg.inv(self._sqrt)

    @property
    def sampling_state(self) -> MassMatrixState:  # the factors are derived, not state
        return super().sampling_state

    @sampling_state.setter
    def sampling_state(self, state: MassMatrixState) -> None:
        WithSamplingState.sampling_state.fset(self, state)
        self._factor()


def _spd_sqrt(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(matrix^{1/2}, matrix^{-1/2})`` of a symmetric positive-definite matrix."""
    values, vectors = np.linalg.eigh(0.5 * (matrix + matrix.T))
    if not np.all(values > 0):
        raise np.linalg.LinAlgError("matrix is not positive definite")
    root = np.sqrt(values)
    return (vectors * root) @ vectors.T, (vectors / root) @ vectors.T
