"""Tests of the bundled posteriordb posteriors and their PyMC translations.

Two independent checks of each translation:

* its log density, at reference draws, equals the Stan program's density written out
  again in numpy/scipy, up to an additive constant (differences between points agree);
* NUTS on it reproduces the reference posterior means and standard deviations within a
  few combined Monte-Carlo standard errors.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Mapping
from pathlib import Path

import arviz_stats as azs
import numpy as np
import pymc as pm
import pytensor
import pytensor.tensor as pt
import pytest
import xarray as xr
from pymc.step_methods.hmc.quadpotential import QuadPotentialFull
from scipy import stats

from pmm_pymc.evaluation.posteriors import (
    check_reference_matches,
    describe,
    list_posteriors,
    load_data,
    load_model,
    load_reference,
)

DATA_DIR = Path(__file__).resolve().parents[1] / "pmm_pymc" / "data" / "posteriordb"
FULL_NAMES = {
    "eight_schools_noncentered": "eight_schools-eight_schools_noncentered",
    "low_dim_gauss_mix": "low_dim_gauss_mix-low_dim_gauss_mix",
    "arK": "arK-arK",
    "kidscore_momiq": "kidiq-kidscore_momiq",
    "diamonds": "diamonds-diamonds",
    "gp_pois_regr": "gp_pois_regr-gp_pois_regr",
    "blr": "sblrc-blr",
}


# --------------------------------------------------------------------------------------
# Names, files, data and reference layout
# --------------------------------------------------------------------------------------


def test_list_posteriors_names_every_bundled_directory():
    assert set(list_posteriors()) == set(FULL_NAMES)
    bundled = {p.name for p in DATA_DIR.iterdir() if p.is_dir()}
    assert bundled == set(FULL_NAMES.values())
    assert (DATA_DIR / "LICENCE.md").is_file()
    assert (DATA_DIR / "README.md").is_file()


@pytest.mark.parametrize("loader", [load_model, load_reference, load_data, describe])
def test_unknown_name_is_a_value_error_listing_the_valid_names(loader):
    with pytest.raises(ValueError, match="unknown posterior 'eight_schools'") as info:
        loader("eight_schools")
    for name in list_posteriors():
        assert name in str(info.value)


@pytest.mark.parametrize("loader", [load_model, load_reference, load_data, describe])
def test_non_string_name_is_a_type_error(loader):
    with pytest.raises(TypeError, match="must be a str, got int"):
        loader(3)


def test_full_posteriordb_names_are_accepted():
    short = load_reference("blr")
    full = load_reference("sblrc-blr")
    xr.testing.assert_equal(short.posterior.to_dataset(), full.posterior.to_dataset())
    assert load_data("sblrc-blr") == load_data("blr")
    assert [v.name for v in load_model("sblrc-blr").free_RVs] == ["beta", "sigma"]


def _raw_reference(full_name: str) -> list[dict[str, list[float]]]:
    with zipfile.ZipFile(DATA_DIR / full_name / "reference_draws.json.zip") as archive:
        (member,) = archive.namelist()
        return json.loads(archive.read(member))


@pytest.mark.parametrize("name", list(FULL_NAMES))
def test_reference_layout_matches_the_raw_draws(name):
    """Every Stan column ``v[i]`` lands at ``v[..., i - 1]``, chain and draw order kept."""
    raw = _raw_reference(FULL_NAMES[name])
    posterior = load_reference(name).posterior
    assert dict(posterior.sizes)["chain"] == 10
    assert dict(posterior.sizes)["draw"] == 1000
    info = json.loads((DATA_DIR / FULL_NAMES[name] / "posterior.json").read_text())
    assert {v: int(np.prod(posterior[v].shape[2:])) for v in posterior.data_vars} == info[
        "dimensions"
    ]
    for key in raw[0]:
        base, _, index = key.partition("[")
        position = tuple(int(i) - 1 for i in index.rstrip("]").split(",")) if index else ()
        expected = np.array([chain[key] for chain in raw])
        np.testing.assert_array_equal(posterior[base].values[(..., *position)], expected)


def test_reference_is_a_fresh_copy_each_call():
    first = load_reference("arK")
    first.posterior["alpha"].values[0, 0] = 1e9
    assert load_reference("arK").posterior["alpha"].values[0, 0] != 1e9


def test_ordered_means_are_ordered_in_the_reference():
    mu = load_reference("low_dim_gauss_mix").posterior["mu"].values
    assert np.all(mu[..., 0] < mu[..., 1])


@pytest.mark.parametrize("name", list(FULL_NAMES))
def test_every_translation_matches_its_reference(name):
    model = load_model(name)
    reference = load_reference(name)
    check_reference_matches(model, reference)
    # Dims are named alike in model and reference, so sampled DataTrees align with it.
    for var in reference.posterior.data_vars:
        assert tuple(model.named_vars_to_dims.get(var, ())) == reference.posterior[var].dims[2:]


def test_describe_reports_the_dimension_of_the_parameter_space():
    for name in list_posteriors():
        info = describe(name)
        assert info["short_name"] == name
        assert info["name"] == FULL_NAMES[name]
        # Each Stan transformed parameter in the reference has the size of the parameter
        # it is computed from (theta ~ theta_trans, f ~ f_tilde), so both counts agree.
        assert info["dimension"] == sum(info["dimensions"].values())
        assert "parameters {" in info["stan_code"]
        assert info["reference_inference"]["method"] == "stan_sampling"


# --------------------------------------------------------------------------------------
# check_reference_matches
# --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gauss_mix():
    return load_model("low_dim_gauss_mix"), load_reference("low_dim_gauss_mix")


def test_check_reference_accepts_the_posterior_dataset(gauss_mix):
    model, reference = gauss_mix
    check_reference_matches(model, reference.posterior.to_dataset())


def test_check_reference_names_a_missing_variable(gauss_mix):
    model, reference = gauss_mix
    bad = reference.posterior.to_dataset().rename_vars({"theta": "weight"})
    with pytest.raises(ValueError, match="'weight' is not a variable of the model"):
        check_reference_matches(model, bad)


def test_check_reference_names_a_variable_of_another_shape(gauss_mix):
    model, reference = gauss_mix
    bad = reference.posterior.to_dataset().isel(component=[0])
    with pytest.raises(ValueError, match=r"'mu' has shape \(1,\).*shape \(2,\)"):
        check_reference_matches(model, bad)
    bad = reference.posterior.to_dataset()
    bad["theta"] = bad["theta"].expand_dims(extra=3, axis=-1)
    with pytest.raises(ValueError, match=r"'theta' has shape \(3,\).*shape \(\)"):
        check_reference_matches(model, bad)


def test_check_reference_checks_a_deterministic_shape():
    model = load_model("eight_schools_noncentered")
    reference = load_reference("eight_schools_noncentered").posterior.to_dataset()
    check_reference_matches(model, reference)
    with pytest.raises(ValueError, match=r"'theta' has shape \(4,\)"):
        check_reference_matches(model, reference.isel(school=slice(0, 4)))


def test_check_reference_needs_chain_and_draw_dims(gauss_mix):
    model, reference = gauss_mix
    bad = reference.posterior.to_dataset().transpose("draw", "chain", ...)
    with pytest.raises(ValueError, match="'mu' has dims .*expected \\('chain', 'draw'\\)"):
        check_reference_matches(model, bad)


def test_check_reference_needs_a_posterior_group(gauss_mix):
    model, reference = gauss_mix
    tree = xr.DataTree.from_dict({"prior": reference.posterior.to_dataset()})
    with pytest.raises(ValueError, match="no 'posterior' group"):
        check_reference_matches(model, tree)
    with pytest.raises(ValueError, match="no variables"):
        check_reference_matches(model, xr.Dataset())


def test_check_reference_rejects_wrong_types(gauss_mix):
    model, reference = gauss_mix
    with pytest.raises(TypeError, match="reference must be"):
        check_reference_matches(model, {"mu": np.zeros((1, 1, 2))})
    with pytest.raises(TypeError, match="model must be a pymc.Model"):
        check_reference_matches("low_dim_gauss_mix", reference)


# --------------------------------------------------------------------------------------
# Log density against the Stan program, re-implemented in numpy/scipy
# --------------------------------------------------------------------------------------
# Each function reads its model block line by line; the argument is a dict of the Stan
# parameters (constrained scale) and the data dict. Constants are kept or dropped freely:
# only differences between points are compared.


def _stan_eight_schools_noncentered(p, data):
    theta = p["theta_trans"] * p["tau"] + p["mu"]
    return (
        stats.norm.logpdf(p["theta_trans"], 0, 1).sum()
        + stats.norm.logpdf(data["y"], theta, data["sigma"]).sum()
        + stats.norm.logpdf(p["mu"], 0, 5)
        + stats.cauchy.logpdf(p["tau"], 0, 5)
    )


def _stan_low_dim_gauss_mix(p, data, *, sd=lambda s: s):
    mu, sigma, theta = p["mu"], p["sigma"], p["theta"]
    y = np.asarray(data["y"])
    log_mix = np.logaddexp(
        np.log(theta) + stats.norm.logpdf(y, mu[0], sd(sigma[0])),
        np.log1p(-theta) + stats.norm.logpdf(y, mu[1], sd(sigma[1])),
    )
    return (
        stats.norm.logpdf(sigma, 0, 2).sum()
        + stats.norm.logpdf(mu, 0, 2).sum()
        + stats.beta.logpdf(theta, 5, 5)
        + log_mix.sum()
    )


def _stan_ark(p, data):
    n_lags, y = data["K"], data["y"]
    target = (
        stats.norm.logpdf(p["alpha"], 0, 10)
        + stats.norm.logpdf(p["beta"], 0, 10).sum()
        + stats.cauchy.logpdf(p["sigma"], 0, 2.5)
    )
    for t in range(n_lags + 1, data["T"] + 1):  # Stan's 1-based loop
        mu = p["alpha"]
        for k in range(1, n_lags + 1):
            mu = mu + p["beta"][k - 1] * y[t - k - 1]
        target += stats.norm.logpdf(y[t - 1], mu, p["sigma"])
    return target


def _stan_kidscore_momiq(p, data):
    mu = p["beta"][0] + p["beta"][1] * np.asarray(data["mom_iq"])
    return (
        stats.cauchy.logpdf(p["sigma"], 0, 2.5)
        + stats.norm.logpdf(data["kid_score"], mu, p["sigma"]).sum()
    )


def _stan_diamonds(p, data):
    x = np.asarray(data["X"])
    means_x = np.array([np.mean(x[:, i]) for i in range(1, data["K"])])
    xc = x[:, 1:] - means_x
    return (
        stats.norm.logpdf(p["b"], 0, 1).sum()
        + stats.t.logpdf(p["Intercept"], 3, 8, 10)
        + stats.t.logpdf(p["sigma"], 3, 0, 10)
        - stats.t.logsf(0, 3, 0, 10)
        + stats.norm.logpdf(data["Y"], p["Intercept"] + xc @ p["b"], p["sigma"]).sum()
    )


def _gp_f(p, data):
    x = np.asarray(data["x"])
    cov = p["alpha"] ** 2 * np.exp(-((x[:, None] - x[None, :]) ** 2) / (2 * p["rho"] ** 2))
    return np.linalg.cholesky(cov + 1e-10 * np.eye(data["N"])) @ p["f_tilde"]


def _stan_gp_pois_regr(p, data):
    return (
        stats.gamma.logpdf(p["rho"], 25, scale=1 / 4)
        + stats.norm.logpdf(p["alpha"], 0, 2)
        + stats.norm.logpdf(p["f_tilde"], 0, 1).sum()
        + stats.poisson.logpmf(data["k"], np.exp(_gp_f(p, data))).sum()
    )


def _stan_blr(p, data):
    return (
        stats.norm.logpdf(p["beta"], 0, 10).sum()
        + stats.norm.logpdf(p["sigma"], 0, 10)
        + stats.norm.logpdf(data["y"], np.asarray(data["X"]) @ p["beta"], p["sigma"]).sum()
    )


STAN_LOGP: dict[str, Callable[[Mapping[str, np.ndarray], dict], float]] = {
    "eight_schools_noncentered": _stan_eight_schools_noncentered,
    "low_dim_gauss_mix": _stan_low_dim_gauss_mix,
    "arK": _stan_ark,
    "kidscore_momiq": _stan_kidscore_momiq,
    "diamonds": _stan_diamonds,
    "gp_pois_regr": _stan_gp_pois_regr,
    "blr": _stan_blr,
}

#: (chain, draw) of the reference draws used as evaluation points.
LOGP_POINTS = [(0, 0), (3, 250), (6, 500), (9, 999), (5, 123)]


def _stan_parameters(name: str, reference: xr.DataTree, rng: np.random.Generator):
    """Values of the Stan ``parameters`` block at the reference draws of ``LOGP_POINTS``."""
    posterior = reference.posterior
    points = []
    for chain, draw in LOGP_POINTS:
        p = {v: posterior[v].values[chain, draw] for v in posterior.data_vars}
        if name == "eight_schools_noncentered":
            p["theta_trans"] = (p.pop("theta") - p["mu"]) / p["tau"]
        elif name == "gp_pois_regr":
            # f = L f_tilde cannot be inverted accurately (L is nearly singular), so the
            # latent f_tilde is drawn from its prior at the reference (rho, alpha).
            del p["f"]
            p["f_tilde"] = rng.standard_normal(posterior.sizes["obs"])
        points.append(p)
    return points


def _value_points(model: pm.Model, points):
    """Map Stan parameter values (constrained) to points of the model's value variables."""
    constrained = [pt.tensor(name=rv.name, shape=rv.type.shape) for rv in model.free_RVs]
    values = []
    for rv, x in zip(model.free_RVs, constrained, strict=True):
        transform = model.rvs_to_transforms[rv]
        values.append(x if transform is None else transform.forward(x, *rv.owner.inputs))
    to_values = pytensor.function(constrained, values)
    names = [model.rvs_to_values[rv].name for rv in model.free_RVs]
    return [
        dict(zip(names, to_values(*(p[rv.name] for rv in model.free_RVs)), strict=True))
        for p in points
    ]


