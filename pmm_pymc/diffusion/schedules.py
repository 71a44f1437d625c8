"""Noise schedules of the discrete variance-preserving (DDPM) forward process.

The forward process of a DDPM with ``T`` training steps adds noise as

.. math::

    q(x_t \\mid x_0)
    = \\mathcal N\\big(\\sqrt{\\bar\\alpha_t}\\, x_0,\\ (1 - \\bar\\alpha_t) I\\big),
    \\qquad \\bar\\alpha_t = \\prod_{s \\le t} (1 - \\beta_s), \\quad t = 0, \\dots, T-1,

with the training-timestep indices ``t = 0..T-1`` that diffusers' schedulers
and UNets use. A :class:`DDPMSchedule` holds the ``betas`` on the host in
float64: every sampler coefficient is computed from them in double precision
on the CPU, before any device work, so a schedule never causes a host-device
synchronisation.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pmm_pymc._validate import check_int, check_real

__all__ = ["DDPMSchedule", "get_schedule"]


@dataclass(frozen=True, eq=False)
class DDPMSchedule:
    """The betas of a DDPM forward process, with the quantities derived from them.

    Build one with :meth:`linear`, :meth:`cosine`, :meth:`from_betas` or
    :meth:`from_diffusers`.

    Parameters
    ----------
    betas : array_like, shape (T,)
        ``beta_t`` for ``t = 0..T-1``, each in ``(0, 1)``.
    name : str, default "custom"
        A label for printing.

    Attributes
    ----------
    betas : numpy.ndarray, shape (T,), float64
        A private float64 copy of the betas.
    alphas : numpy.ndarray
        ``1 - betas``.
    alphas_cumprod : numpy.ndarray
        ``bar alpha_t``, the signal fraction of ``x_t``.
    """

    betas: np.ndarray
    name: str = "custom"
    alphas: np.ndarray = field(init=False, repr=False)
    alphas_cumprod: np.ndarray = field(init=False, repr=False)

    def __post_init__(self) -> None:
        betas = _validate_betas(self.betas)
        alphas = 1.0 - betas
        alphas_cumprod = np.cumprod(alphas)
        object.__setattr__(self, "betas", betas)
        object.__setattr__(self, "alphas", alphas)
        object.__setattr__(self, "alphas_cumprod", alphas_cumprod)

    def __repr__(self) -> str:
        return (
            f"DDPMSchedule(name={self.name!r}, T={self.T}, "
            f"beta=[{self.betas[0]:.3g}, {self.betas[-1]:.3g}])"
        )

    @property
    def T(self) -> int:  # noqa: N802 - the standard name
        """Number of training timesteps."""
        return int(self.betas.shape[0])

    # ------------------------------------------------------------------ constructors
    @classmethod
    def linear(
        cls, T: int = 1000, beta_start: float = 1e-4, beta_end: float = 0.02
    ) -> DDPMSchedule:
        """The linear schedule of Ho et al. (2020): betas evenly spaced from start to end.

        Parameters
        ----------
        T : int, default 1000
            Number of training timesteps.
        beta_start, beta_end : float
            First and last beta.

        Returns
        -------
        DDPMSchedule
        """
        T = check_int("T", T, 1)
        beta_start = check_real("beta_start", beta_start, gt=0, lt=1)
        beta_end = check_real("beta_end", beta_end, gt=0, lt=1)
        if beta_start > beta_end:
            raise ValueError(
                "need 0 < beta_start <= beta_end < 1, got "
                f"beta_start={beta_start!r}, beta_end={beta_end!r}"
            )
        return cls(np.linspace(beta_start, beta_end, T, dtype=np.float64), name="linear")

    @classmethod
    def cosine(cls, T: int = 1000, s: float = 0.008, max_beta: float = 0.999) -> DDPMSchedule:
        """The cosine schedule of Nichol & Dhariwal (2021).

        ``bar alpha(u) = cos^2(((u + s)/(1 + s)) pi/2)`` and
        ``beta_t = min(1 - bar alpha((t+1)/T) / bar alpha(t/T), max_beta)``,
        as diffusers' ``"squaredcos_cap_v2"``.

        Parameters
        ----------
        T : int, default 1000
        s : float, default 0.008
            Offset that keeps ``beta_0`` away from zero.
        max_beta : float, default 0.999
            Cap on beta near ``t = T``.

        Returns
        -------
        DDPMSchedule
        """
        T = check_int("T", T, 1)
        s = check_real("s", s, ge=0)
        max_beta = check_real("max_beta", max_beta, gt=0, lt=1)

        def abar(u: np.ndarray) -> np.ndarray:
            return np.cos((u + s) / (1.0 + s) * math.pi / 2.0) ** 2

        u = np.arange(T + 1, dtype=np.float64) / T
        betas = np.minimum(1.0 - abar(u[1:]) / abar(u[:-1]), max_beta)
        return cls(betas, name="cosine")

    @classmethod
    def from_betas(cls, betas: Any, name: str = "custom") -> DDPMSchedule:
        """A schedule from explicit betas (a sequence, numpy array or torch tensor).

        Parameters
        ----------
        betas : array_like, shape (T,)
        name : str, default "custom"

        Returns
        -------
        DDPMSchedule
        """
        return cls(betas, name=name)

    @classmethod
    def from_diffusers(cls, scheduler: Any) -> DDPMSchedule:
        """The schedule a diffusers scheduler was configured with.

        Reads ``scheduler.betas`` (every diffusers DDPM-family scheduler has
        them). diffusers itself is not needed to call this.

        Parameters
        ----------
        scheduler : diffusers scheduler
            E.g. ``DDPMScheduler.from_pretrained(...)``.

        Returns
        -------
        DDPMSchedule

        Raises
        ------
        TypeError
            If the object has no ``betas``.
        ValueError
            If its config says the model predicts something other than the
            noise (``prediction_type != "epsilon"``): the samplers here take
            an ε-prediction network.
        """
        betas = getattr(scheduler, "betas", None)
        if betas is None:
            raise TypeError(
                f"expected a diffusers scheduler with a `betas` attribute, got {type(scheduler)!r}"
            )
        config = getattr(scheduler, "config", None)
        prediction = getattr(config, "prediction_type", None)
        if prediction is None and isinstance(config, dict):
            prediction = config.get("prediction_type")
        if prediction is not None and prediction != "epsilon":
            raise ValueError(
                f"scheduler.config.prediction_type={prediction!r}; the samplers of pmm_pymc "
                "take an epsilon-prediction model (prediction_type='epsilon')"
            )
        if hasattr(betas, "detach"):
            betas = betas.detach().cpu().double().numpy()
        return cls(betas, name=f"diffusers:{type(scheduler).__name__}")


def get_schedule(schedule: DDPMSchedule | str) -> DDPMSchedule:
    """Return ``schedule`` itself, or the 1000-step schedule named ``"linear"`` or ``"cosine"``.

    Parameters
    ----------
    schedule : DDPMSchedule or {"linear", "cosine"}

    Returns
    -------
    DDPMSchedule
    """
    if isinstance(schedule, DDPMSchedule):
        return schedule
    if isinstance(schedule, str):
        if schedule == "linear":
            return DDPMSchedule.linear()
        if schedule == "cosine":
            return DDPMSchedule.cosine()
        raise ValueError(f"unknown schedule {schedule!r}; use 'linear', 'cosine' or a DDPMSchedule")
    raise TypeError(f"schedule must be a DDPMSchedule or a name, got {type(schedule)!r}")


def _validate_betas(betas: Any) -> np.ndarray:
    if hasattr(betas, "detach"):
        betas = betas.detach().cpu().double().numpy()
    arr = np.array(betas, dtype=np.float64, copy=True)
    if arr.ndim != 1 or arr.shape[0] < 1:
        raise ValueError(f"betas must be a non-empty 1-D sequence, got shape {arr.shape}")
    if not np.all(np.isfinite(arr)) or np.any(arr <= 0.0) or np.any(arr >= 1.0):
        bad = arr[~(np.isfinite(arr) & (arr > 0.0) & (arr < 1.0))]
        raise ValueError(f"every beta must be in (0, 1); got values such as {bad[:3].tolist()}")
    return arr
