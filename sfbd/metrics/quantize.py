"""8-bit quantisation of generated images, as EDM and the paper score them.

A generator's samples are real numbers; the images of a data set (and the PNGs that other FID
tools read) are 8-bit. FID is computed on the quantised samples so that the figures compare
with EDM's and the paper's; the reference images are 8-bit already and are left alone.
"""

from __future__ import annotations

import numpy as np

LEVELS = 256


def quantize_uint8(x: np.ndarray) -> np.ndarray:
    """Images in [-1, 1] snapped to the 256 levels of an 8-bit image, back in [-1, 1] (float32):
    `round((x + 1) * 127.5)`, clipped to [0, 255], then `/ 127.5 - 1`. Values already on that
    grid come back unchanged."""
    x = np.asarray(x, dtype=np.float32)
    levels = np.clip(np.round((x + 1.0) * 127.5), 0, LEVELS - 1)
    return (levels / 127.5 - 1.0).astype(np.float32)
