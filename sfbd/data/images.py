"""Image files as data: folders (local paths or URIs) and EDM's dataset zips, decoded to
8-bit pixel arrays `[C, H, W]` and brought to one square size (no Ray; the parallel reader
is `sfbd.stages.prepare_images`).

Ids follow the sorted order of the image names (their folder parts compared one by one, as
Python sorts paths), so the same folder always gives the same ids and the same split.

With a `resolution`, each image's centre square (side: its shorter side) is scaled to
`resolution` x `resolution` with Lanczos filtering: the picture EDM's `dataset_tool.py
--transform=center-crop` makes, except that greyscale stays one channel. Greyscale (and 1-bit
or 16-bit) images are read as one channel, everything else as three (RGB).
"""

from __future__ import annotations

import io
import posixpath
import zipfile
from dataclasses import dataclass

import numpy as np
import pyarrow.fs as pafs

from sfbd.storage import Location

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
GREY_MODES = ("L", "1", "LA", "I;16", "I;16B", "I;16L", "I")
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")  # 16-bit (or 32-bit integer) greyscale


class ImageError(ValueError):
    """A bad image file or a set of images that do not fit together (one line)."""


def image_files_kind(spec: str) -> str | None:
    """`folder` or `zip` for a spec read as image files (`folder:PATH`, `zip:PATH`, a
    `folder:` path that ends in .zip being a zip), else None."""
    name, _, path = spec.partition(":")
    if name == "zip" or (name == "folder" and path.lower().rstrip("/").endswith(".zip")):
        return "zip"
    return "folder" if name == "folder" else None


@dataclass(frozen=True)
class ImageFiles:
    """The images of a folder or zip: `root` (a path or URI) and their `names` in id order
    (paths relative to the folder, or zip member names)."""

    kind: str  # "folder" or "zip"
    root: str
    names: tuple[str, ...]

    def label(self, name: str) -> str:
        """How errors name one image."""
        return f"{self.root}/{name}" if self.kind == "folder" else f"{self.root}:{name}"

    def reader(self) -> ImageReader:
        return ImageReader(self)


def _is_image_name(name: str) -> bool:
    """A PNG or JPEG name, not macOS's resource forks (`._x.png`, `__MACOSX/`)."""
    base = name.rsplit("/", 1)[-1]
    return (
        name.lower().endswith(IMAGE_SUFFIXES)
        and not base.startswith("._")
        and not name.startswith("__MACOSX/")
        and "/__MACOSX/" not in name
    )


def _to_uint8(im) -> np.ndarray:
    """8-bit pixel codes of a decoded image: 16-bit greyscale scaled (65535 -> 255), not
    clipped as Pillow's convert("L") would; greyscale with alpha as greyscale; everything
    else (palette images included) as RGB."""
    if im.mode in WIDE_MODES:
        a = np.asarray(im).astype(np.float64)
        top = 65535.0 if im.mode.startswith("I;16") or a.max() > 255 else 255.0
        return np.rint(np.clip(a, 0, top) * (255.0 / top)).astype(np.uint8)
    return np.asarray(im.convert("L" if im.mode in GREY_MODES else "RGB"))


def _sort_key(name: str) -> list[str]:
    return name.split("/")


def _open_zip(root: Location) -> zipfile.ZipFile:
    try:
        return zipfile.ZipFile(root.fs.open_input_file(root.path))
    except (zipfile.BadZipFile, ValueError):  # ValueError: pyarrow's seek before its start
        raise ImageError(f"dataset: {root} is not a zip file") from None


