"""Sample a pretrained diffusers ``UNet2DModel`` with PMM: the one-line wrapper.

diffusers is an optional extra (``pip install "pmm-pymc[torch,diffusers]"``);
nothing in pmm_pymc imports it. A diffusers UNet takes ``(sample, timestep)``
and returns an output object whose ``.sample`` is the predicted noise, so

    model = lambda x, t: unet(x, t).sample

is all :func:`pmm_pymc.diffusion.sample` needs; the schedule comes from the
pipeline's scheduler with :meth:`DDPMSchedule.from_diffusers`.

Run (downloads the model once, from the Hugging Face Hub)::

    python examples/diffusers_unet.py --model google/ddpm-cifar10-32 --nfe 80 --n 16
"""

from __future__ import annotations

import argparse
from typing import Any

import torch

from pmm_pymc.diffusion.sampler import DiffusionOutput, sample
from pmm_pymc.diffusion.schedules import DDPMSchedule


def unet_eps(unet: Any):
    """The one-line wrapper: a diffusers UNet as ``model(x, t) -> eps``."""
    return lambda x, t: unet(x, t).sample


def unet_sample_shape(unet: Any, n: int) -> tuple[int, int, int, int]:
    """``(n, channels, height, width)`` of the images a UNet2DModel was trained on."""
    size = unet.config.sample_size
    h, w = (size, size) if isinstance(size, int) else tuple(size)
    return (n, unet.config.in_channels, h, w)


def sample_unet(
    unet: Any,
    scheduler: Any,
    n: int,
    *,
    method: str = "pmm",
    nfe: float = 80,
    seed: int = 0,
    device: str | torch.device | None = None,
    **kwargs: Any,
) -> DiffusionOutput:
    """Sample ``n`` images from a UNet2DModel and its DDPM scheduler.

    One generator per image (seeded ``seed, seed+1, ...``), so image ``i`` is the
    same whatever ``n``. ``nfe`` is PMM's budget, or the step count of the
    baselines. Images come back in the model's range (``[-1, 1]`` for the
    google/ddpm-* models).
    """
    device = torch.device(device) if device is not None else unet.device
    gens = [torch.Generator(device="cpu").manual_seed(seed + i) for i in range(n)]
    budget = {"nfe": nfe} if method == "pmm" else {"steps": int(nfe)}
    return sample(
        unet_eps(unet),
        unet_sample_shape(unet, n),
        DDPMSchedule.from_diffusers(scheduler),
        method,
        generator=gens,
        device=device,
        **budget,
        **kwargs,
    )


def main() -> None:  # pragma: no cover - needs diffusers and a download
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="google/ddpm-cifar10-32")
    parser.add_argument("--method", default="pmm")
    parser.add_argument("--nfe", type=float, default=80)
    parser.add_argument("--n", type=int, default=16)
    parser.add_argument("--out", default="pmm_samples.png")
    args = parser.parse_args()
    try:
        from diffusers import DDPMPipeline
    except ImportError as err:
        raise SystemExit('this example needs diffusers: pip install "pmm-pymc[diffusers]"') from err

    pipe = DDPMPipeline.from_pretrained(args.model)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    unet = pipe.unet.to(device).eval()
    out = sample_unet(unet, pipe.scheduler, args.n, method=args.method, nfe=args.nfe, progress=True)
    print(f"{args.method}: {out.nfe.double().mean():.1f} network evaluations per image")

    import matplotlib.pyplot as plt

    imgs = ((out.samples.clamp(-1, 1) + 1) / 2).permute(0, 2, 3, 1).cpu().numpy()
    cols = int(len(imgs) ** 0.5 + 0.999)
    rows = (len(imgs) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(cols, rows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, img in zip(axes.flat, imgs):
        ax.imshow(img.squeeze())
    fig.savefig(args.out, dpi=100, bbox_inches="tight")
    print(f"wrote {args.out}")


if __name__ == "__main__":  # pragma: no cover
    main()