def _assert_logp_agrees_up_to_a_constant(model, stan_logp, points, data):
    """PyMC's density of the constrained parameters minus Stan's is the same at all points.

    PyMC's log density without the Jacobian of its transforms is the density of the
    constrained parameters, as Stan's model block. Tolerance: 1e-8 relative to the size of
    the log density (float64 round-off in sums of up to 5000 terms), far below any change
    of parameterisation.
    """
    logp_fn = model.compile_logp(jacobian=False)
    pymc_values = np.array([logp_fn(point) for point in _value_points(model, points)])
    stan_values = np.array([stan_logp(p, data) for p in points])
    offset = pymc_values - stan_values
    scale = np.max(np.abs(stan_values))
    np.testing.assert_allclose(offset - offset[0], 0.0, atol=1e-8 * scale + 1e-8)


@pytest.mark.parametrize("name", list(FULL_NAMES))
def test_logp_matches_stan_density_up_to_a_constant(name):
    model = load_model(name)
    data = load_data(name)
    points = _stan_parameters(name, load_reference(name), np.random.default_rng(7))
    _assert_logp_agrees_up_to_a_constant(model, STAN_LOGP[name], points, data)


def test_logp_check_detects_a_wrong_parameterisation():
    """The check is sharp: variance in place of sd in the mixture components is caught."""
    name = "low_dim_gauss_mix"
    points = _stan_parameters(name, load_reference(name), np.random.default_rng(7))

    def wrong(p, data):
        return _stan_low_dim_gauss_mix(p, data, sd=np.square)

    with pytest.raises(AssertionError):
        _assert_logp_agrees_up_to_a_constant(load_model(name), wrong, points, load_data(name))