def list_image_files(spec: str, limit: int | None = None) -> ImageFiles:
    """The images of `spec` (see `image_files_kind`), the first `limit` of them in id order;
    an error naming the path when it holds none."""
    kind = image_files_kind(spec)
    if kind is None:
        raise ValueError(f"dataset: {spec!r} is not an image folder or zip")
    root = Location.of(spec.partition(":")[2])
    if kind == "zip":
        with _open_zip(root) as z:
            names = [m for m in z.namelist() if not m.endswith("/") and _is_image_name(m)]
    elif root.local is not None:  # rglob: links to folders are not descended into
        names = [
            p.relative_to(root.local).as_posix()
            for p in root.local.rglob("*")
            if p.is_file() and _is_image_name(p.name)
        ]
    else:
        infos = root.fs.get_file_info(pafs.FileSelector(root.path, recursive=True))
        names = [
            posixpath.relpath(i.path, root.path)
            for i in infos
            if i.type == pafs.FileType.File and _is_image_name(i.path)
        ]
    if not names:
        what = "zip" if kind == "zip" else "folder"
        raise ImageError(f"dataset: {what} {root} has no PNG or JPEG images")
    names.sort(key=_sort_key)
    return ImageFiles(kind, str(root), tuple(names[:limit] if limit is not None else names))


class ImageReader:
    """Reads the bytes of images by name; a zip is opened once per reader."""

    def __init__(self, files: ImageFiles):
        self.files = files
        self.root = Location.of(files.root)
        self._zip = _open_zip(self.root) if files.kind == "zip" else None

    def read(self, name: str) -> bytes:
        try:
            if self._zip is not None:
                return self._zip.read(name)
            return (self.root / name).read_bytes()
        except Exception as exc:  # OSError, KeyError, BadZipFile, zlib.error (a bad member)
            raise ImageError(f"dataset: cannot read {self.files.label(name)}: {exc}") from None

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()

    def __enter__(self) -> ImageReader:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def decode_image(data: bytes, label: str) -> np.ndarray:
    """uint8 `[C, H, W]` of one PNG or JPEG file (C: 1 for greyscale, else 3)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(data)) as im:
            arr = _to_uint8(im)
    except UnidentifiedImageError:
        why = "not a format Pillow knows"
    except Exception as exc:  # truncated, damaged, a decompression bomb, ...
        why = str(exc) or type(exc).__name__
    else:
        return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    raise ImageError(f"dataset: {label} is not a readable PNG or JPEG image ({why}); remove it")


def center_crop(image: np.ndarray, resolution: int) -> np.ndarray:
    """The centre square of a uint8 `[C, H, W]` image scaled to `resolution` (Lanczos)."""
    from PIL import Image

    _, h, w = image.shape
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    square = image[:, top : top + side, left : left + side]
    if side == resolution:
        return np.ascontiguousarray(square)
    hwc = square[0] if square.shape[0] == 1 else square.transpose(1, 2, 0)
    scaled = Image.fromarray(np.ascontiguousarray(hwc)).resize(
        (resolution, resolution), Image.Resampling.LANCZOS
    )
    arr = np.asarray(scaled)
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def image_item(data: bytes, label: str, resolution: int | None) -> np.ndarray:
    """One file's uint8 item: decoded, and centre-cropped to `resolution` when set."""
    image = decode_image(data, label)
    return image if resolution is None else center_crop(image, resolution)


def check_fits(
    shape: tuple[int, ...], label: str, first: tuple[int, ...], first_label: str
) -> None:
    """One image's item shape against the first image's; one line naming both files."""
    if shape == first:
        return
    if shape[0] != first[0]:
        raise ImageError(
            f"dataset: mixed channel counts: {first_label} has {first[0]}, {label} has "
            f"{shape[0]} (1: greyscale, 3: colour); convert them to one kind"
        )
    raise ImageError(
        f"dataset: mixed image shapes: {first_label} is {first}, {label} is {shape} "
        f"(C, H, W); set data.resolution to bring them to one size"
    )


def read_images(files: ImageFiles, resolution: int | None) -> np.ndarray:
    """All images of `files` in id order, uint8 `[N, C, R, R]` (in this process)."""
    items = []
    with files.reader() as reader:
        for name in files.names:
            label = files.label(name)
            item = image_item(reader.read(name), label, resolution)
            if items:
                check_fits(item.shape, label, items[0].shape, files.label(files.names[0]))
            items.append(item)
    return np.stack(items)
