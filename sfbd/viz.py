"""Pictures: image grids and 2-D scatter plots as PNG files (PIL only)."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
from PIL import Image

from sfbd.storage import Location, Where


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[N, C, H, W] in [-1, 1] -> [N, H, W, C] uint8."""
    x = np.clip((np.asarray(images, dtype=np.float32) + 1) * 127.5, 0, 255).round()
    return x.astype(np.uint8).transpose(0, 2, 3, 1)


def save_png_folder(images: np.ndarray, folder: Path) -> int:
    """One 8-bit PNG per image (`000000.png`, ...), the form EDM's `fid.py`, clean-fid and
    torch-fidelity score as it is; grayscale stays one channel. Returns the count."""
    pics = to_uint8(images)
    for i, pic in enumerate(pics):
        Image.fromarray(pic[..., 0] if pic.shape[-1] == 1 else pic).save(folder / f"{i:06d}.png")
    return len(pics)


def save_grid(images: np.ndarray, path: Where, columns: int, pad: int = 2) -> None:
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


def save_pairs(noisy: np.ndarray, denoised: np.ndarray, path: Where, columns: int = 8) -> None:
    """Rows alternate: noisy observations, then their denoised versions below them."""
    rows = []
    for start in range(0, len(noisy), columns):
        rows += [noisy[start : start + columns], denoised[start : start + columns]]
    save_grid(np.concatenate(rows), path, columns)


def save_scatter(
    points: dict[str, np.ndarray], path: Where, size: int = 256, extent: float = 2.0
) -> None:
    """2-D point sets side by side as density images, one panel per set, same axes."""
    panels = []
    for pts in points.values():
        hist, _, _ = np.histogram2d(
            pts[:, 1], pts[:, 0], bins=size, range=[[-extent, extent], [-extent, extent]]
        )
        top = np.percentile(hist[hist > 0], 99) if hist.any() else 1.0  # none in range
        img = 255 - np.clip(hist / max(top, 1) * 255, 0, 255)
        panels.append(np.flipud(img).astype(np.uint8))
        panels.append(np.full((size, 4), 128, np.uint8))
    _save(np.concatenate(panels[:-1], axis=1)[..., None], path)


def save_metric_plot(rows: list[dict], metric: str, path: Where, size=(480, 320)) -> None:
    """A line plot of `metric` against `iteration` (axes, ticks and values drawn with PIL)."""
    from PIL import ImageDraw

    pts = [(r["iteration"], r[metric]) for r in rows if metric in r]
    if not pts:
        return
    w, h = size
    left, right, top, bottom = 60, 20, 30, 40
    img = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(img)
    xs, ys = [p[0] for p in pts], [p[1] for p in pts]
    x0, x1 = min(xs), max(max(xs), min(xs) + 1)
    lo, hi = min(ys), max(ys)
    pad = (hi - lo) * 0.1 or abs(hi) * 0.1 or 1.0
    lo, hi = lo - pad, hi + pad

    def to_px(x, y):
        return (
            left + (x - x0) / (x1 - x0) * (w - left - right),
            top + (hi - y) / (hi - lo) * (h - top - bottom),
        )

    draw.rectangle([left, top, w - right, h - bottom], outline="black")
    for x in range(x0, x1 + 1):
        px = to_px(x, lo)[0]
        draw.line([px, h - bottom, px, h - bottom + 4], fill="black")
        draw.text((px - 3, h - bottom + 6), str(x), fill="black")
    for frac in (0.0, 0.5, 1.0):
        y = lo + pad + frac * (hi - lo - 2 * pad)
        py = to_px(x0, y)[1]
        draw.text((4, py - 6), f"{y:.4g}", fill="black")
    draw.line([to_px(x, y) for x, y in pts], fill=(200, 30, 30), width=2)
    for x, y in pts:
        cx, cy = to_px(x, y)
        draw.ellipse([cx - 3, cy - 3, cx + 3, cy + 3], fill=(200, 30, 30))
    draw.text((left, 8), f"{metric} by iteration", fill="black")
    draw.text((w // 2 - 20, h - 16), "iteration", fill="black")
    _write_png(img, path)


def comparison_image(pictures: list[tuple[str, Where]], path: Where) -> bool:
    """PNG pictures side by side, each under its label (wide ones, such as the toy's point
    plots, one above the other); False, and nothing written, when there are none."""
    from PIL import ImageDraw

    pics = [
        (label, Image.open(io.BytesIO(Location.of(where).read_bytes())).convert("RGB"))
        for label, where in pictures
    ]
    if not pics:
        return False
    label_h, gap = 14, 6
    across = all(p.width <= 1.5 * p.height for _, p in pics)
    if across:
        width = sum(p.width for _, p in pics) + gap * (len(pics) - 1)
        height = label_h + max(p.height for _, p in pics)
    else:
        width = max(p.width for _, p in pics)
        height = sum(label_h + p.height for _, p in pics) + gap * (len(pics) - 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    x = y = 0
    for label, pic in pics:
        draw.text((x + 2, y + 1), label, fill="black")
        canvas.paste(pic, (x, y + label_h))
        if across:
            x += pic.width + gap
        else:
            y += label_h + pic.height + gap
    _write_png(canvas, path)
    return True


def _save(canvas: np.ndarray, path: Where) -> None:
    mode = "L" if canvas.shape[-1] == 1 else "RGB"
    _write_png(Image.fromarray(canvas[..., 0] if mode == "L" else canvas, mode), path)


def _write_png(img: Image.Image, path: Where) -> None:
    buffer = io.BytesIO()
    img.save(buffer, format="PNG")
    Location.of(path).write_bytes(buffer.getvalue())
