"""Compare diffusion samplers on a testbed with an exact score: metric against network calls.

:func:`compare_diffusion` samples a testbed of :mod:`pmm_pymc.evaluation.testbeds` with every
method of
:func:`pmm_pymc.diffusion.sample` at several budgets of network evaluations (NFE) and seeds,
and scores the samples against exact samples of the target with the metrics of
:mod:`pmm_pymc.evaluation.metrics`. Needs the ``torch`` extra.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

from pmm_pymc._optional import require
from pmm_pymc._validate import check_bool, check_int, check_ints, check_names

require("torch", "torch", "pmm_pymc.compare.diffusion (the diffusion comparison)")

import torch  # noqa: E402

from pmm_pymc.diffusion.sampler import METHODS, sample  # noqa: E402
from pmm_pymc.diffusion.schedules import DDPMSchedule, get_schedule  # noqa: E402
from pmm_pymc.evaluation import metrics as _metrics  # noqa: E402
from pmm_pymc.evaluation.testbeds import get_testbed, list_testbeds  # noqa: E402

__all__ = [
    "DIFFUSION_METRICS",
    "DiffusionComparison",
    "DigitsNetworkTestbed",
    "compare_diffusion",
    "list_diffusion_testbeds",
]

#: Scale of the "fine" MMD bandwidth: a fraction of the median heuristic that resolves thin
#: directions and small modes (see :func:`pmm_pymc.evaluation.metrics.mmd_rbf`).
_FINE_SCALE = 0.2
_EXACT_SEED_OFFSET = 1_000_003  # seeds of the exact reference samples
_FLOOR_SEED_OFFSET = 2_000_003  # seeds of the second exact set (the noise floor)

Metric = Callable[[torch.Tensor, torch.Tensor, Any, dict], float]


def _mmd_median(x: torch.Tensor, y: torch.Tensor, testbed: Any, ctx: dict) -> float:
    return float(_metrics.mmd_rbf(x, y, ctx["bandwidth"]))


def _mmd_fine(x: torch.Tensor, y: torch.Tensor, testbed: Any, ctx: dict) -> float:
    return float(_metrics.mmd_rbf(x, y, ctx["bandwidth"], scale=_FINE_SCALE))


def _sliced_w2(x: torch.Tensor, y: torch.Tensor, testbed: Any, ctx: dict) -> float:
    gen = torch.Generator(device=x.device).manual_seed(ctx["seed"])
    return float(_metrics.sliced_wasserstein(x, y, 128, gen))


def _energy(x: torch.Tensor, y: torch.Tensor, testbed: Any, ctx: dict) -> float:
    return float(_metrics.energy_distance(x, y))


def _log_density_gap(x: torch.Tensor, y: torch.Tensor, testbed: Any, ctx: dict) -> float:
    return float(_metrics.log_density_gap(testbed, x, y))


def _frechet(x: torch.Tensor, y: torch.Tensor, testbed: Any, ctx: dict) -> float:
    features = getattr(testbed, "features", None) or (lambda z: z)
    return float(_metrics.frechet_distance(features(x), features(y)))


def _label_tv(x: torch.Tensor, y: torch.Tensor, testbed: Any, ctx: dict) -> float:
    """Total variation between the classifier-label frequencies of ``x`` and of ``y``."""
    n_classes = int(testbed.n_classes)
    p = torch.bincount(testbed.labels(x).cpu(), minlength=n_classes).double() / x.shape[0]
    q = torch.bincount(testbed.labels(y).cpu(), minlength=n_classes).double() / y.shape[0]
    return float(0.5 * (p - q).abs().sum())


#: Metric name to ``fn(samples, exact, testbed, context)``. The MMDs use one bandwidth per
#: seed, the median heuristic of that seed's exact samples, so every method is scored with
#: the same kernel; the sliced Wasserstein distance uses the same 128 directions per seed.
DIFFUSION_METRICS: dict[str, Metric] = {
    "mmd": _mmd_median,
    "mmd_fine": _mmd_fine,
    "sliced_w2": _sliced_w2,
    "energy": _energy,
    "log_density_gap": _log_density_gap,
    "frechet": _frechet,
    "label_tv": _label_tv,
}


def _default_metrics(testbed: Any) -> list[str]:
    """Every metric the testbed supports: the log-density gap needs ``log_prob``; the
    Fréchet distance is computed on ``testbed.features`` (a classifier's) where it has them,
    on the samples themselves otherwise."""
    names = [m for m in DIFFUSION_METRICS if m not in ("log_density_gap", "label_tv")]
    if callable(getattr(testbed, "labels", None)):
        names.append("label_tv")
    if callable(getattr(testbed, "log_prob", None)):
        names.insert(names.index("energy") + 1, "log_density_gap")
    return names


class DigitsNetworkTestbed:
    """The bundled trained digits ε-network, scored against the real digits.

    Unlike the exact testbeds, the target is the data distribution the network learned: the
    reference samples are the 1438 digits of the training split
    (:func:`pmm_pymc.evaluation.digits.digits_data`), and the noise floor compares the 359
    held-out test
    digits with them (fewer samples: the floor's Fréchet distance carries more small-sample
    bias than the runs'). The Fréchet distance is computed on the penultimate features of the
    bundled digit classifier (:func:`pmm_pymc.evaluation.digits.load_classifier`).

    Parameters
    ----------
    device : torch.device or str, optional
    """

    name = "digits-net"
    dim = 64

    def __init__(self, device: torch.device | str | None = None) -> None:
        from pmm_pymc.evaluation import digits

        self._digits = digits
        self.device = torch.device(device or "cpu")
        self._classifier = digits.load_classifier(device=self.device)

    def eps_model(self, schedule: DDPMSchedule) -> Callable[[torch.Tensor, torch.Tensor], Any]:
        """The trained network; it was trained on the linear 1000-step schedule."""
        reference = get_schedule("linear")
        if schedule.T != reference.T or not np.allclose(schedule.betas, reference.betas):
            raise ValueError(
                f"the digits network was trained on {reference!r}; got schedule {schedule!r}"
            )
        return self._digits.load_eps_model(device=self.device)

    def reference_samples(self, device: torch.device) -> torch.Tensor:
        """The training digits, shape (1438, 64)."""
        return self._digits.digits_data("train").to(device)

    def floor_samples(self, device: torch.device) -> torch.Tensor:
        """The held-out test digits, shape (359, 64)."""
        return self._digits.digits_data("test").to(device)

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Classifier features of ``x``."""
        return self._classifier.features(x.to(self.device)).to(x.device)

    n_classes = 10

    @torch.no_grad()
    def labels(self, x: torch.Tensor) -> torch.Tensor:
        """The classifier's digit for each row of ``x`` (int64, on ``x``'s device)."""
        return self._classifier(x.to(self.device)).argmax(dim=1).to(x.device)


_NETWORK_TESTBEDS: dict[str, Callable[[torch.device], Any]] = {
    DigitsNetworkTestbed.name: DigitsNetworkTestbed,
}


def list_diffusion_testbeds() -> list[str]:
    """Testbed names :func:`compare_diffusion` accepts.

    The exact-score testbeds of :func:`pmm_pymc.evaluation.testbeds.list_testbeds` and
    ``"digits-net"``
    (:class:`DigitsNetworkTestbed`, the bundled trained network).
    """
    return [*list_testbeds(), *_NETWORK_TESTBEDS]


@dataclass
class DiffusionComparison:
    """What :func:`compare_diffusion` measured.

    Attributes
    ----------
    table : pandas.DataFrame
        Long format, one row per method, target NFE and metric: ``method``, ``target_nfe``,
        ``nfe`` (mean network evaluations per sample actually spent, over seeds),
        ``metric``, ``mean`` and ``sd`` (over seeds, ``ddof=1``), ``n_seeds``.
    runs : pandas.DataFrame
        One row per method, target NFE and seed: ``nfe``, ``n_passes`` (sequential network
        calls), ``fallbacks`` (PMM's stability guard: refused corrections per sample, mean
        over the samples), ``wall_s`` and one column per metric.
    floor : pandas.DataFrame
        The metrics between two independent sets of exact samples of the same size, per
        metric: ``mean``, ``sd`` over seeds. A sampler cannot be told from exact sampling
        below it.
    testbed : str
        The testbed's name.
    settings : dict
        The arguments of the run.
    floor_runs : pandas.DataFrame
        The floor's metrics per seed.
    """

    table: pd.DataFrame
    runs: pd.DataFrame
    floor: pd.DataFrame
    testbed: str
    settings: dict[str, Any] = field(default_factory=dict)
    floor_runs: pd.DataFrame = field(default_factory=pd.DataFrame)

    def to_datatree(self) -> xr.DataTree:
        """The runs and the noise floor as a DataTree (``runs`` and ``floor`` groups).

        Returns
        -------
        xarray.DataTree
            ``runs``: every metric, ``nfe``, ``n_passes`` and ``wall_s`` with dims
            ``(sampler, target_nfe, seed)`` (``sampler`` holds the method names);
            ``floor``: every metric with dim ``seed``.
        """
        # ``method`` would shadow the ``method=`` argument of ``.sel``: the dim is ``sampler``.
        runs = (
            self.runs.rename(columns={"method": "sampler"})
            .set_index(["sampler", "target_nfe", "seed"])
            .to_xarray()
        )
        floor = self.floor_runs.set_index("seed").to_xarray() if len(self.floor_runs) else None
        attrs = {k: str(v) for k, v in self.settings.items()}
        attrs["testbed"] = self.testbed
        tree = {"runs": runs.assign_attrs(attrs)}
        if floor is not None:
            tree["floor"] = floor
        return xr.DataTree.from_dict(tree)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare_diffusion(
    testbed: str | Any,
    methods: Sequence[str] = METHODS,
    nfes: Sequence[int] | Mapping[str, Sequence[int]] = (10, 20, 50, 80, 100, 200, 1000),
    *,
    seeds: Sequence[int] = (0, 1, 2),
    n_samples: int = 2000,
    device: str | torch.device | None = None,
    schedule: DDPMSchedule | str = "linear",
    metrics: Sequence[str] | None = None,
    variants: Mapping[str, Mapping[str, Any]] | None = None,
    progressbar: bool = False,
) -> DiffusionComparison:
    """Score diffusion samplers against exact samples at several budgets of network calls.

    For every seed, method and target NFE, ``n_samples`` samples are drawn with
    :func:`pmm_pymc.diffusion.sample` using the testbed's exact noise predictor
    (``testbed.eps_model(schedule)``): ``"pmm"`` with ``nfe=target`` (its default block
    layout spends that expected budget), the other methods with ``steps=target`` (one
    network call per step; capped at ``T``). Each seed draws its own starting noise and its
    own set of ``n_samples`` exact samples, shared by all methods of that seed.

    Parameters
    ----------
    testbed : str or testbed
        A name of :func:`list_diffusion_testbeds` or an object with ``eps_model(schedule)``,
        ``sample(n, generator, device)``, ``log_prob(x)``, ``dim`` and ``name``.
    methods : list of str, default all of :data:`pmm_pymc.diffusion.METHODS`
    nfes : sequence of int or mapping of str to sequence of int
        Target network evaluations per sample, of every method (default 10, 20, 50, 80,
        100, 200, 1000), or per method (``{"pmm": [20, 80], "ddpm": [80, 1000]}``; the
        methods are then the mapping's keys and ``methods`` must list the same ones).
    seeds : sequence of int, default (0, 1, 2)
    n_samples : int, default 2000
        Samples per run (and exact samples per seed).
    device : str or torch.device, optional
        Default CPU.
    schedule : DDPMSchedule or str, default "linear"
        The 1000-step training schedule the testbed's noise predictor is exact for.
    metrics : sequence of str, optional
        Names of :data:`DIFFUSION_METRICS`; default all the testbed supports (the
        classifier-label total variation ``label_tv`` needs ``testbed.labels``).
    variants : mapping of str to mapping, optional
        More samplers, by label: keyword arguments of :func:`pmm_pymc.diffusion.sample`
        with a ``method`` (``{"pmm-eps": {"method": "pmm", "parameterization": "eps"}}``),
        run at every target NFE like their method and reported under their label. With
        ``nfes`` given per method, give the labels their NFEs there too.
    progressbar : bool, default False
        A tqdm bar over the runs.

    Returns
    -------
    DiffusionComparison

    Raises
    ------
    ValueError
        Before any sampling: an unknown testbed (the message lists the valid ones);
        ``methods`` or ``metrics`` empty, a bare string, or holding an unknown or repeated
        name; ``nfes`` or ``seeds`` empty, holding a non-integer, a value below 1 (0 for
        ``seeds``) or a repeated value; ``n_samples`` not an integer >= 2; a
        ``progressbar`` that is not a bool.
    """
    from tqdm.auto import tqdm

    if isinstance(testbed, str):
        if testbed not in list_diffusion_testbeds():
            raise ValueError(
                f"unknown testbed {testbed!r}; valid: {', '.join(list_diffusion_testbeds())}"
            )
        device = torch.device(device or "cpu")
        if testbed in _NETWORK_TESTBEDS:
            testbed_obj = _NETWORK_TESTBEDS[testbed](device)
        else:
            testbed_obj = get_testbed(testbed)
    else:
        testbed_obj = testbed
        if not callable(getattr(testbed, "eps_model", None)) or not (
            callable(getattr(testbed, "sample", None))
            or callable(getattr(testbed, "reference_samples", None))
        ):
            raise TypeError(
                "testbed must be a name or have eps_model() and sample() (or "
                f"reference_samples()) methods, got {testbed!r}"
            )
    name = str(getattr(testbed_obj, "name", testbed))
    methods = check_names("methods", methods, METHODS, what="method")
    options_of = {m: {"method": m} for m in methods}
    for label, options in (variants or {}).items():
        if label in options_of or not isinstance(options, Mapping):
            raise ValueError(f"variant {label!r} must be a new label with a mapping of options")
        if options.get("method") not in METHODS or {"generator", "x_T"} & set(options):
            raise ValueError(
                f"variant {label!r} needs a method of {', '.join(METHODS)} and no generator "
                f"or x_T, got {dict(options)!r}"
            )
        options_of[label] = dict(options)
    methods = list(options_of)
    if isinstance(nfes, Mapping):
        if set(nfes) != set(methods):
            raise ValueError(
                f"nfes is given per method for {sorted(nfes)} but methods are {sorted(methods)}"
            )
        grid = {m: check_ints(f"nfes[{m!r}]", nfes[m], 1) for m in methods}
    else:
        shared = check_ints("nfes", nfes, 1)
        grid = {m: shared for m in methods}
    seeds = check_ints("seeds", seeds, 0)
    n_samples = check_int("n_samples", n_samples, 2)
    progressbar = check_bool("progressbar", progressbar)
    metric_names = (
        _default_metrics(testbed_obj)
        if metrics is None
        else check_names("metrics", metrics, _default_metrics(testbed_obj), what="metric")
    )
    device = torch.device(device or "cpu")
    schedule = get_schedule(schedule)
    T = schedule.T
    model = testbed_obj.eps_model(schedule)
    dim = int(testbed_obj.dim)

    rows, floor_rows = [], []
    runs = [(s, m, n) for s in seeds for m in methods for n in grid[m]]
    bar = tqdm(total=len(runs), disable=not progressbar, desc=f"diffusion {name}", unit="run")
    with bar:
        for seed in seeds:
            if callable(getattr(testbed_obj, "reference_samples", None)):
                exact = testbed_obj.reference_samples(device)
                other = testbed_obj.floor_samples(device)
            else:
                exact_gen = torch.Generator(device=device).manual_seed(_EXACT_SEED_OFFSET + seed)
                exact = testbed_obj.sample(n_samples, generator=exact_gen, device=device)
                floor_gen = torch.Generator(device=device).manual_seed(_FLOOR_SEED_OFFSET + seed)
                other = testbed_obj.sample(n_samples, generator=floor_gen, device=device)
            ctx = {"seed": seed, "bandwidth": _metrics.median_bandwidth(exact)}
            floor_rows.append(
                {"seed": seed}
                | {m: DIFFUSION_METRICS[m](other, exact, testbed_obj, ctx) for m in metric_names}
            )
            for method in methods:
                for target in grid[method]:
                    bar.set_postfix_str(f"seed {seed} {method} {target}")
                    gen = torch.Generator(device=device).manual_seed(seed)
                    options = dict(options_of[method])
                    if options["method"] == "pmm":
                        options["nfe"] = float(target)
                    else:
                        options["steps"] = min(target, T)
                    _sync(device)
                    start = time.perf_counter()
                    out = sample(
                        model, (n_samples, dim), schedule, generator=gen, device=device, **options
                    )
                    _sync(device)
                    wall = time.perf_counter() - start
                    x = out.samples.float()
                    row = {
                        "method": method,
                        "target_nfe": target,
                        "seed": seed,
                        "nfe": float(out.nfe.double().mean()),
                        "n_passes": int(out.n_passes),
                        "fallbacks": float(out.fallbacks.double().mean()),
                        "wall_s": wall,
                    }
                    row |= {
                        m: DIFFUSION_METRICS[m](x, exact, testbed_obj, ctx) for m in metric_names
                    }
                    rows.append(row)
                    bar.update()
    runs_df = pd.DataFrame(rows)
    floor_runs = pd.DataFrame(floor_rows)
    long = runs_df.melt(
        id_vars=["method", "target_nfe", "seed", "nfe"],
        value_vars=metric_names,
        var_name="metric",
    )
    table = (
        long.groupby(["method", "target_nfe", "metric"], sort=False)
        .agg(
            nfe=("nfe", "mean"),
            mean=("value", "mean"),
            sd=("value", "std"),
            n_seeds=("value", "size"),
        )
        .reset_index()
    )
    floor = pd.DataFrame(
        {
            "metric": metric_names,
            "mean": [floor_runs[m].mean() for m in metric_names],
            "sd": [floor_runs[m].std() for m in metric_names],
        }
    )
    return DiffusionComparison(
        table=table[["method", "target_nfe", "nfe", "metric", "mean", "sd", "n_seeds"]],
        runs=runs_df,
        floor=floor,
        testbed=name,
        settings={
            "methods": methods,
            "nfes": grid,
            "seeds": seeds,
            "n_samples": int(n_samples),
            "device": str(device),
            "schedule": repr(schedule),
            "metrics": metric_names,
            "variants": {k: dict(v) for k, v in (variants or {}).items()},
        },
        floor_runs=floor_runs,
    )
