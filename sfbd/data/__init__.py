"""Data: sources, the seeded clean/noisy split, and the Parquet store (no Ray)."""

from sfbd.data.sources import DATASETS, Source, load_source, toy2d_sample
from sfbd.data.split import noise_for, split_indices
from sfbd.data.store import read_manifest, read_split, verify_split

__all__ = [
    "DATASETS",
    "Source",
    "load_source",
    "noise_for",
    "read_manifest",
    "read_split",
    "split_indices",
    "toy2d_sample",
    "verify_split",
]
