"""Reference posteriors from posteriordb, translated from Stan to PyMC.

The package ships seven posteriors of `posteriordb <https://github.com/stan-dev/posteriordb>`_
(BSD-3 licence, kept beside the data in ``pmm_pymc/data/posteriordb/LICENCE.md``): the Stan
program, its data and the reference draws (10 chains of 1000 draws each, from long Stan NUTS
runs). Each Stan program has a hand-written PyMC translation with the same parameterisation
and the same parameter names, so that samples of the PyMC model can be compared with the
reference draws variable by variable.

Conventions of the translations
-------------------------------
* Stan's ``normal(mu, sigma)``, ``cauchy(mu, sigma)`` and ``student_t(nu, mu, sigma)`` take
  a scale, as PyMC's ``sigma``; Stan's ``gamma(alpha, beta)`` takes a rate, PyMC's ``beta``.
* A Stan parameter declared ``<lower=0>`` with a prior centred at zero is a half
  distribution (the truncation constant does not depend on the parameters).
* A Stan parameter with no prior statement has an improper flat prior (``pm.Flat``).
* Stan's ``ordered`` vectors use PyMC's ordered transform.
* Stan transformed parameters that appear in the reference draws are ``pm.Deterministic``
  with the Stan name; Stan's 1-based ``mu[1], mu[2]`` are the 0-based entries of a vector
  ``mu`` with a named dimension, the same in the model and in the reference.

Examples
--------
.. code-block:: python

    import pymc as pm
    from pmm_pymc.evaluation.posteriors import check_reference_matches, load_model, load_reference

    model = load_model("eight_schools_noncentered")
    reference = load_reference("eight_schools_noncentered")
    check_reference_matches(model, reference)
    with model:
        idata = pm.sample(random_seed=1)
"""

from __future__ import annotations

import functools
import json
import re
import zipfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from typing import Any

import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import xarray as xr
from arviz_base import from_dict

__all__ = [
    "check_reference_matches",
    "describe",
    "list_posteriors",
    "load_data",
    "load_model",
    "load_reference",
]

_SAMPLE_DIMS = ("chain", "draw")


# --------------------------------------------------------------------------------------
# The translations. Each takes the posteriordb data dict and returns a fresh model; the
# Stan program it translates is shipped beside the data as ``model.stan``.
# --------------------------------------------------------------------------------------


def _eight_schools_noncentered(data: Mapping[str, Any]) -> pm.Model:
    y = np.asarray(data["y"], dtype=float)
    sigma = np.asarray(data["sigma"], dtype=float)
    coords = {"school": np.arange(int(data["J"]))}
    with pm.Model(coords=coords) as model:
        theta_trans = pm.Normal("theta_trans", mu=0.0, sigma=1.0, dims="school")
        mu = pm.Normal("mu", mu=0.0, sigma=5.0)
        tau = pm.HalfCauchy("tau", beta=5.0)
        theta = pm.Deterministic("theta", theta_trans * tau + mu, dims="school")
        pm.Normal("y", mu=theta, sigma=sigma, observed=y)
    return model


def _low_dim_gauss_mix(data: Mapping[str, Any]) -> pm.Model:
    y = np.asarray(data["y"], dtype=float)
    with pm.Model(coords={"component": np.arange(2)}) as model:
        mu = pm.Normal(
            "mu",
            mu=0.0,
            sigma=2.0,
            dims="component",
            transform=pm.distributions.transforms.ordered,
            initval=np.array([-1.0, 1.0]),
        )
        sigma = pm.HalfNormal("sigma", sigma=2.0, dims="component")
        theta = pm.Beta("theta", alpha=5.0, beta=5.0)
        # log_mix(theta, N(y | mu[1], sigma[1]), N(y | mu[2], sigma[2]))
        pm.NormalMixture("y", w=pt.stack([theta, 1.0 - theta]), mu=mu, sigma=sigma, observed=y)
    return model


