"""Metrics: distances between sample sets."""

from sfbd.metrics.distances import sliced_wasserstein

__all__ = ["sliced_wasserstein"]