@pytest.mark.parametrize("name", ["eight_schools_noncentered", "gp_pois_regr"])
def test_deterministics_are_the_stan_transformed_parameters(name):
    """``theta`` and ``f`` are computed as in the Stan ``transformed parameters`` block."""
    model = load_model(name)
    data = load_data(name)
    points = _stan_parameters(name, load_reference(name), np.random.default_rng(7))
    (det,) = model.deterministics
    det_fn = model.compile_fn(model.replace_rvs_by_values([det])[0], inputs=model.value_vars)
    for p, point in zip(points, _value_points(model, points), strict=True):
        value = det_fn(point)
        if name == "eight_schools_noncentered":
            expected = p["theta_trans"] * p["tau"] + p["mu"]
        else:
            expected = _gp_f(p, data)
        np.testing.assert_allclose(value, expected, rtol=1e-9, atol=1e-9)


# --------------------------------------------------------------------------------------
# NUTS on the translation against the reference draws
# --------------------------------------------------------------------------------------

#: NUTS settings per posterior: short runs where the posterior is easy; a dense mass
#: matrix for the correlated kidscore regression. ``diamonds`` (26 nearly collinear
#: coefficients) gets the covariance of the reference draws as its mass matrix (see
#: ``_reference_covariance``): adapted, it needs hundreds of leapfrog steps per draw and
#: a minute of CI time; preset, about 7.
NUTS_SETTINGS = {
    "eight_schools_noncentered": {"draws": 1000, "tune": 1000, "target_accept": 0.9},
    "low_dim_gauss_mix": {"draws": 500, "tune": 500},
    "arK": {"draws": 500, "tune": 500},
    "kidscore_momiq": {"draws": 500, "tune": 500, "init": "jitter+adapt_full"},
    "blr": {"draws": 500, "tune": 500},
    "gp_pois_regr": {"draws": 500, "tune": 300, "target_accept": 0.95},
    "diamonds": {"draws": 300, "tune": 200, "reference_mass_matrix": True},
}
SLOW = {"gp_pois_regr"}

