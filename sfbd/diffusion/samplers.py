"""Samplers and noise schedules (Karras et al. 2022; Lu, Wu & Yu 2025, Algorithm 1).

A denoiser is any callable `D(x, sigma) -> x0_hat` with `sigma` of shape `[B]`. Every sampler
has the signature `sample_*(denoiser, x, sigmas, generator=None, callback=None)`: `x` is the
state at `sigmas[0]`, `sigmas` decreases to 0, the result is the state at sigma = 0.

`generator` is `None`, one `torch.Generator`, or a sequence of generators with one per sample;
the last makes each sample's randomness independent of how samples are batched.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Generator = torch.Generator | Sequence[torch.Generator] | None
Callback = Callable[[dict], None] | None


def randn_like(x: torch.Tensor, generator: Generator = None) -> torch.Tensor:
    """Standard normal noise shaped like `x`, drawn per sample when given one generator each."""
    if generator is None or isinstance(generator, torch.Generator):
        return torch.randn(x.shape, dtype=x.dtype, device=x.device, generator=generator)
    if len(generator) != x.shape[0]:
        raise ValueError(f"generator: {len(generator)} generators for a batch of {x.shape[0]}")
    return torch.stack(
        [torch.randn(x.shape[1:], dtype=x.dtype, device=x.device, generator=g) for g in generator]
    )


# ---------------------------------------------------------------------------------------------
# Schedules


def karras_sigmas(
    steps: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """EDM's time steps (Eq. 5): `steps` levels from sigma_max to sigma_min, then a final 0."""
    if steps < 1:
        raise ValueError(f"steps: {steps}; must be >= 1")
    if not 0 < sigma_min <= sigma_max:
        raise ValueError(f"sigma_min={sigma_min}, sigma_max={sigma_max}: need 0 < min <= max")
    if steps == 1:
        t = torch.tensor([sigma_max], dtype=dtype, device=device)
    else:
        i = torch.arange(steps, dtype=dtype, device=device)
        lo, hi = sigma_min ** (1 / rho), sigma_max ** (1 / rho)
        t = (hi + i / (steps - 1) * (lo - hi)) ** rho
        t[0], t[-1] = sigma_max, sigma_min  # exact ends, free of rounding in the powers
    return torch.cat([t, t.new_zeros(1)])