def _ark(data: Mapping[str, Any]) -> pm.Model:
    n_lags = int(data["K"])
    y = np.asarray(data["y"], dtype=float)
    # lagged[t - K, k - 1] = y[t - k] for the (0-based) times t = K, ..., T - 1.
    lagged = np.column_stack([y[n_lags - k : len(y) - k] for k in range(1, n_lags + 1)])
    with pm.Model(coords={"lag": np.arange(n_lags)}) as model:
        alpha = pm.Normal("alpha", mu=0.0, sigma=10.0)
        beta = pm.Normal("beta", mu=0.0, sigma=10.0, dims="lag")
        sigma = pm.HalfCauchy("sigma", beta=2.5)
        pm.Normal("y", mu=alpha + pt.dot(lagged, beta), sigma=sigma, observed=y[n_lags:])
    return model


def _kidscore_momiq(data: Mapping[str, Any]) -> pm.Model:
    kid_score = np.asarray(data["kid_score"], dtype=float)
    mom_iq = np.asarray(data["mom_iq"], dtype=float)
    with pm.Model(coords={"coefficient": np.arange(2)}) as model:
        beta = pm.Flat("beta", dims="coefficient")  # no prior statement in Stan
        sigma = pm.HalfCauchy("sigma", beta=2.5)
        pm.Normal("kid_score", mu=beta[0] + beta[1] * mom_iq, sigma=sigma, observed=kid_score)
    return model


def _diamonds(data: Mapping[str, Any]) -> pm.Model:
    y = np.asarray(data["Y"], dtype=float)
    x = np.asarray(data["X"], dtype=float)
    if int(data["prior_only"]):
        raise ValueError("the diamonds data has prior_only set; the translation has a likelihood")
    means_x = x[:, 1:].mean(axis=0)
    xc = x[:, 1:] - means_x  # centred predictors without the intercept column
    with pm.Model(coords={"predictor": np.arange(xc.shape[1])}) as model:
        b = pm.Normal("b", mu=0.0, sigma=1.0, dims="predictor")
        intercept = pm.StudentT("Intercept", nu=3.0, mu=8.0, sigma=10.0)
        # student_t_lpdf(sigma | 3, 0, 10) - student_t_lccdf(0 | 3, 0, 10) on sigma > 0
        sigma = pm.HalfStudentT("sigma", nu=3.0, sigma=10.0)
        pm.Normal("Y", mu=intercept + pt.dot(xc, b), sigma=sigma, observed=y)
    return model


def _gp_pois_regr(data: Mapping[str, Any]) -> pm.Model:
    x = np.asarray(data["x"], dtype=float)
    k = np.asarray(data["k"], dtype=np.int64)
    n = int(data["N"])
    sq_dist = (x[:, None] - x[None, :]) ** 2
    with pm.Model(coords={"obs": np.arange(n)}) as model:
        rho = pm.Gamma("rho", alpha=25.0, beta=4.0)
        alpha = pm.HalfNormal("alpha", sigma=2.0)
        f_tilde = pm.Normal("f_tilde", mu=0.0, sigma=1.0, dims="obs")
        # gp_exp_quad_cov(x, alpha, rho) + 1e-10 I, then f = cholesky(cov) f_tilde
        cov = alpha**2 * pt.exp(-0.5 * sq_dist / rho**2) + 1e-10 * np.eye(n)
        chol = pt.linalg.cholesky(cov)
        f = pm.Deterministic("f", pt.dot(chol, f_tilde), dims="obs")
        pm.Poisson("k", mu=pt.exp(f), observed=k)
    return model


def _blr(data: Mapping[str, Any]) -> pm.Model:
    x = np.asarray(data["X"], dtype=float)
    y = np.asarray(data["y"], dtype=float)
    with pm.Model(coords={"predictor": np.arange(x.shape[1])}) as model:
        beta = pm.Normal("beta", mu=0.0, sigma=10.0, dims="predictor")
        sigma = pm.HalfNormal("sigma", sigma=10.0)
        pm.Normal("y", mu=pt.dot(x, beta), sigma=sigma, observed=y)
    return model


@dataclass(frozen=True)
class _Posterior:
    """One bundled posterior: its names, its translation and the dims of its variables."""

    short_name: str
    full_name: str
    build: Callable[[Mapping[str, Any]], pm.Model]
    dims: Mapping[str, tuple[str, ...]]


