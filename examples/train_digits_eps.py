"""Train the small digits ε-network and digit classifier shipped in pmm_pymc/data/digits.

Both nets train on the training split of scikit-learn's bundled 8x8 digits
(:func:`pmm_pymc.evaluation.digits.digits_data`, pixels in [-1, 1]); nothing is
downloaded. Deterministic for a given seed, torch version and thread count.

* The ε-network (:class:`pmm_pymc.evaluation.digits.EpsMLP`) with the standard DDPM loss
  ``E |eps - eps_theta(sqrt(abar_t) x0 + sqrt(1 - abar_t) eps, t)|^2``, ``t``
  uniform on the linear schedule with ``T = 1000``; AdamW with warm-up and
  cosine decay; the saved weights are an exponential moving average.
* The classifier (:class:`pmm_pymc.evaluation.digits.DigitClassifier`) with cross-entropy
  on the training split, inputs jittered by N(0, 0.1^2) noise so that its
  features stay smooth near (imperfect) generated digits.

Usage::

    python examples/train_digits_eps.py            # about 3 minutes of CPU
    python examples/train_digits_eps.py --eps-steps 2000 --out /tmp/digits

The script prints the held-out accuracy and held-out denoising losses (the
network against the zero predictor and against the best linear predictor,
the one that is exact for a Gaussian with the data's mean and covariance).
"""

from __future__ import annotations

import argparse
import copy
import math
import time
from pathlib import Path

import torch
from torch import nn

from pmm_pymc.diffusion.schedules import DDPMSchedule
from pmm_pymc.evaluation.digits import (
    CLASSIFIER_WEIGHTS,
    EPS_WEIGHTS,
    DigitClassifier,
    EpsMLP,
    digits_data,
    digits_labels,
)

DEFAULT_OUT = Path(__file__).resolve().parents[1] / "pmm_pymc" / "data" / "digits"


def lr_at(step: int, total: int, peak: float, warmup: int) -> float:
    if step < warmup:
        return peak * (step + 1) / warmup
    frac = (step - warmup) / max(1, total - warmup)
    return peak * 0.5 * (1.0 + math.cos(math.pi * frac))


def train_eps(
    x: torch.Tensor, abar: torch.Tensor, steps: int, batch: int, seed: int
) -> tuple[EpsMLP, float]:
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = EpsMLP()
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)
    T = abar.shape[0]
    running = 1.0
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 1e-3, 200)
        x0 = x[torch.randint(0, x.shape[0], (batch,), generator=g)]
        t = torch.randint(0, T, (batch,), generator=g)
        eps = torch.randn(x0.shape, generator=g)
        a = abar[t][:, None]
        xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
        loss = (model(xt, t) - eps).pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        decay = min(0.999, (1 + step) / (10 + step))
        with torch.no_grad():
            for pe, pm in zip(ema.parameters(), model.parameters()):
                pe.lerp_(pm, 1.0 - decay)
        running = 0.99 * running + 0.01 * loss.item()
        if (step + 1) % 1000 == 0:
            print(f"  eps step {step + 1:6d}  loss (running) {running:.4f}", flush=True)
    return ema.eval(), running


def train_classifier(
    x: torch.Tensor, y: torch.Tensor, steps: int, batch: int, seed: int
) -> DigitClassifier:
    g = torch.Generator().manual_seed(seed + 1)
    torch.manual_seed(seed + 1)
    model = DigitClassifier()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, 2e-3, 100)
        idx = torch.randint(0, x.shape[0], (batch,), generator=g)
        xb = x[idx] + 0.1 * torch.randn(batch, 64, generator=g)
        loss = nn.functional.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return model.eval()


@torch.no_grad()
def denoising_losses(
    model: EpsMLP, x_train: torch.Tensor, x_test: torch.Tensor, abar: torch.Tensor, t: int
) -> dict[str, float]:
    """Held-out ε-MSE per coordinate at timestep t: network, zero, best linear (Gaussian)."""
    g = torch.Generator().manual_seed(1234)
    reps = 8
    x0 = x_test.repeat(reps, 1)
    eps = torch.randn(x0.shape, generator=g)
    a = abar[t]
    xt = a.sqrt() * x0 + (1 - a).sqrt() * eps
    mu = x_train.mean(0)
    cov = torch.cov(x_train.T)
    prec = torch.linalg.inv(a * cov + (1 - a) * torch.eye(64))
    linear = (1 - a).sqrt() * (xt - a.sqrt() * mu) @ prec
    net = model(xt, torch.full((x0.shape[0],), t))
    return {
        "network": (net - eps).pow(2).mean().item(),
        "zero": eps.pow(2).mean().item(),
        "linear-gaussian": (linear - eps).pow(2).mean().item(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--eps-steps", type=int, default=12_000)
    parser.add_argument("--clf-steps", type=int, default=3_000)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    x_train, x_test = digits_data("train"), digits_data("test")
    y_train, y_test = digits_labels("train"), digits_labels("test")
    abar = torch.as_tensor(DDPMSchedule.linear(1000).alphas_cumprod, dtype=torch.float32)

    t0, c0 = time.time(), time.process_time()
    clf = train_classifier(x_train, y_train, args.clf_steps, 128, args.seed)
    with torch.no_grad():
        acc = (clf(x_test).argmax(1) == y_test).float().mean().item()
    print(f"classifier: held-out accuracy {acc:.4f} on {len(y_test)} digits")

    model, _ = train_eps(x_train, abar, args.eps_steps, args.batch, args.seed)
    for t in (50, 200, 500, 800):
        losses = denoising_losses(model, x_train, x_test, abar, t)
        print(f"held-out eps-MSE at t={t}: " + ", ".join(f"{k} {v:.4f}" for k, v in losses.items()))
    wall, cpu = time.time() - t0, time.process_time() - c0
    print(f"training took {wall:.0f} s wall, {cpu:.0f} s CPU ({args.threads} thread(s))")

    args.out.mkdir(parents=True, exist_ok=True)
    for net, name in ((model, EPS_WEIGHTS), (clf, CLASSIFIER_WEIGHTS)):
        state = {k: v.detach().to(torch.float16) for k, v in net.state_dict().items()}
        torch.save(state, args.out / name)
        print(f"saved {args.out / name} ({(args.out / name).stat().st_size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
