"""Scikit-learn's bundled 8x8 digits for diffusion: data, a small ε-network, a classifier.

A real (if small) trained network for the diffusion samplers, and a feature
extractor to score their samples with a Fréchet distance, like FID does with
Inception features. Both nets are trained by ``examples/train_digits_eps.py``
on the training split, in a few minutes on two CPU cores; their weights ship
in ``pmm_pymc/data/digits`` (float16 state dicts, under 1 MB together).

* :func:`digits_data`: the 1797 digits with pixels scaled to [-1, 1], a
  fixed 80/20 train/test split.
* :class:`EpsMLP`: ε-prediction network ``model(x, t)`` with ``t`` the
  training-timestep indices (the diffusers/k-diffusion convention), for the
  linear DDPM schedule with ``T = 1000``.
* :class:`DigitClassifier`: an MLP classifier; :meth:`DigitClassifier.features`
  is its penultimate layer.
* :func:`load_eps_model`, :func:`load_classifier`: the bundled trained nets.
"""

from __future__ import annotations

import math
from importlib import resources
from typing import Any, Literal

import numpy as np

from pmm_pymc._optional import require
from pmm_pymc._validate import check_int, check_real

require("torch", "torch", "pmm_pymc.evaluation.digits")

import torch  # noqa: E402
from torch import nn  # noqa: E402

__all__ = [
    "DigitClassifier",
    "EpsMLP",
    "digits_data",
    "digits_labels",
    "load_classifier",
    "load_eps_model",
    "sinusoidal_embedding",
]

EPS_WEIGHTS = "eps_mlp.pt"
CLASSIFIER_WEIGHTS = "classifier.pt"
N_DIGITS = 1797
TEST_FRACTION = 0.2
SPLIT_SEED = 0
_TRAIN_HINT = "run `python examples/train_digits_eps.py` to train and save them"


def _split_index(split: str) -> np.ndarray:
    if split not in ("all", "train", "test"):
        raise ValueError(f"split must be 'all', 'train' or 'test', got {split!r}")
    if split == "all":
        return np.arange(N_DIGITS)
    perm = np.random.default_rng(SPLIT_SEED).permutation(N_DIGITS)
    n_test = int(round(TEST_FRACTION * N_DIGITS))
    return np.sort(perm[:n_test] if split == "test" else perm[n_test:])


def digits_data(split: Literal["all", "train", "test"] = "all") -> torch.Tensor:
    """The bundled 8x8 digits, pixels scaled from [0, 16] to [-1, 1].

    Parameters
    ----------
    split : {"all", "train", "test"}, default "all"
        The 1797 digits, or the fixed 80/20 split (a permutation with seed 0):
        1438 for training, 359 held out.

    Returns
    -------
    torch.Tensor, float32, shape (n, 64)
        Row-major 8x8 images; ``x.reshape(-1, 1, 8, 8)`` gives image tensors.
    """
    from sklearn.datasets import load_digits

    x = load_digits().data[_split_index(split)]
    return torch.as_tensor(x / 8.0 - 1.0, dtype=torch.float32)


def digits_labels(split: Literal["all", "train", "test"] = "all") -> torch.Tensor:
    """The digit labels (0-9) matching :func:`digits_data` of the same split, int64."""
    from sklearn.datasets import load_digits

    return torch.as_tensor(load_digits().target[_split_index(split)], dtype=torch.long)