_POSTERIORS: tuple[_Posterior, ...] = (
    _Posterior(
        "eight_schools_noncentered",
        "eight_schools-eight_schools_noncentered",
        _eight_schools_noncentered,
        {"theta_trans": ("school",), "theta": ("school",)},
    ),
    _Posterior(
        "low_dim_gauss_mix",
        "low_dim_gauss_mix-low_dim_gauss_mix",
        _low_dim_gauss_mix,
        {"mu": ("component",), "sigma": ("component",)},
    ),
    _Posterior("arK", "arK-arK", _ark, {"beta": ("lag",)}),
    _Posterior(
        "kidscore_momiq", "kidiq-kidscore_momiq", _kidscore_momiq, {"beta": ("coefficient",)}
    ),
    _Posterior("diamonds", "diamonds-diamonds", _diamonds, {"b": ("predictor",)}),
    _Posterior(
        "gp_pois_regr",
        "gp_pois_regr-gp_pois_regr",
        _gp_pois_regr,
        {"f_tilde": ("obs",), "f": ("obs",)},
    ),
    _Posterior("blr", "sblrc-blr", _blr, {"beta": ("predictor",)}),
)
_BY_NAME: dict[str, _Posterior] = {
    **{p.short_name: p for p in _POSTERIORS},
    **{p.full_name: p for p in _POSTERIORS},
}


def _lookup(name: str) -> _Posterior:
    if not isinstance(name, str):
        raise TypeError(f"posterior name must be a str, got {type(name).__name__}: {name!r}")
    try:
        return _BY_NAME[name]
    except KeyError:
        valid = ", ".join(p.short_name for p in _POSTERIORS)
        raise ValueError(
            f"unknown posterior {name!r}; valid names are: {valid} "
            "(or the full posteriordb names, e.g. 'eight_schools-eight_schools_noncentered')"
        ) from None


def _resource(posterior: _Posterior, filename: str) -> Traversable:
    return resources.files("pmm_pymc") / "data" / "posteriordb" / posterior.full_name / filename


def _read_zipped_json(posterior: _Posterior, filename: str) -> Any:
    with _resource(posterior, filename).open("rb") as fh, zipfile.ZipFile(fh) as archive:
        (member,) = archive.namelist()
        return json.loads(archive.read(member))


# --------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------


def list_posteriors() -> tuple[str, ...]:
    """Short names of the bundled posteriors.

    Returns
    -------
    tuple of str
        ``("eight_schools_noncentered", "low_dim_gauss_mix", "arK", "kidscore_momiq",
        "diamonds", "gp_pois_regr", "blr")``. Every loader also accepts the full
        posteriordb name (``"<data>-<model>"``, e.g. ``"sblrc-blr"``).
    """
    return tuple(p.short_name for p in _POSTERIORS)


def load_data(name: str) -> dict[str, Any]:
    """The posteriordb data of a posterior, as the dict of its JSON file.

    Parameters
    ----------
    name : str
        Short or full posteriordb name (see :func:`list_posteriors`).

    Returns
    -------
    dict
        Keys are the names in the Stan ``data`` block; values are numbers or (nested) lists.

    Raises
    ------
    ValueError
        If ``name`` is not a bundled posterior.
    """
    return _read_zipped_json(_lookup(name), "data.json.zip")


def load_model(name: str) -> pm.Model:
    """A new PyMC model translating the posterior's Stan program.

    Parameters
    ----------
    name : str
        Short or full posteriordb name (see :func:`list_posteriors`).

    Returns
    -------
    pymc.Model
        Free variables with the names, parameterisation and constraints of the Stan
        ``parameters`` block; the Stan transformed parameters found in the reference draws
        as :func:`pymc.Deterministic`. Vector variables have named dims shared with
        :func:`load_reference`.

    Raises
    ------
    ValueError
        If ``name`` is not a bundled posterior.
    """
    posterior = _lookup(name)
    return posterior.build(load_data(posterior.full_name))


