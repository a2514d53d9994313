"""sfbd: Stochastic Forward-Backward Deconvolution (Lu, Wu & Yu, ICML 2025) on Ray."""

__version__ = "0.1.0"
