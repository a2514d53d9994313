import numpy as np
import pytest
import torch


class GaussianDenoiser:
    """The exact denoiser for data N(mu, s^2) (per dimension): E[x0 | x_sigma]."""

    def __init__(self, mu: torch.Tensor, s: torch.Tensor):
        self.mu, self.s = mu, s
        self.calls = 0

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        assert sigma.shape == (x.shape[0],)
        self.calls += 1
        sig = sigma.reshape(-1, *([1] * (x.ndim - 1)))
        return self.mu + (x - self.mu) * self.s**2 / (self.s**2 + sig**2)


@pytest.fixture
def gaussian():
    mu = torch.tensor([0.3, -0.5], dtype=torch.float64)
    s = torch.tensor([0.5, 0.2], dtype=torch.float64)
    return GaussianDenoiser(mu, s)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole test session (ray.init takes ~10 s here)."""
    import os

    import ray

    # Every train stage starts a Ray Train controller and workers; on this suite's one-machine
    # cluster there is no spot instance to watch (one process fewer per stage) and a finished
    # stage is noticed sooner. Set before ray.init so the raylet's workers inherit them.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.5")
    ray.init(
        address="local",  # a cluster of its own, even while another one runs on this machine
        num_cpus=2,
        include_dashboard=False,
        namespace="sfbd",
        configure_logging=False,
        # Export metrics every 2 s (default 10 s): the fault test reads the running stage
        # from them while that stage still runs.
        _system_config={"metrics_report_interval_ms": 2000},
        log_to_driver=True,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