@functools.cache
def _reference_arrays(full_name: str) -> dict[str, np.ndarray]:
    """Parse the reference draws into ``{name: array (chain, draw, *shape)}`` (read-only)."""
    chains = _read_zipped_json(_BY_NAME[full_name], "reference_draws.json.zip")
    pattern = re.compile(r"^(?P<base>[^\[\]]+)(?:\[(?P<index>\d+(?:,\d+)*)\])?$")
    entries: dict[str, list[tuple[tuple[int, ...], str]]] = {}
    for key in chains[0]:
        match = pattern.match(key)
        if match is None:
            raise ValueError(f"cannot parse the reference variable name {key!r} of {full_name}")
        index = match["index"]
        position = tuple(int(i) - 1 for i in index.split(",")) if index else ()
        entries.setdefault(match["base"], []).append((position, key))
    n_chains, n_draws = len(chains), len(chains[0][next(iter(chains[0]))])
    arrays = {}
    for base, items in entries.items():
        shape = tuple(max(p[axis] for p, _ in items) + 1 for axis in range(len(items[0][0])))
        values = np.full((n_chains, n_draws, *shape), np.nan)
        for position, key in items:
            values[(slice(None), slice(None), *position)] = [chain[key] for chain in chains]
        if np.isnan(values).any():
            raise ValueError(f"reference draws of {full_name} have gaps in {base!r}")
        values.flags.writeable = False
        arrays[base] = values
    return arrays


def load_reference(name: str) -> xr.DataTree:
    """The posteriordb reference draws of a posterior as an ArviZ DataTree.

    Parameters
    ----------
    name : str
        Short or full posteriordb name (see :func:`list_posteriors`).

    Returns
    -------
    xarray.DataTree
        A ``posterior`` group with dims ``chain`` (10) and ``draw`` (1000) and each
        variable's own dims, named and shaped as in :func:`load_model` (Stan's ``mu[1]``,
        ``mu[2]`` become ``mu`` of shape ``(2,)``, 0-based).

    Raises
    ------
    ValueError
        If ``name`` is not a bundled posterior.
    """
    posterior = _lookup(name)
    arrays = {k: np.array(v) for k, v in _reference_arrays(posterior.full_name).items()}
    dims = {var: list(d) for var, d in posterior.dims.items() if var in arrays}
    coords = {}
    for var, var_dims in dims.items():
        for axis, dim in enumerate(var_dims):
            coords[dim] = np.arange(arrays[var].shape[2 + axis])
    return from_dict(
        {"posterior": arrays},
        dims=dims,
        coords=coords,
        attrs={
            "posterior": {
                "source": "posteriordb",
                "posterior_name": posterior.full_name,
                "inference_library": "rstan",
            }
        },
    )


def describe(name: str) -> dict[str, Any]:
    """Metadata of a posterior: posteriordb's ``posterior.json`` plus a few fields.

    Parameters
    ----------
    name : str
        Short or full posteriordb name (see :func:`list_posteriors`).

    Returns
    -------
    dict
        The ``posterior.json`` fields (``name``, ``model_name``, ``data_name``,
        ``keywords``, ``dimensions`` of the reference variables, ...) and
        ``short_name``; ``dimension``, the number of unconstrained parameters the samplers
        move (the size of the Stan ``parameters`` block); ``reference_inference``, how
        posteriordb computed the reference draws; ``stan_code``, the Stan program.

    Raises
    ------
    ValueError
        If ``name`` is not a bundled posterior.
    """
    posterior = _lookup(name)
    info = json.loads(_resource(posterior, "posterior.json").read_text(encoding="utf-8"))
    reference_info = json.loads(
        _resource(posterior, "reference_draws.info.json").read_text(encoding="utf-8")
    )
    model = load_model(posterior.full_name)
    point = model.initial_point()
    info["short_name"] = posterior.short_name
    info["dimension"] = int(sum(np.size(point[v.name]) for v in model.value_vars))
    info["reference_inference"] = reference_info["inference"]
    info["stan_code"] = _resource(posterior, "model.stan").read_text(encoding="utf-8")
    return info


def _model_variable_shapes(model: pm.Model) -> dict[str, tuple[int, ...]]:
    """Shapes of the free random variables and deterministics of ``model``."""
    variables = [*model.free_RVs, *model.deterministics]
    if not variables:
        return {}
    shape_fn = pytensor.function(
        inputs=[],
        outputs=[pt.as_tensor(v.shape) for v in variables],
        givens=[(obs, model.rvs_to_values[obs]) for obs in model.observed_RVs],
        mode=pytensor.compile.mode.FAST_COMPILE,
        on_unused_input="ignore",
    )
    return {
        v.name: tuple(int(s) for s in shape) for v, shape in zip(variables, shape_fn(), strict=True)
    }