#: Largest |z| accepted, z = (NUTS estimate - reference estimate) / sqrt(MCSE_NUTS^2 +
#: MCSE_ref^2), for every element of every reference variable, for the mean and the sd.
#: Both estimates are unbiased up to O(1/n) for a correct translation, so z is about
#: N(0, 1); with about 130 comparisons in all, 4 keeps the chance of a false alarm near
#: 1% while a wrong parameterisation moves estimates by many MCSEs.
Z_TOLERANCE = 4.0


def _reference_covariance(model: pm.Model, reference: xr.DataTree) -> np.ndarray:
    """Covariance of the reference draws in the model's unconstrained space.

    Ordered as NUTS ravels ``model.value_vars``. Used as a fixed NUTS mass matrix: the
    mass matrix changes how fast NUTS mixes, never the distribution it targets, so a
    wrong translation still fails the comparison.
    """
    posterior = reference.posterior
    points = [
        {var: posterior[var].values[chain, draw] for var in posterior.data_vars}
        for chain in range(posterior.sizes["chain"])
        for draw in range(posterior.sizes["draw"])
    ]
    columns = [
        np.concatenate([np.ravel(point[v.name]) for v in model.value_vars])
        for point in _value_points(model, points)
    ]
    return np.cov(np.array(columns), rowvar=False)