def sinusoidal_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Transformer-style sinusoidal embedding of (integer or real) timesteps.

    Parameters
    ----------
    t : torch.Tensor, shape (B,)
    dim : int
        Even embedding size: ``dim/2`` cosines then ``dim/2`` sines.
    max_period : float, default 10000

    Returns
    -------
    torch.Tensor, float32, shape (B, dim)
    """
    dim = check_int("dim", dim, 2)
    if dim % 2:
        raise ValueError(f"dim must be even, got {dim}")
    max_period = check_real("max_period", max_period, gt=0)
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / half
    )
    args = t.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], dim=-1)


def _flatten_input(x: torch.Tensor, what: str) -> torch.Tensor:
    if not torch.is_tensor(x) or not x.is_floating_point():
        raise TypeError(f"{what} takes a floating-point torch.Tensor, got {type(x)!r}")
    if x.ndim < 2 or math.prod(x.shape[1:]) != 64:
        raise ValueError(
            f"{what} takes x of shape (B, 64) or (B, 1, 8, 8), got shape {tuple(x.shape)}"
        )
    return x.reshape(x.shape[0], 64)


class EpsMLP(nn.Module):
    """A residual MLP that predicts the noise of noised 8x8 digits.

    ``h = W_in x``; ``n_blocks`` times ``h <- h + W_2 SiLU(W_1 SiLU(LN(h) + e(t)))``
    with ``e(t)`` an MLP of the sinusoidal embedding of ``t``; output
    ``W_out SiLU(LN(h)) + (W_s e(t)) * x``. The time-gated skip lets the net be
    ``eps ≈ x`` at high noise exactly, which a plain MLP learns only roughly.

    Parameters
    ----------
    hidden : int, default 256
    n_blocks : int, default 2
    time_dim : int, default 64
        Size of the sinusoidal embedding.

    Notes
    -----
    ``forward(x, t)``: ``x`` of shape ``(B, 64)`` or ``(B, 1, 8, 8)`` in the
    data scale [-1, 1] (noised), ``t`` a LongTensor of shape ``(B,)`` (or an
    int) of training-timestep indices ``0..T-1``. Returns ε in the shape of ``x``.
    """

    def __init__(self, hidden: int = 256, n_blocks: int = 2, time_dim: int = 64) -> None:
        super().__init__()
        self.time_dim = time_dim
        self.time_mlp = nn.Sequential(
            nn.Linear(time_dim, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
        )
        self.inp = nn.Linear(64, hidden)
        self.norms = nn.ModuleList(nn.LayerNorm(hidden) for _ in range(n_blocks))
        self.blocks = nn.ModuleList(
            nn.Sequential(
                nn.SiLU(), nn.Linear(hidden, hidden), nn.SiLU(), nn.Linear(hidden, hidden)
            )
            for _ in range(n_blocks)
        )
        self.out_norm = nn.LayerNorm(hidden)
        self.out = nn.Linear(hidden, 64)
        self.skip = nn.Linear(hidden, 64)
        nn.init.zeros_(self.skip.weight)
        nn.init.zeros_(self.skip.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor | int) -> torch.Tensor:
        xf = _flatten_input(x, "EpsMLP")
        t = torch.as_tensor(t, device=x.device)
        if t.ndim == 0:
            t = t.expand(x.shape[0])
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape ({x.shape[0]},), got {tuple(t.shape)}")
        dtype = self.inp.weight.dtype
        emb = self.time_mlp(sinusoidal_embedding(t, self.time_dim).to(dtype))
        h = self.inp(xf.to(dtype))
        for norm, block in zip(self.norms, self.blocks):
            h = h + block(norm(h) + emb)
        out = self.out(nn.functional.silu(self.out_norm(h))) + self.skip(emb) * xf.to(dtype)
        return out.reshape(x.shape).to(x.dtype)


class DigitClassifier(nn.Module):
    """An MLP digit classifier; its penultimate layer gives Fréchet features.

    Parameters
    ----------
    hidden : int, default 128
    feature_dim : int, default 64

    Notes
    -----
    ``forward(x)`` returns logits of shape ``(B, 10)``; :meth:`features`
    returns the ``feature_dim`` activations before the last layer. Inputs as
    for :class:`EpsMLP`, in [-1, 1].
    """

    def __init__(self, hidden: int = 128, feature_dim: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(64, hidden),
            nn.SiLU(),
            nn.Dropout(0.2),
            nn.Linear(hidden, feature_dim),
            nn.SiLU(),
        )
        self.head = nn.Linear(feature_dim, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer activations, shape ``(B, feature_dim)``."""
        xf = _flatten_input(x, "DigitClassifier")
        return self.body(xf.to(self.head.weight.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _weights_path(filename: str) -> Any:
    return resources.files("pmm_pymc") / "data" / "digits" / filename


def _load(module: nn.Module, filename: str, what: str, device: Any, dtype: torch.dtype) -> Any:
    path = _weights_path(filename)
    if not path.is_file():
        raise FileNotFoundError(
            f"the trained {what} weights ({filename}) are not in pmm_pymc/data/digits; "
            + _TRAIN_HINT
        )
    with resources.as_file(path) as p:
        state = torch.load(p, map_location="cpu", weights_only=True)
    module.load_state_dict({k: v.float() for k, v in state.items()})
    return module.to(device=device, dtype=dtype).eval().requires_grad_(False)


def load_eps_model(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> EpsMLP:
    """The bundled trained ε-network (linear schedule, ``T = 1000``), in eval mode.

    Parameters
    ----------
    device : torch.device or str, optional
    dtype : torch.dtype, default torch.float32
        Parameter dtype (the weights are stored in float16).

    Returns
    -------
    EpsMLP

    Raises
    ------
    FileNotFoundError
        If the weights are absent: run ``examples/train_digits_eps.py``.
    """
    return _load(EpsMLP(), EPS_WEIGHTS, "ε-network", device, dtype)


def load_classifier(
    device: torch.device | str | None = None, dtype: torch.dtype = torch.float32
) -> DigitClassifier:
    """The bundled trained digit classifier, in eval mode (see :func:`load_eps_model`)."""
    return _load(DigitClassifier(), CLASSIFIER_WEIGHTS, "classifier", device, dtype)
