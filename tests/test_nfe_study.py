"""`sfbd nfe-study` (sfbd.studies.nfe): the steps / ODE-vs-SDE study, checked where the
answer is known.

With the exact denoiser of Gaussian data N(mu, s^2), the probability-flow ODE started at the
observations y = x + tau * eps transports them exactly onto the data distribution, and the
reverse SDE draws posterior samples whose marginal is the data distribution too: so the
discretisation error of the ODE must fall with the number of levels, and both modes must end
at the floor of the distance (true samples of the same count).
"""

import json

import numpy as np
import pytest
import torch
from conftest import GaussianDenoiser

from sfbd.cli import main
from sfbd.cli import nfe_study as cli_nfe_study
from sfbd.diffusion.samplers import backward_denoise, network_evaluations
from sfbd.metrics.distances import SlicedW2, sliced_wasserstein
from sfbd.studies import nfe

TAU = 0.59
STEPS = (1, 2, 4, 8, 16)


def _gaussian_case(n: int, seed: int = 0):
    """(denoiser, y, ids, reference, floor set, exact ODE transport of y) for N(mu, s^2)."""
    mu = torch.tensor([0.3, -0.5], dtype=torch.float64)
    s = torch.tensor([0.5, 0.2], dtype=torch.float64)
    g = torch.Generator().manual_seed(seed)
    x = mu + s * torch.randn(n, 2, generator=g, dtype=torch.float64)
    y = x + TAU * torch.randn(n, 2, generator=g, dtype=torch.float64)
    reference = (mu + s * torch.randn(4 * n, 2, generator=g, dtype=torch.float64)).numpy()
    floor_set = (mu + s * torch.randn(n, 2, generator=g, dtype=torch.float64)).numpy()
    exact = mu + (y - mu) * s / (s**2 + TAU**2).sqrt()
    return GaussianDenoiser(mu, s), y, np.arange(n), reference, floor_set, exact


def test_exact_denoiser_study():
    denoiser, y, ids, reference, floor_set, exact = _gaussian_case(4000)
    config = nfe.Config(tau=TAU, steps=STEPS, converged_steps=64, batch_size=1000)
    distance = SlicedW2(reference)
    rows = nfe.run_study(denoiser, y, ids, distance, config, log=lambda _: None)
    floor = distance(floor_set)
    print("\n" + nfe.format_table(rows, floor, "swd"))

    # One row per (mode, steps), plus the noisy row and one converged row per mode.
    measured = [(r.mode, r.steps) for r in rows if r.mode != "noisy" and not r.converged]
    assert measured == [(m, k) for m in ("ode", "sde") for k in STEPS]
    assert [(r.mode, r.steps) for r in rows if r.converged] == [("ode", 64), ("sde", 64)]
    assert rows[0].mode == "noisy" and rows[0].evaluations == 0
    # The counted cost is the sampler's: 2n - 1 evaluations per image, ODE and SDE alike.
    for r in rows[1:]:
        assert r.evaluations == r.expected_evaluations == network_evaluations(r.steps)

    ode = {r.steps: r for r in rows if r.mode == "ode" and not r.converged}
    sde = {r.steps: r for r in rows if r.mode == "sde" and not r.converged}
    # The ODE's path error falls with every doubling of the levels, second order at the end.
    errors = [ode[k].rms_to_converged for k in STEPS]
    assert all(b < a for a, b in zip(errors[:-1], errors[1:], strict=True)), errors
    assert errors[-1] < errors[-2] / 3
    assert all(r.rms_to_converged is None for r in sde.values())
    # The converged ODE solution is the exact transport.
    x64 = backward_denoise(denoiser, y, TAU, 64)
    assert nfe.rms(x64, exact) < 1e-4
    # One level is the posterior mean, shrunk towards mu: far from the data distribution;
    # with 16 levels both modes reach the floor of the distance.
    assert ode[1].distance > 5 * floor
    assert rows[0].distance > 5 * floor  # the noisy observations themselves
    for r in (ode[16], sde[16]):
        assert r.distance < 2 * floor + 0.005, (r.mode, r.distance, floor)
    assert ode[16].distance < ode[1].distance / 5


def _sliced_w2_by_definition(a, b, projections, seed, quantiles=1000):
    """Sliced W2 written out with np.quantile: unit directions from the seed's normal draws,
    matched quantiles at (i + 0.5) / quantiles, root mean square over directions."""
    a = a.reshape(len(a), -1).astype(np.float64)
    b = b.reshape(len(b), -1).astype(np.float64)
    dirs = np.random.default_rng(seed).standard_normal((a.shape[1], projections))
    dirs /= np.linalg.norm(dirs, axis=0, keepdims=True)
    levels = (np.arange(quantiles) + 0.5) / quantiles
    qa, qb = np.quantile(a @ dirs, levels, axis=0), np.quantile(b @ dirs, levels, axis=0)
    return float(np.sqrt(((qa - qb) ** 2).mean()))