@pytest.mark.filterwarnings("ignore:QuadPotentialFullAdapt is an experimental feature")
@pytest.mark.parametrize(
    "name",
    [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in NUTS_SETTINGS],
)
def test_nuts_on_translation_agrees_with_reference_draws(name):
    settings = dict(NUTS_SETTINGS[name])
    reference = load_reference(name)
    model = load_model(name)
    if settings.pop("reference_mass_matrix", False):
        potential = QuadPotentialFull(_reference_covariance(model, reference))
        settings["step"] = pm.NUTS(model=model, potential=potential)
    with model:
        idata = pm.sample(
            settings.pop("draws"),
            chains=2,
            cores=1,
            random_seed=20240517,
            progressbar=False,
            compute_convergence_checks=False,
            **settings,
        )
    failures = []
    for method, estimate in (("mean", "mean"), ("sd", "std")):
        # On a DataTree, arviz-stats returns the posterior node of MCSEs.
        mcse_nuts = azs.mcse(idata, method=method)
        mcse_ref = azs.mcse(reference, method=method)
        for var in reference.posterior.data_vars:
            nuts_est = getattr(idata.posterior[var], estimate)(("chain", "draw"))
            ref_est = getattr(reference.posterior[var], estimate)(("chain", "draw"))
            combined = np.sqrt(mcse_nuts[var] ** 2 + mcse_ref[var] ** 2)
            z = np.abs((nuts_est - ref_est) / combined).values
            if np.any(z > Z_TOLERANCE):
                failures.append(
                    f"{method} of {var}: NUTS {np.round(nuts_est.values, 4)}, reference "
                    f"{np.round(ref_est.values, 4)}, |z| {np.round(z, 1)}"
                )
    assert not failures, "; ".join(failures)