def check_reference_matches(model: pm.Model, reference: xr.DataTree | xr.Dataset) -> None:
    """Check that every reference variable is a model variable of the same shape, with finite draws.

    Call it before sampling: a comparison against reference draws is meaningless when a
    name or a shape differs.

    Parameters
    ----------
    model : pymc.Model
        The model to be sampled.
    reference : xarray.DataTree or xarray.Dataset
        Reference draws: a DataTree with a ``posterior`` group (as returned by
        :func:`load_reference`) or the posterior Dataset itself, with dims ``chain`` and
        ``draw`` first.

    Raises
    ------
    TypeError
        If ``model`` is not a PyMC model or ``reference`` is neither a DataTree nor a Dataset.
    ValueError
        If the reference has no ``posterior`` group, lacks the ``chain``/``draw`` dims or
        has no variables, or if a reference variable is missing from the model (free
        variable or deterministic), has another shape, holds a NaN or infinite value or
        has a component with no spread (one value in every draw, or a single draw); the
        message names the variable.
    """
    if not isinstance(model, pm.Model):
        raise TypeError(f"model must be a pymc.Model, got {type(model).__name__}")
    if isinstance(reference, xr.DataTree):
        if "posterior" not in reference.children:
            raise ValueError(
                "reference has no 'posterior' group; groups: "
                f"{sorted(reference.children) or 'none'}"
            )
        posterior = reference["posterior"].to_dataset()
    elif isinstance(reference, xr.Dataset):
        posterior = reference
    else:
        raise TypeError(
            "reference must be an xarray.DataTree with a 'posterior' group or an "
            f"xarray.Dataset, got {type(reference).__name__}"
        )
    if not posterior.data_vars:
        raise ValueError("reference posterior has no variables")
    shapes = _model_variable_shapes(model)
    for var_name, values in posterior.data_vars.items():
        if tuple(values.dims[:2]) != _SAMPLE_DIMS:
            raise ValueError(
                f"reference variable {var_name!r} has dims {values.dims}; "
                f"expected {_SAMPLE_DIMS} first"
            )
        if var_name not in shapes:
            raise ValueError(
                f"reference variable {var_name!r} is not a variable of the model "
                f"(model variables: {', '.join(sorted(shapes)) or 'none'})"
            )
        ref_shape = tuple(values.shape[2:])
        if ref_shape != shapes[var_name]:
            raise ValueError(
                f"reference variable {var_name!r} has shape {ref_shape} per draw but the "
                f"model variable has shape {shapes[var_name]}"
            )
        _check_reference_values(str(var_name), values)


def _check_reference_values(var_name: str, values: xr.DataArray) -> None:
    """Every value finite and every component spread out: errors are in units of its sd."""
    draws = np.asarray(values.values, dtype=float)
    bad = ~np.isfinite(draws)
    if bad.any():
        chain, draw, *index = (int(i) for i in np.argwhere(bad)[0])
        where = f"{var_name}{list(index) if index else ''} at chain {chain}, draw {draw}"
        raise ValueError(
            f"reference variable {var_name!r} holds {int(bad.sum())} non-finite value(s) "
            f"(NaN or inf), the first of them {where}; drop or fix those draws"
        )
    flat = draws.reshape(-1, *draws.shape[2:])
    if flat.shape[0] < 2:
        raise ValueError(
            f"reference variable {var_name!r} has {flat.shape[0]} draw(s); errors are measured "
            "in units of the reference sd, which needs at least 2"
        )
    constant = np.argwhere(flat.std(axis=0) == 0)
    if len(constant):
        index = [int(i) for i in constant[0]]
        raise ValueError(
            f"reference variable {var_name!r} has no spread: {var_name}{index if index else ''} "
            f"takes one value in all {flat.shape[0]} draws, and errors are measured in units "
            "of the reference sd"
        )