def test_distance_is_the_projects_sliced_wasserstein(rng):
    """SlicedW2 gives sliced_wasserstein's number (one implementation: same directions, same
    quantiles), and both give np.quantile's numbers."""
    ref = rng.standard_normal((700, 3, 4, 4)).astype(np.float32)
    items = 0.5 + 2 * rng.standard_normal((300, 3, 4, 4)).astype(np.float32)
    for projections, seed in ((256, 0), (17, 5)):
        fast = SlicedW2(ref, projections, seed)
        expected = sliced_wasserstein(items, ref, projections, seed=seed)
        assert fast(items) == expected
        assert fast(torch.from_numpy(items)) == expected
        assert expected == pytest.approx(
            _sliced_w2_by_definition(items, ref, projections, seed), rel=1e-12
        )
    assert fast(ref) < 1e-12
    with pytest.raises(ValueError, match="distance"):
        fast(items[:, :2])


def test_sde_rows_use_the_stage_seeds():
    """The SDE draws item id's noise from the denoise stage's seed: batching changes nothing."""
    denoiser, y, ids, *_ = _gaussian_case(64)
    ids = ids + 1000
    whole = nfe.Config(tau=TAU, steps=(4,), batch_size=64, seed=3, iteration=2)
    split = nfe.Config(tau=TAU, steps=(4,), batch_size=10, seed=3, iteration=2)
    a, _, _ = nfe.denoise_set(denoiser, y, ids, 4, True, whole)
    b, _, _ = nfe.denoise_set(denoiser, y, ids, 4, True, split)
    torch.testing.assert_close(a, b, rtol=0, atol=1e-12)
    c, _, _ = nfe.denoise_set(denoiser, y, ids + 1, 4, True, whole)
    assert (a - c).abs().max() > 1e-3  # other ids, other noise


def test_main_on_a_prepared_toy(tmp_path, capsys):
    """`sfbd nfe-study`: a prepared toy data set and an (untrained) MLP checkpoint, end to end."""
    from sfbd.data.prepare import DataConfig, prepare
    from sfbd.diffusion.networks import NetworkConfig, build_denoiser, save_denoiser

    data = tmp_path / "data"
    prepare(
        DataConfig(dataset="toy2d", num=300, clean_fraction=0.1, tau=TAU),
        data,
        log=lambda *_: None,
    )
    net = NetworkConfig(preset="mlp", channels=2)
    torch.manual_seed(0)
    save_denoiser(tmp_path / "ckpt.pt", build_denoiser(net), net, iteration=0)
    out = tmp_path / "nfe.json"
    argv = ["nfe-study", "--checkpoint", str(tmp_path / "ckpt.pt"), "--data", str(data)]
    argv += ["--steps", "2,1"]
    argv += ["--modes", "sde,ode", "--limit", "50", "--converged-steps", "8", "--out", str(out)]
    argv += ["--converged-modes", "sde,ode"]
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "floor (true samples, same count)" in printed
    record = json.loads(out.read_text())
    assert record["items"] == 50 and record["metric"] == "swd_true" and record["tau"] == TAU
    rows = [(r["mode"], r["steps"], r["converged"]) for r in record["rows"]]
    assert rows == [
        ("noisy", 0, False),
        ("sde", 8, True),
        ("ode", 8, True),
        ("sde", 1, False),
        ("sde", 2, False),
        ("ode", 1, False),
        ("ode", 2, False),
    ]
    assert all(r["evaluations"] == r["expected_evaluations"] for r in record["rows"])
    assert record["config"]["iteration"] == 1  # checkpoint 0 feeds the denoise of iteration 1
    assert record["markdown"].count("\n") == len(rows) + 2  # header, rule, rows, floor

    # Bad input: one-line errors, exit code 2, before any work.
    none = str(tmp_path / "none.pt")
    assert main(["nfe-study", "--checkpoint", none, "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert "checkpoint" in err and len(err.strip().splitlines()) == 1
    assert main(argv[:5] + ["--steps", "0,2"]) == 2
    assert "--steps" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(argv[:5] + ["--modes", "ode,euler"])
    assert cli_nfe_study.MODES == nfe.MODES  # the flag's choices are the study's modes


def test_converged_rows_only_for_the_modes_asked():
    denoiser, y, ids, reference, *_ = _gaussian_case(64)
    config = nfe.Config(tau=TAU, steps=(2,), converged_steps=8, converged_modes=("ode",))
    rows = nfe.run_study(denoiser, y, ids, SlicedW2(reference), config, log=lambda _: None)
    assert [(r.mode, r.steps, r.converged) for r in rows] == [
        ("noisy", 0, False),
        ("ode", 8, True),
        ("ode", 2, False),
        ("sde", 2, False),
    ]
    with pytest.raises(ValueError, match="modes"):
        nfe.run_study(denoiser, y, ids, SlicedW2(reference), nfe.Config(TAU, (2,), ("rk4",)))
