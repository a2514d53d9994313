import sys
from pathlib import Path

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
    import ray

    ray.init(
        num_cpus=2,
        include_dashboard=False,
        namespace="sfbd",
        configure_logging=False,
        log_to_driver=True,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


def load_module(path: Path, name: str):
    import importlib.util

    spec = importlib.util.spec_from_file_location(f"script_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_job(name: str):
    """Import jobs/<name>.py as a module (jobs/sfbd.py shares the package's name)."""
    import importlib.util

    jobs = Path(__file__).resolve().parents[1] / "jobs"
    path = jobs / f"{name}.py"
    if str(jobs) not in sys.path:
        sys.path.append(str(jobs))  # for `import _path`, which then removes it again
    spec = importlib.util.spec_from_file_location(f"job_{name}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
