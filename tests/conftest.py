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


class AnonPeak:
    """The peak growth of this process's anonymous resident memory (`RssAnon`: the heaps of
    Python, NumPy, Arrow and torch; not the object store's shared memory, not mapped files),
    sampled every 2 ms by a thread while the `with` block runs. Used instead of tracemalloc,
    whose stop() can crash Python 3.11 while other threads (Ray's) allocate."""

    def __init__(self):
        self.base = self.peak = 0
        self._stop = None

    @staticmethod
    def now() -> int:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("RssAnon:"):
                    return int(line.split()[1]) * 1024
        raise RuntimeError("no RssAnon in /proc/self/status")

    def _watch(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.now())

    def __enter__(self):
        import threading

        self.base = self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, daemon=True)
        self._thread.start()
        return self

    def sample(self) -> None:
        self.peak = max(self.peak, self.now())

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.sample()

    @property
    def growth(self) -> int:
        return self.peak - self.base


@pytest.fixture
def anon_peak():
    """A fresh `AnonPeak` (Linux: reads /proc/self/status)."""
    return AnonPeak()