def backward_sigmas(
    steps: int,
    tau: float,
    sigma_min: float = 0.002,
    rho: float = 7.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """The backward-denoising schedule: EDM's rho-spacing laid over [sigma_min, tau] itself.

    The first level is exactly tau, the noise level of the observations, so no network
    evaluation is spent on a level the data are not at (cutting EDM's global grid at tau, as
    the reference release does, starts below tau and wastes a near-zero step at the end).
    """
    if tau <= 0:
        raise ValueError(f"tau: {tau}; must be > 0")
    return karras_sigmas(steps, min(sigma_min, tau), tau, rho, device=device, dtype=dtype)


# ---------------------------------------------------------------------------------------------
# Samplers


def _denoise(denoiser: Denoiser, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    return denoiser(x, sigma.to(x.dtype).expand(x.shape[0]))


def sample_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: Generator = None,
    callback: Callback = None,
) -> torch.Tensor:
    """Probability-flow ODE with Heun steps (Karras et al. 2022, Algorithm 1): EDM's sampler
    without churn."""
    return sample_edm(denoiser, x, sigmas, generator=generator, callback=callback, S_churn=0.0)


def sample_sde_heun(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: Generator = None,
    callback: Callback = None,
) -> torch.Tensor:
    """Reverse-time SDE dx = -2 sigma score dsigma + sqrt(2 sigma) dw (Karras et al. Eq. 6,
    beta = 1/sigma) with stochastic Heun steps: the noise increment is shared by predictor
    and corrector, which makes the scheme second order in the drift for this additive noise.

    Started at an observation y at sigma = tau, the result is a sample of p(x0 | y): the
    posterior sampling of SFBD's backward step (Lu, Wu & Yu 2025, Algorithm 1).
    """
    for i in range(len(sigmas) - 1):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        # Brownian increment over [t_next, t_cur]: variance t_cur^2 - t_next^2.
        noise = (t_cur**2 - t_next**2).sqrt() * randn_like(x, generator)
        # Euler-Maruyama predictor; the drift 2 (x - D) / sigma pulls towards the denoised x.
        d_cur = 2 * (x - _denoise(denoiser, x, t_cur)) / t_cur
        x_next = x + (t_next - t_cur) * d_cur + noise
        # Apply 2nd order correction with the same Brownian increment.
        if t_next > 0:
            d_prime = 2 * (x_next - _denoise(denoiser, x_next, t_next)) / t_next
            x_next = x + (t_next - t_cur) * (0.5 * d_cur + 0.5 * d_prime) + noise
        x = x_next
        if callback is not None:
            callback({"i": i, "x": x, "sigma": t_cur, "sigma_next": t_next})
    return x


def sample_edm(
    denoiser: Denoiser,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    generator: Generator = None,
    callback: Callback = None,
    S_churn: float = 0.0,
    S_min: float = 0.0,
    S_max: float = float("inf"),
    S_noise: float = 1.0,
) -> torch.Tensor:
    """EDM's stochastic sampler (Karras et al. 2022, Algorithm 2); S_churn = 0 is Algorithm 1."""
    num_steps = len(sigmas) - 1
    for i in range(num_steps):
        t_cur, t_next = sigmas[i], sigmas[i + 1]
        # Increase noise temporarily.
        gamma = min(S_churn / num_steps, 2**0.5 - 1) if S_min <= t_cur <= S_max else 0.0
        t_hat = t_cur + gamma * t_cur
        if gamma > 0:
            x = x + (t_hat**2 - t_cur**2).sqrt() * S_noise * randn_like(x, generator)
        # Euler step.
        d_cur = (x - _denoise(denoiser, x, t_hat)) / t_hat
        x_next = x + (t_next - t_hat) * d_cur
        # Apply 2nd order correction.
        if t_next > 0:
            d_prime = (x_next - _denoise(denoiser, x_next, t_next)) / t_next
            x_next = x + (t_next - t_hat) * (0.5 * d_cur + 0.5 * d_prime)
        x = x_next
        if callback is not None:
            callback({"i": i, "x": x, "sigma": t_cur, "sigma_next": t_next})
    return x


def network_evaluations(steps: int) -> int:
    """Denoiser calls per sample of the Heun samplers for `steps` noise levels (2 steps - 1)."""
    return 2 * steps - 1


class CountingDenoiser:
    """Wraps a denoiser `D(x, sigma)` and counts network evaluations at its call site: a call
    on a batch of B items adds B. What `network_evaluations` predicts is checked against it
    (the benchmark and the NFE study count with it)."""

    def __init__(self, denoiser: Denoiser):
        self.denoiser = denoiser
        self.evaluations = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        self.evaluations += x.shape[0]
        return self.denoiser(x, sigma)


# ---------------------------------------------------------------------------------------------
# The two entry points SFBD uses


@torch.no_grad()
def backward_denoise(
    denoiser: Denoiser,
    y: torch.Tensor,
    tau: float,
    steps: int,
    stochastic: bool = False,
    generator: Generator = None,
    sigma_min: float = 0.002,
    rho: float = 7.0,
    callback: Callback = None,
) -> torch.Tensor:
    """SFBD's backward step: solve the reverse diffusion from sigma = tau to 0 starting at `y`.

    Deterministic: the probability-flow ODE (what the authors' code runs); stochastic: the
    reverse SDE, whose output is a posterior sample x0 ~ p(x0 | y) (the paper's Algorithm 1).
    """
    sigmas = backward_sigmas(steps, tau, sigma_min, rho, device=y.device, dtype=y.dtype)
    sampler = sample_sde_heun if stochastic else sample_heun
    return sampler(denoiser, y, sigmas, generator=generator, callback=callback)


@torch.no_grad()
def generate(
    denoiser: Denoiser,
    shape: Sequence[int],
    steps: int = 18,
    generator: Generator = None,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    S_churn: float = 0.0,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
    callback: Callback = None,
) -> torch.Tensor:
    """Unconditional samples: x ~ N(0, sigma_max^2 I), then EDM's sampler (Algorithm 2)."""
    sigmas = karras_sigmas(steps, sigma_min, sigma_max, rho, device=device, dtype=dtype)
    x = randn_like(torch.empty(tuple(shape), device=device, dtype=dtype), generator) * sigmas[0]
    return sample_edm(denoiser, x, sigmas, generator=generator, callback=callback, S_churn=S_churn)
