"""Diffusion testbeds whose noise prediction is known exactly: Gaussian mixtures.

Under the variance-preserving forward process of a DDPM,

.. math::

    x_t = \\sqrt{\\bar\\alpha_t}\\, x_0 + \\sqrt{1 - \\bar\\alpha_t}\\, \\varepsilon,
    \\qquad \\varepsilon \\sim N(0, I),

a Gaussian mixture target ``p_0 = sum_k w_k N(mu_k, Sigma_k)`` stays a Gaussian
mixture at every noise level,

.. math::

    p_t = \\sum_k w_k\\, N\\big(\\sqrt{\\bar\\alpha_t}\\,\\mu_k,\\;
    \\bar\\alpha_t \\Sigma_k + (1 - \\bar\\alpha_t) I\\big),

so the ideal noise predictor of a trained network,
``eps(x, t) = -sqrt(1 - abar_t) grad log p_t(x)``, is available in closed form.
These testbeds let a sampler be judged against exact samples of the target with
no training error in the way.

Each component covariance is held in spectral form,
``Sigma_k = U_k diag(lambda_k) U_k^T + sigma_k^2 (I - U_k U_k^T)`` with ``U_k``
a ``d x r`` orthonormal basis (``r = d`` for a full covariance; ``r < d`` for a
low-rank-plus-isotropic one). The noised covariance shares the eigenvectors, so
the density and the score at any (per-sample) noise level cost two batched
projections and no factorisation inside the sampling loop.

The registry (:func:`get_testbed`, :func:`list_testbeds`) holds

``"mixture2d"``
    Nine components in the plane (eight thin arcs on the unit circle with
    unequal weights, and a round one at the centre), for pictures.
``"digits64"``
    A ten-component full-covariance mixture fitted to scikit-learn's bundled
    8x8 digits with pixels scaled to [-1, 1] (64 dimensions). Its component
    eigenvalues run from 0.01 (the fit's ``reg_covar`` floor) to about 3.3
    with median 0.03: strongly anisotropic, stiff at low noise.
``"aniso64"``
    Eight 64-d components with unequal weights (1:2:...:8), means drawn from
    N(0, 0.25 I), each covariance a random rotation of eigenvalues log-spaced
    from 0.01 to 0.3: the anisotropic setting in which uniform PMM blocks were
    seen to over-disperse the thin directions. Fixed by numpy seed 0.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import lru_cache
from importlib import resources
from typing import Any

import numpy as np

from pmm_pymc._optional import require
from pmm_pymc._validate import check_int, check_real

require("torch", "torch", "pmm_pymc.evaluation.testbeds")

import torch  # noqa: E402

__all__ = [
    "ExactEpsModel",
    "GaussianMixtureTestbed",
    "fit_digits_mixture",
    "get_testbed",
    "list_testbeds",
]

_LOG_2PI = math.log(2.0 * math.pi)
_DIGITS_FILE = "digits64_gmm.pt"


def _as_float64(name: str, value: Any) -> torch.Tensor:
    if torch.is_tensor(value):
        value = value.detach().cpu()
    try:
        out = torch.as_tensor(np.asarray(value, dtype=np.float64))
    except (TypeError, ValueError) as err:
        raise TypeError(f"{name} must be array-like of real numbers, got {type(value)!r}") from err
    if not torch.isfinite(out).all():
        raise ValueError(f"{name} must be finite")
    return out


class GaussianMixtureTestbed:
    """A Gaussian mixture target with an exact VP-diffusion noise predictor.

    Parameters
    ----------
    weights : array-like, shape (K,)
        Mixture weights, positive; normalised to sum to one.
    means : array-like, shape (K, d)
        Component means.
    covariances : array-like, shape (K, d, d), (K, d) or (K,)
        Full covariances, diagonal variances, or one isotropic variance per
        component. Must be symmetric positive definite.
    rank : int, optional
        Keep only the top ``rank`` eigen-directions of each covariance and
        replace the rest of its spectrum by its mean (the closest isotropic
        approximation): ``Sigma ≈ U_r diag(lambda_r) U_r^T + sigma^2 (I - U_r U_r^T)``.
        Cheaper for large ``d``. Default: keep the full covariance.
    name : str, optional
        A label used in ``repr``.

    See Also
    --------
    GaussianMixtureTestbed.from_low_rank : components ``W W^T + sigma^2 I``.
    get_testbed : the named testbeds.

    Notes
    -----
    All parameters are held in float64 on the CPU; each evaluation casts them
    (once per device and dtype, cached) to the device and dtype of its input,
    with half-precision inputs computed in float32.
    """

    def __init__(
        self,
        weights: Any,
        means: Any,
        covariances: Any,
        *,
        rank: int | None = None,
        name: str | None = None,
    ) -> None:
        w = _as_float64("weights", weights)
        mu = _as_float64("means", means)
        cov = _as_float64("covariances", covariances)
        if mu.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got shape {tuple(mu.shape)}")
        K, d = mu.shape
        if w.shape != (K,):
            raise ValueError(f"weights must have shape ({K},) to match means, got {tuple(w.shape)}")
        if (w <= 0).any():
            raise ValueError("weights must all be > 0")
        if cov.shape == (K,):
            cov = cov[:, None, None] * torch.eye(d, dtype=torch.float64)
        elif cov.shape == (K, d):
            cov = torch.diag_embed(cov)
        elif cov.shape != (K, d, d):
            raise ValueError(
                f"covariances must have shape ({K}, {d}, {d}), ({K}, {d}) or ({K},), "
                f"got {tuple(cov.shape)}"
            )
        if not torch.allclose(cov, cov.transpose(-1, -2), rtol=1e-6, atol=1e-10):
            raise ValueError("covariances must be symmetric")
        lam, U = torch.linalg.eigh(0.5 * (cov + cov.transpose(-1, -2)))
        if (lam <= 0).any():
            raise ValueError(
                f"covariances must be positive definite; smallest eigenvalue {lam.min().item():.3g}"
            )
        lam, U = lam.flip(-1), U.flip(-1)  # descending
        sig2 = torch.zeros(K, dtype=torch.float64)
        if rank is not None:
            rank = check_int("rank", rank, 1, d)
            if rank < d:
                sig2 = lam[:, rank:].mean(-1)
                lam, U = lam[:, :rank], U[:, :, :rank]
        self._set(w / w.sum(), mu, U, lam, sig2, name)

    def _set(
        self,
        w: torch.Tensor,
        mu: torch.Tensor,
        U: torch.Tensor,
        lam: torch.Tensor,
        sig2: torch.Tensor,
        name: str | None,
    ) -> None:
        self._weights = w
        self._means = mu
        self._U = U.contiguous()
        self._lam = lam
        self._sig2 = sig2
        self.name = name or "gaussian-mixture"
        self._cache: dict[tuple[torch.device, torch.dtype], tuple[torch.Tensor, ...]] = {}

    @classmethod
    def from_low_rank(
        cls,
        weights: Any,
        means: Any,
        factors: Any,
        noise_var: Any,
        *,
        name: str | None = None,
    ) -> GaussianMixtureTestbed:
        """Components with covariance ``W_k W_k^T + sigma_k^2 I`` (probabilistic PCA).

        Parameters
        ----------
        weights : array-like, shape (K,)
        means : array-like, shape (K, d)
        factors : array-like, shape (K, d, r)
            The low-rank factors ``W_k``, ``r <= d``.
        noise_var : float or array-like, shape (K,)
            The isotropic variances ``sigma_k^2 > 0``.
        name : str, optional

        Returns
        -------
        GaussianMixtureTestbed
        """
        w = _as_float64("weights", weights)
        mu = _as_float64("means", means)
        W = _as_float64("factors", factors)
        if mu.ndim != 2:
            raise ValueError(f"means must have shape (K, d), got shape {tuple(mu.shape)}")
        K, d = mu.shape
        if W.ndim != 3 or W.shape[:2] != (K, d) or W.shape[2] > d:
            raise ValueError(
                f"factors must have shape ({K}, {d}, r) with r <= {d}, got {tuple(W.shape)}"
            )
        s2 = _as_float64("noise_var", noise_var).expand(K).clone()
        if (s2 <= 0).any():
            raise ValueError("noise_var must be > 0")
        if w.shape != (K,) or (w <= 0).any():
            raise ValueError(f"weights must be {K} positive numbers, got shape {tuple(w.shape)}")
        U, S, _ = torch.linalg.svd(W, full_matrices=False)
        obj = cls.__new__(cls)
        obj._set(w / w.sum(), mu, U, S**2 + s2[:, None], s2, name)
        return obj

    # ------------------------------------------------------------------ basics
    @property
    def dim(self) -> int:
        """Dimension ``d`` of the target."""
        return int(self._means.shape[1])

    @property
    def n_components(self) -> int:
        """Number of mixture components ``K``."""
        return int(self._means.shape[0])

    @property
    def rank(self) -> int:
        """Number of eigen-directions held per component (``d`` for full covariances)."""
        return int(self._U.shape[2])

    @property
    def weights(self) -> torch.Tensor:
        """Mixture weights, float64, shape (K,)."""
        return self._weights.clone()

    @property
    def means(self) -> torch.Tensor:
        """Component means, float64, shape (K, d)."""
        return self._means.clone()

    @property
    def covariances(self) -> torch.Tensor:
        """Component covariances, float64, shape (K, d, d)."""
        U, lam = self._U, self._lam
        cov = (U * lam[:, None, :]) @ U.transpose(-1, -2)
        if self.rank < self.dim:
            eye = torch.eye(self.dim, dtype=torch.float64)
            cov = cov + self._sig2[:, None, None] * (eye - U @ U.transpose(-1, -2))
        return cov

    @property
    def eigenvalues(self) -> torch.Tensor:
        """Component covariance spectra (held directions, descending), shape (K, r)."""
        return self._lam.clone()

    @property
    def mean(self) -> torch.Tensor:
        """Mean of the mixture, float64, shape (d,)."""
        return self._weights @ self._means

    @property
    def covariance(self) -> torch.Tensor:
        """Covariance of the mixture, float64, shape (d, d)."""
        w, mu = self._weights, self._means
        m = self.mean
        second = (w[:, None, None] * (self.covariances + mu[:, :, None] * mu[:, None, :])).sum(0)
        return second - torch.outer(m, m)

    def __repr__(self) -> str:
        return (
            f"GaussianMixtureTestbed(name={self.name!r}, dim={self.dim}, "
            f"n_components={self.n_components}, rank={self.rank})"
        )

    # --------------------------------------------------------------- internals
    def _params(self, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
        """``(log w, mu, U as (d, K r), U_k^T mu_k, |mu_k|^2, lambda, sigma^2)`` on device."""
        key = (device, dtype)
        if key not in self._cache:
            K, d, r = self.n_components, self.dim, self.rank
            U, mu = self._U, self._means
            params = (
                self._weights.log(),
                mu,
                U.permute(1, 0, 2).reshape(d, K * r),
                torch.einsum("kdr,kd->kr", U, mu),
                (mu * mu).sum(-1),
                self._lam,
                self._sig2,
            )
            self._cache[key] = tuple(t.to(device=device, dtype=dtype) for t in params)
        return self._cache[key]

    def _flatten(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.dtype]:
        if not torch.is_tensor(x):
            raise TypeError(f"x must be a torch.Tensor, got {type(x)!r}")
        if not x.is_floating_point():
            raise TypeError(f"x must be a floating-point tensor, got dtype {x.dtype}")
        if x.ndim < 2 or math.prod(x.shape[1:]) != self.dim:
            raise ValueError(
                f"x must have shape (batch, ...) with {self.dim} values per sample, "
                f"got shape {tuple(x.shape)}"
            )
        compute = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
        return x.reshape(x.shape[0], self.dim).to(compute), compute

    def _alpha_bar(self, alpha_bar: Any, x: torch.Tensor) -> torch.Tensor:
        ab = torch.as_tensor(alpha_bar, device=x.device, dtype=x.dtype)
        if ab.ndim == 0:
            ab = ab.expand(x.shape[0])
        if ab.shape != (x.shape[0],):
            raise ValueError(
                f"alpha_bar must be a scalar or have shape ({x.shape[0]},), got {tuple(ab.shape)}"
            )
        return ab

    def _terms(self, x: torch.Tensor, ab: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """Per-component log-densities of ``p_t`` and the pieces the score reuses.

        With ``delta_k = x - sqrt(abar) mu_k`` and ``y_k = U_k^T delta_k``, the
        quadratic form is ``sum y_k^2 / v_k + (|delta_k|^2 - |y_k|^2) / s_k`` with
        ``v_k = abar lambda_k + 1 - abar`` and ``s_k = abar sigma_k^2 + 1 - abar``.
        Everything is one ``(B, d) @ (d, K r)`` product; no ``(B, K, d)`` tensor.
        """
        logw, mu, U, Umu, mu2, lam, sig2 = self._params(x.device, x.dtype)
        B, K, d, r = x.shape[0], self.n_components, self.dim, self.rank
        sa, one_m = ab.sqrt(), 1.0 - ab
        y = (x @ U).view(B, K, r) - sa[:, None, None] * Umu
        v = ab[:, None, None] * lam + one_m[:, None, None]  # (B, K, r)
        quad = (y * y / v).sum(-1)
        logdet = v.log().sum(-1)
        s = None
        if r < d:
            s = ab[:, None] * sig2 + one_m[:, None]  # (B, K)
            delta2 = (x * x).sum(-1, keepdim=True) - 2.0 * sa[:, None] * (x @ mu.T)
            delta2 = delta2 + ab[:, None] * mu2
            quad = quad + (delta2 - (y * y).sum(-1)).clamp_min(0.0) / s
            logdet = logdet + (d - r) * s.log()
        logc = logw - 0.5 * (quad + logdet + d * _LOG_2PI)
        return logc, y, v, s

    def _precision_delta(self, x: torch.Tensor, ab: torch.Tensor) -> torch.Tensor:
        """``sum_k r_k(x) Sigma_{k,t}^{-1} (x - m_{k,t}) = -grad log p_t(x)``, shape (B, d)."""
        logc, y, v, s = self._terms(x, ab)
        resp = torch.softmax(logc, dim=-1)  # stable log-sum-exp responsibilities
        _, mu, U, *_ = self._params(x.device, x.dtype)
        B = x.shape[0]
        if s is None:
            return (resp[:, :, None] * y / v).reshape(B, -1) @ U.T
        coef = resp[:, :, None] * y * (1.0 / v - 1.0 / s[:, :, None])
        c = resp / s  # isotropic part: sum_k c_k (x - sqrt(abar) mu_k)
        out = coef.reshape(B, -1) @ U.T + c.sum(1, keepdim=True) * x
        return out - ab.sqrt()[:, None] * (c @ mu)

    # ------------------------------------------------------------------ public
    def log_prob_t(self, x: torch.Tensor, alpha_bar: Any) -> torch.Tensor:
        """Log-density of the noised marginal ``p_t`` at noise level ``alpha_bar``.

        Parameters
        ----------
        x : torch.Tensor, shape (B, ...)
            Points, ``d`` values per sample.
        alpha_bar : float or torch.Tensor, shape () or (B,)
            ``abar_t`` in [0, 1], per sample or shared.

        Returns
        -------
        torch.Tensor, shape (B,)
        """
        xf, _ = self._flatten(x)
        logc = self._terms(xf, self._alpha_bar(alpha_bar, xf))[0]
        return torch.logsumexp(logc, dim=-1)

    def log_prob(self, x: torch.Tensor) -> torch.Tensor:
        """Log-density of the target ``p_0``, shape (B,)."""
        return self.log_prob_t(x, 1.0)

    def score(self, x: torch.Tensor, alpha_bar: Any) -> torch.Tensor:
        """``grad_x log p_t(x)`` at noise level ``alpha_bar``, in the shape and dtype of ``x``."""
        xf, _ = self._flatten(x)
        out = -self._precision_delta(xf, self._alpha_bar(alpha_bar, xf))
        return out.reshape(x.shape).to(x.dtype)

    def eps_from_alpha_bar(self, x: torch.Tensor, alpha_bar: Any) -> torch.Tensor:
        """The exact noise prediction ``-sqrt(1 - abar) grad log p_t(x)``.

        Parameters
        ----------
        x : torch.Tensor, shape (B, ...)
        alpha_bar : float or torch.Tensor, shape () or (B,)

        Returns
        -------
        torch.Tensor
            In the shape and dtype of ``x``.
        """
        xf, _ = self._flatten(x)
        ab = self._alpha_bar(alpha_bar, xf)
        out = (1.0 - ab).clamp_min(0.0).sqrt()[:, None] * self._precision_delta(xf, ab)
        return out.reshape(x.shape).to(x.dtype)

    def eps(self, x: torch.Tensor, t_index: Any, alphas_cumprod: Any) -> torch.Tensor:
        """The exact noise prediction at training timesteps ``t_index``.

        Parameters
        ----------
        x : torch.Tensor, shape (B, ...)
        t_index : int or torch.LongTensor, shape () or (B,)
            Training-timestep indices in ``0 .. T-1``.
        alphas_cumprod : torch.Tensor, shape (T,)
            The schedule's ``abar_t``.

        Returns
        -------
        torch.Tensor
            In the shape and dtype of ``x``.
        """
        ac = _check_alphas_cumprod(alphas_cumprod)
        t = _check_timesteps(t_index, ac.shape[0], x)
        return self.eps_from_alpha_bar(x, ac.to(x.device)[t])

    def eps_model(self, schedule: Any) -> ExactEpsModel:
        """The exact noise predictor as a network-like callable ``model(x, t)``.

        Parameters
        ----------
        schedule : object with ``alphas_cumprod``, or a 1-D tensor of ``abar_t``
            The training schedule, e.g. :class:`pmm_pymc.diffusion.schedules.DDPMSchedule`.

        Returns
        -------
        ExactEpsModel
            ``model(x, t)`` with ``t`` a LongTensor of timestep indices of shape
            ``(batch,)``: the convention of diffusers' ``UNet2DModel``.
        """
        return ExactEpsModel(self, schedule)

    def sample(
        self,
        n: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype = torch.float32,
    ) -> torch.Tensor:
        """Exact samples from the target.

        Parameters
        ----------
        n : int
            Number of samples.
        generator : torch.Generator, optional
            Source of every random number; they are drawn on its device and
            then moved to ``device``.
        device : torch.device or str, optional
            Device of the result. Default: the generator's device, else CPU.
        dtype : torch.dtype, default torch.float32

        Returns
        -------
        torch.Tensor, shape (n, d)
        """
        n = check_int("n", n, 1)
        draw_device = generator.device if generator is not None else torch.device(device or "cpu")
        out_device = torch.device(device) if device is not None else draw_device
        w, mu, U, lam, sig2 = (
            t.to(draw_device) for t in (self._weights, self._means, self._U, self._lam, self._sig2)
        )
        comp = torch.multinomial(w, n, replacement=True, generator=generator)
        z = torch.randn(n, self.dim, generator=generator, device=draw_device, dtype=torch.float64)
        # x = mu_k + S_k z, S_k = U diag(sqrt lam) U^T + sigma (I - U U^T) the symmetric
        # square root; a loop over the (few) components, not over the samples
        x = torch.empty_like(z)
        sd = sig2.sqrt()
        for k in range(self.n_components):
            idx = (comp == k).nonzero().squeeze(1)
            zk = z[idx]
            coef = (zk @ U[k]) * (lam[k].sqrt() - sd[k])
            x[idx] = mu[k] + coef @ U[k].T + sd[k] * zk
        return x.to(device=out_device, dtype=dtype)


class ExactEpsModel:
    """A testbed's exact noise predictor in network form: ``model(x, t)``.

    Parameters
    ----------
    testbed : GaussianMixtureTestbed
    schedule : object with ``alphas_cumprod``, or a 1-D tensor of ``abar_t``

    Notes
    -----
    Called with ``x`` of shape ``(B, ...)`` and ``t`` a LongTensor of shape
    ``(B,)`` (or a Python int) of training-timestep indices, it returns
    ``eps(x, t)`` in the shape and dtype of ``x``. The number of calls and of
    evaluated rows are counted in :attr:`n_calls` and :attr:`n_evals`.
    """

    def __init__(self, testbed: GaussianMixtureTestbed, schedule: Any) -> None:
        ac = getattr(schedule, "alphas_cumprod", schedule)
        self.testbed = testbed
        self.alphas_cumprod = _check_alphas_cumprod(ac)
        self._ac_cache: dict[torch.device, torch.Tensor] = {}
        self.n_calls = 0
        self.n_evals = 0

    def __call__(self, x: torch.Tensor, t: Any) -> torch.Tensor:
        if not torch.is_tensor(x):
            raise TypeError(f"x must be a torch.Tensor, got {type(x)!r}")
        ac = self._ac_cache.get(x.device)
        if ac is None:
            ac = self._ac_cache.setdefault(x.device, self.alphas_cumprod.to(x.device))
        t = _check_timesteps(t, ac.shape[0], x)
        self.n_calls += 1
        self.n_evals += x.shape[0]
        return self.testbed.eps_from_alpha_bar(x, ac[t])

    def __repr__(self) -> str:
        return f"ExactEpsModel({self.testbed!r}, T={self.alphas_cumprod.shape[0]})"


def _check_alphas_cumprod(ac: Any) -> torch.Tensor:
    ac = _as_float64("alphas_cumprod", ac)
    if ac.ndim != 1 or ac.shape[0] < 1:
        raise ValueError(f"alphas_cumprod must be a 1-D tensor of length T, got {tuple(ac.shape)}")
    if (ac <= 0).any() or (ac > 1).any():
        raise ValueError("alphas_cumprod must lie in (0, 1]")
    return ac


def _check_timesteps(t: Any, T: int, x: torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(t, device=x.device)
    if t.is_floating_point() or t.dtype == torch.bool or t.is_complex():
        raise TypeError(f"t must hold integer timestep indices, got dtype {t.dtype}")
    if t.ndim == 0:
        t = t.expand(x.shape[0])
    if t.shape != (x.shape[0],):
        raise ValueError(f"t must have shape ({x.shape[0]},) to match x, got {tuple(t.shape)}")
    # checked on the CPU only: on an accelerator the check would synchronise the host
    if t.device.type == "cpu" and t.numel() and (t.min() < 0 or t.max() >= T):
        raise ValueError(
            f"t must hold timestep indices in [0, {T - 1}], got range "
            f"[{t.min().item()}, {t.max().item()}]"
        )
    return t.long()


# ------------------------------------------------------------------- registry
def _mixture2d() -> GaussianMixtureTestbed:
    """Eight thin arcs on the unit circle (unequal weights) and a round centre."""
    n_ring = 8
    angles = 2.0 * math.pi * np.arange(n_ring) / n_ring
    means = np.concatenate([np.stack([np.cos(angles), np.sin(angles)], 1), np.zeros((1, 2))])
    radial_var, tangential_var = 0.03**2, 0.15**2
    covs = []
    for a in angles:
        u = np.array([np.cos(a), np.sin(a)])  # radial
        v = np.array([-np.sin(a), np.cos(a)])  # tangential
        covs.append(radial_var * np.outer(u, u) + tangential_var * np.outer(v, v))
    covs.append(0.1**2 * np.eye(2))
    weights = np.concatenate([1.0 + np.arange(n_ring) / 2.0, [2.0]])
    return GaussianMixtureTestbed(weights, means, np.stack(covs), name="mixture2d")


def _aniso64() -> GaussianMixtureTestbed:
    """Eight 64-d components, eigenvalues log-spaced from 0.01 to 0.3, random bases."""
    rng = np.random.default_rng(0)
    d, K = 64, 8
    lam = np.geomspace(0.3, 0.01, d)
    covs = []
    for _ in range(K):
        q, r = np.linalg.qr(rng.normal(size=(d, d)))
        q = q * np.sign(np.diag(r))  # Haar-distributed rotation
        covs.append((q * lam) @ q.T)
    means = 0.5 * rng.normal(size=(K, d))
    weights = 1.0 + np.arange(K)
    return GaussianMixtureTestbed(weights, means, np.stack(covs), name="aniso64")


def fit_digits_mixture(
    n_components: int = 10, reg_covar: float = 1e-2, seed: int = 0
) -> GaussianMixtureTestbed:
    """Fit a full-covariance Gaussian mixture to the bundled 8x8 digits.

    The pixels are scaled to [-1, 1] (:func:`pmm_pymc.evaluation.digits.digits_data`);
    the fit is scikit-learn's :class:`~sklearn.mixture.GaussianMixture` with
    ``random_state=seed``. ``reg_covar`` floors every eigenvalue (the variance in
    the thinnest directions). ``get_testbed("digits64")`` is this fit with the
    defaults, stored in the package so it does not depend on the installed
    scikit-learn.

    Parameters
    ----------
    n_components : int, default 10
    reg_covar : float, default 0.01
    seed : int, default 0

    Returns
    -------
    GaussianMixtureTestbed
    """
    n_components = check_int("n_components", n_components, 1)
    reg_covar = check_real("reg_covar", reg_covar, gt=0)
    seed = check_int("seed", seed, 0)
    from sklearn.mixture import GaussianMixture

    from pmm_pymc.evaluation.digits import digits_data

    x = digits_data().numpy().astype(np.float64)
    gm = GaussianMixture(
        n_components, covariance_type="full", reg_covar=reg_covar, random_state=seed, max_iter=500
    ).fit(x)
    return GaussianMixtureTestbed(gm.weights_, gm.means_, gm.covariances_, name="digits64")


@lru_cache(maxsize=1)
def _digits64_params() -> dict[str, torch.Tensor]:
    path = resources.files("pmm_pymc") / "data" / "digits" / _DIGITS_FILE
    if path.is_file():
        with resources.as_file(path) as p:
            return torch.load(p, weights_only=True)
    tb = fit_digits_mixture()  # fall back to a fresh fit (about a second)
    return {"weights": tb.weights, "means": tb.means, "covariances": tb.covariances}


def _digits64() -> GaussianMixtureTestbed:
    p = _digits64_params()
    cov = p["covariances"].double()
    return GaussianMixtureTestbed(
        p["weights"], p["means"], 0.5 * (cov + cov.transpose(-1, -2)), name="digits64"
    )


_REGISTRY: dict[str, Callable[[], GaussianMixtureTestbed]] = {
    "aniso64": _aniso64,
    "digits64": _digits64,
    "mixture2d": _mixture2d,
}


def list_testbeds() -> list[str]:
    """Names accepted by :func:`get_testbed`."""
    return sorted(_REGISTRY)


def get_testbed(name: str) -> GaussianMixtureTestbed:
    """A named testbed.

    Parameters
    ----------
    name : str
        One of :func:`list_testbeds`: ``"mixture2d"``, ``"digits64"`` or ``"aniso64"``.

    Returns
    -------
    GaussianMixtureTestbed
    """
    if name not in _REGISTRY:
        raise ValueError(f"unknown testbed {name!r}; valid names: {', '.join(list_testbeds())}")
    return _REGISTRY[name]()
