"""Samplers against the exact denoiser of a Gaussian data distribution N(mu, s^2)."""

import math

import pytest
import torch

from sfbd.diffusion.samplers import (
    backward_denoise,
    backward_sigmas,
    generate,
    karras_sigmas,
    network_evaluations,
)

TAU = 0.59


def test_backward_schedule_spans_sigma_min_to_tau():
    sig = backward_sigmas(10, TAU, sigma_min=0.002)
    assert len(sig) == 11
    assert sig[0].item() == pytest.approx(TAU, abs=0)  # first level is tau itself
    assert sig[-2].item() == pytest.approx(0.002, rel=1e-12)
    assert sig[-1].item() == 0.0
    assert torch.all(sig[1:] < sig[:-1])
    # No level outside [sigma_min, tau] except the final 0.
    assert torch.all((sig[:-1] <= TAU) & (sig[:-1] >= 0.002))
    assert karras_sigmas(18)[0].item() == pytest.approx(80.0)
    assert network_evaluations(18) == 35


def test_ode_maps_y_to_the_exact_transport(gaussian):
    y = torch.linspace(-2, 2, 41, dtype=torch.float64)[:, None].repeat(1, 2)
    exact = gaussian.mu + (y - gaussian.mu) * gaussian.s / (gaussian.s**2 + TAU**2).sqrt()
    err = {}
    for steps in (8, 32, 128):
        x = backward_denoise(gaussian, y, TAU, steps=steps)
        err[steps] = (x - exact).abs().max().item()
    print(f"ODE max |error| vs exact (|y| <= 2): {err}")
    assert err[128] < 1e-4
    assert err[32] < 3e-3
    # Heun is second order: 4x the steps must cut the error by well over 4x.
    assert err[32] < err[8] / 10 and err[128] < err[32] / 10


def test_sde_samples_the_posterior(gaussian):
    n = 40000
    y = torch.tensor([1.0, -1.0], dtype=torch.float64).repeat(n, 1)
    g = torch.Generator().manual_seed(1)
    x = backward_denoise(gaussian, y, TAU, steps=32, stochastic=True, generator=g)
    mu, s = gaussian.mu, gaussian.s
    post_mean = mu + (y[0] - mu) * s**2 / (s**2 + TAU**2)
    post_var = s**2 * TAU**2 / (s**2 + TAU**2)
    mean_err = (x.mean(0) - post_mean).abs()
    var_rel = x.var(0) / post_var - 1
    print(f"SDE mean error {mean_err.tolist()}, variance rel. error {var_rel.tolist()}")
    # 5 standard errors of the sample mean and of the sample variance.
    assert torch.all(mean_err < 5 * (post_var / n).sqrt())
    assert torch.all(var_rel.abs() < 5 * math.sqrt(2 / n))
    # A deterministic solver would give zero spread: the SDE must not collapse.
    assert torch.all(x.std(0) > 0.9 * post_var.sqrt())


def test_sde_noise_is_per_sample_and_independent_of_batching(gaussian):
    y = torch.randn(6, 2, dtype=torch.float64)

    def gens(seeds):
        return [torch.Generator().manual_seed(s) for s in seeds]

    whole = backward_denoise(gaussian, y, TAU, 6, stochastic=True, generator=gens(range(6)))
    part = torch.cat(
        [
            backward_denoise(gaussian, y[:2], TAU, 6, stochastic=True, generator=gens(range(2))),
            backward_denoise(gaussian, y[2:], TAU, 6, stochastic=True, generator=gens(range(2, 6))),
        ]
    )
    torch.testing.assert_close(whole, part, rtol=0, atol=1e-12)


def test_generate_draws_the_data_distribution(gaussian):
    n = 40000
    g = torch.Generator().manual_seed(2)
    # 64 levels: the ODE's discretisation bias in the spread is then 0.5% (4% at 18 levels)
    # for these narrow components, below the sampling error tested for.
    x = generate(gaussian, (n, 2), steps=64, generator=g, dtype=torch.float64)
    mean_err = (x.mean(0) - gaussian.mu).abs()
    std_rel = x.std(0) / gaussian.s - 1
    print(f"generate mean error {mean_err.tolist()}, std rel. error {std_rel.tolist()}")
    # The start N(0, 80^2) instead of N(mu, 80^2 + s^2) biases the mean by mu * s / 80.
    assert torch.all(mean_err < 5 * gaussian.s / math.sqrt(n) + gaussian.mu.abs() * gaussian.s / 80)
    assert torch.all(std_rel.abs() < 5 / math.sqrt(2 * n))


def test_network_evaluations_match_the_schedule(gaussian):
    y = torch.zeros(3, 2, dtype=torch.float64)
    backward_denoise(gaussian, y, TAU, steps=7)
    assert gaussian.calls == network_evaluations(7)


def test_single_step_is_the_posterior_mean(gaussian):
    # One level: a single Euler step from tau to 0 returns D(y, tau) (Tweedie's formula).
    y = torch.randn(5, 2, dtype=torch.float64)
    x = backward_denoise(gaussian, y, TAU, steps=1)
    torch.testing.assert_close(x, gaussian(y, torch.full((5,), TAU, dtype=torch.float64)))


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match="tau"):
        backward_sigmas(8, 0.0)
    with pytest.raises(ValueError, match="steps"):
        backward_sigmas(0, 0.5)
