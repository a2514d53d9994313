"""sfbd: Stochastic Forward-Backward Deconvolution (Lu, Wu & Yu, ICML 2025) on Ray.

import sfbd
summary = sfbd.fit("toy2d", run_dir="runs/x", overrides=["iterations=2"])
"""

__version__ = "0.1.0"
__all__ = ["fit", "load_config"]


def fit(*args, **kwargs):
    """Run SFBD end to end, or resume it: see `sfbd.run.fit`."""
    from sfbd.run import fit as _fit

    return _fit(*args, **kwargs)


def load_config(*args, **kwargs):
    """A preset or YAML file with `key=value` overrides: see `sfbd.config.load_config`."""
    from sfbd.config import load_config as _load_config

    return _load_config(*args, **kwargs)
