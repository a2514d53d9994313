"""Pictures: image grids and 2-D scatter plots as PNG files (PIL only)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8."""
    x = np.clip((np.asarray(images, dtype=np.float32) + 1) * 127.5, 0, 255).round()
    return x.astype(np.uint8).transpose(0, 2, 3, 1)


def save_grid(images: np.ndarray, path: Path, columns: int, pad: int = 2) -> None:
    """Tile images row by row into one PNG (white padding)."""
    pics = to_uint8(images)
    n, h, w, c = pics.shape
    rows = -(-n // columns)
    canvas = np.full((rows * (h + pad) + pad, columns * (w + pad) + pad, c), 255, np.uint8)
    for i, pic in enumerate(pics):
        r, k = divmod(i, columns)
        canvas[
            pad + r * (h + pad) : pad + r * (h + pad) + h,
            pad + k * (w + pad) : pad + k * (w + pad) + w,
        ] = pic
    _save(canvas, path)


def save_pairs(noisy: np.ndarray, denoised: np.ndarray, path: Path, columns: int = 8) -> None:
    """Rows alternate: noisy observations, then their denoised versions below them."""
    rows = []
    for start in range(0, len(noisy), columns):
        rows += [noisy[start : start + columns], denoised[start : start + columns]]
    save_grid(np.concatenate(rows), path, columns)


def save_scatter(
    points: dict[str, np.ndarray], path: Path, size: int = 256, extent: float = 2.0
) -> None:
    """2-D point sets side by side as density images, one panel per set, same axes."""
    panels = []
    for pts in points.values():
        hist, _, _ = np.histogram2d(
            pts[:, 1], pts[:, 0], bins=size, range=[[-extent, extent], [-extent, extent]]
        )
        img = 255 - np.clip(hist / max(np.percentile(hist[hist > 0], 99), 1) * 255, 0, 255)
        panels.append(np.flipud(img).astype(np.uint8))
        panels.append(np.full((size, 4), 128, np.uint8))
    _save(np.concatenate(panels[:-1], axis=1)[..., None], path)


def _save(canvas: np.ndarray, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = "L" if canvas.shape[-1] == 1 else "RGB"
    tmp = path.with_name(path.name + ".tmp.png")
    Image.fromarray(canvas[..., 0] if mode == "L" else canvas, mode).save(tmp)
    tmp.replace(path)
