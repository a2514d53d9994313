"""Data sources: every source yields float32 items, images scaled to [-1, 1].

Specs (`--dataset`): `cifar10`, `fashion-mnist`, `mnist`, `folder:PATH`, `zip:PATH`,
`npz:PATH`, `toy2d`. `folder:` takes a local folder or a folder URI (`s3://`, `gs://`, any URI
`sfbd.storage` reads), `zip:` a zip of images such as EDM's `dataset_tool.py` writes (a
`folder:` path ending in .zip is read as one); their images are read by `sfbd.data.images`,
brought to one size by `resolution`. CIFAR-10 and MNIST come through torchvision (downloaded
into `root`, or read from it offline); Fashion-MNIST and MNIST also read the original idx gz
files from a directory, Debian's `dataset-fashion-mnist` among them. `NAME:test` names the
held-out split of those three (`NAME:train` the training split, the default);
`toy2d:rotate=DEG` is the toy ring turned by DEG degrees (a deformed look-alike of the target,
for `data.pretrain`).
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sfbd.data.images import image_files_kind, list_image_files, read_images
from sfbd.storage import Location

DATASETS = (
    "cifar10[:test]",
    "fashion-mnist[:test]",
    "mnist[:test]",
    "folder:PATH",
    "zip:PATH",
    "npz:PATH",
    "toy2d[:rotate=DEG]",
)
NAMED = ("cifar10", "fashion-mnist", "mnist")  # the data sets with a training and a test split
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_ROOT = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "sfbd" / "datasets"


@dataclass
class Source:
    """A loaded data set: `items` float32 `[N, C, H, W]` (images in [-1, 1]) or `[N, D]`."""

    name: str
    items: np.ndarray
    kind: str  # "image" or "vector"

    @property
    def item_shape(self) -> tuple[int, ...]:
        return tuple(self.items.shape[1:])


def check_dataset_spec(spec: str) -> None:
    """Validate a `--dataset` value without loading anything (one-line errors)."""
    name, _, path = spec.partition(":")
    if name in ("folder", "zip") and path:
        where = Location.of(path)  # a local path or a URI
        if not where.exists():
            raise FileNotFoundError(f"dataset: {name} path {path} does not exist")
        if image_files_kind(spec) == "zip" and not where.is_file():
            raise IsADirectoryError(f"dataset: zip path {path} is not a file")
        if image_files_kind(spec) == "folder" and not where.is_dir():
            raise NotADirectoryError(
                f"dataset: folder path {path} is not a directory (a zip of images ends in .zip)"
            )
    elif name in ("folder", "zip", "npz"):
        if not path:
            raise ValueError(f"dataset: {spec!r} needs a path, e.g. {name}:/data/images")
        if not Path(path).exists():
            raise FileNotFoundError(f"dataset: {name} path {path} does not exist")
    elif name in NAMED and path:
        if path not in ("train", "test"):
            raise ValueError(f"dataset: {spec!r}: the split of {name} is train or test")
    elif name == "toy2d" and path:
        _toy_rotation(spec)
    elif spec not in (*NAMED, "toy2d"):
        raise ValueError(f"dataset: unknown dataset {spec!r}; allowed: {', '.join(DATASETS)}")


def _toy_rotation(spec: str) -> float:
    """The angle in degrees of `toy2d:rotate=DEG`."""
    key, _, value = spec.partition(":")[2].partition("=")
    try:
        if key != "rotate":
            raise ValueError
        return float(value)
    except ValueError:
        raise ValueError(f"dataset: {spec!r}; the toy takes toy2d or toy2d:rotate=DEG") from None


def load_source(
    spec: str,
    root: str | os.PathLike | None = None,
    train: bool = True,
    limit: int | None = None,
    num: int = 20000,
    seed: int = 0,
    download: bool = True,
    resolution: int | None = None,
    classes: list[int] | None = None,
) -> Source:
    """Load a data set by spec. `limit` keeps the first items; `num`/`seed` size the toy;
    `resolution` centre-crops the images of a folder or zip to that size (None: their own
    size, which must then be one size); `classes` keeps only the items of those labels (the
    labelled sets: fashion-mnist, mnist, cifar10), before `limit`."""
    check_dataset_spec(spec)
    check_classes(classes, spec)
    if resolution is not None and image_files_kind(spec) is None:
        raise ValueError(f"resolution: {resolution} applies to folder: and zip: images, not {spec}")
    name, _, path = spec.partition(":")
    root = Path(root) if root else None
    if name in NAMED and path:
        train = path == "train"
    if name == "toy2d":
        items = toy2d_sample(num, np.random.default_rng([seed, 2]))
        if path:
            a = np.deg2rad(_toy_rotation(spec))
            turn = np.array([[np.cos(a), np.sin(a)], [-np.sin(a), np.cos(a)]], np.float32)
            items = items @ turn  # row vectors: x @ R^T turns each point by +a
        src = Source(spec, items, "vector")
    elif image_files_kind(spec) is not None:
        files = list_image_files(spec, limit)
        src = Source(spec, _to_unit_range(read_images(files, resolution)), "image")
    elif name == "npz":
        src = _load_npz(Path(path))
    elif name == "fashion-mnist":
        src = Source(name, _load_mnist_family("FashionMNIST", root, train, download), "image")
    elif name == "mnist":
        src = Source(name, _load_mnist_family("MNIST", root, train, download), "image")
    else:
        src = Source(name, _load_cifar10(root, train, download), "image")
    if classes is not None:
        src.items = src.items[np.isin(labels_of(spec, root, train, download), classes)]
    if limit is not None:
        src.items = src.items[:limit]
    _check_finite(src.items, spec)
    if len(src.items) == 0:
        raise ValueError(f"dataset: {spec} holds no items")
    return src


# ---------------------------------------------------------------------------------------------
# The 2-D toy: a ring of eight Gaussians, whose true samples are always at hand.

TOY_RADIUS = 1.0
TOY_STD = 0.08
TOY_MODES = 8


def toy2d_sample(n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` samples of the toy distribution: a ring of 8 Gaussians (radius 1, std 0.08)."""
    k = rng.integers(0, TOY_MODES, size=n)
    angle = 2 * np.pi * k / TOY_MODES
    centers = TOY_RADIUS * np.stack([np.cos(angle), np.sin(angle)], axis=1)
    return (centers + TOY_STD * rng.standard_normal((n, 2))).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Loaders


def _to_unit_range(images_uint8: np.ndarray) -> np.ndarray:
    return images_uint8.astype(np.float32) / 127.5 - 1.0


def _check_finite(items: np.ndarray, what: str) -> None:
    if not np.isfinite(items).all():
        bad = int((~np.isfinite(items)).reshape(len(items), -1).any(axis=1).argmax())
        raise ValueError(f"dataset: {what} has NaN or infinite values (first at item {bad})")


def _read_idx_file(path: Path, magic: int, what: str) -> tuple[bytes, int]:
    """The raw bytes of an idx file (gz or plain) and its item count, after the magic check."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    found, n = struct.unpack(">II", data[:8])
    if found != magic:
        raise ValueError(f"dataset: {path} is not an idx {what} file (magic {found})")
    return data, n


def _read_idx(path: Path) -> np.ndarray:
    data, n = _read_idx_file(path, 2051, "image")
    rows, cols = struct.unpack(">II", data[8:16])
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, 1, rows, cols)


NUM_CLASSES = 10  # fashion-mnist, mnist and cifar10 alike


def check_classes(classes, spec: str) -> None:
    """A class list: distinct labels 0-9 of a labelled data set (one-line errors)."""
    if classes is None:
        return
    if spec.partition(":")[0] not in NAMED:
        raise ValueError(f"classes apply to the labelled data sets {', '.join(NAMED)}, not {spec}")
    ok = isinstance(classes, (list, tuple)) and len(classes) > 0
    ok = ok and all(isinstance(c, int) and not isinstance(c, bool) for c in classes)
    if not ok or len(set(classes)) != len(classes) or not set(classes) <= set(range(NUM_CLASSES)):
        raise ValueError(
            f"classes: {classes!r}; must be a list of distinct labels 0-{NUM_CLASSES - 1}"
        )


def labels_of(
    spec: str, root: str | os.PathLike | None = None, train: bool = True, download: bool = True
) -> np.ndarray:
    """The int64 labels of a labelled data set's split (`NAME:test` picks the test split)."""
    name, _, split = spec.partition(":")
    train = split != "test" if split else train
    if name == "cifar10":
        import torchvision

        root = Path(root) if root else DEFAULT_ROOT
        ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
        return np.asarray(ds.targets, dtype=np.int64)
    return load_labelled(name, root, train)[1]


def _read_idx_labels(path: Path) -> np.ndarray:
    data, _ = _read_idx_file(path, 2049, "label")
    return np.frombuffer(data, dtype=np.uint8, offset=8).astype(np.int64)


def load_labelled(
    name: str, root: str | os.PathLike | None = None, train: bool = True
) -> tuple[np.ndarray, np.ndarray]:
    """(images in [-1, 1], int64 labels) of fashion-mnist or mnist, for feature networks."""
    if name not in ("fashion-mnist", "mnist"):
        raise ValueError(f"dataset: labelled data sets are fashion-mnist and mnist, not {name!r}")
    tv_name = "FashionMNIST" if name == "fashion-mnist" else "MNIST"
    images = _load_mnist_family(tv_name, Path(root) if root else None, train, True)
    stem = "train-labels-idx1-ubyte" if train else "t10k-labels-idx1-ubyte"
    dirs = [Path(root), Path(root) / tv_name / "raw"] if root else []
    if tv_name == "FashionMNIST":
        dirs.append(DEBIAN_FASHION_MNIST)
    dirs.append(DEFAULT_ROOT / tv_name / "raw")
    for d in dirs:
        for f in (d / (stem + ".gz"), d / stem):
            if f.is_file():
                return images, _read_idx_labels(f)
    raise FileNotFoundError(f"dataset: {stem}(.gz) for {name} not found in {dirs}")


def _find_idx(directory: Path, train: bool) -> Path | None:
    stem = "train-images-idx3-ubyte" if train else "t10k-images-idx3-ubyte"
    for name in (stem + ".gz", stem):
        if (directory / name).is_file():
            return directory / name
    return None


def _load_mnist_family(tv_name: str, root: Path | None, train: bool, download: bool):
    """idx files from `root` (or torchvision's layout under it, or Debian's copy)."""
    candidates = []
    if root is not None:
        candidates += [root, root / tv_name / "raw"]
    if tv_name == "FashionMNIST":
        candidates.append(DEBIAN_FASHION_MNIST)
    for directory in candidates:
        found = _find_idx(directory, train)
        if found is not None:
            return _to_unit_range(_read_idx(found))
    import torchvision  # the online path: torchvision downloads into root

    root = root or DEFAULT_ROOT
    cls = getattr(torchvision.datasets, tv_name)
    try:
        ds = cls(str(root), train=train, download=download)
    except Exception as exc:
        raise FileNotFoundError(
            f"dataset: {tv_name} not found under {root} and could not be downloaded ({exc}); "
            f"put the idx files (train-images-idx3-ubyte.gz) in a directory and pass it as root"
        ) from exc
    return _to_unit_range(ds.data.numpy()[:, None])


def _load_cifar10(root: Path | None, train: bool, download: bool) -> np.ndarray:
    import torchvision

    root = root or DEFAULT_ROOT
    try:
        ds = torchvision.datasets.CIFAR10(str(root), train=train, download=download)
    except Exception as exc:
        raise FileNotFoundError(
            f"dataset: CIFAR-10 not found under {root} and could not be downloaded ({exc}); "
            f"place cifar-10-python.tar.gz or cifar-10-batches-py/ there and pass it as root"
        ) from exc
    return _to_unit_range(np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2)))


def _load_npz(path: Path) -> Source:
    from sfbd.safeload import open_npz

    with open_npz(path, f"dataset: {path}") as z:  # never unpickled: object arrays refused
        keys = z.keys()
        key = "images" if "images" in keys else ("x" if "x" in keys else None)
        if key is None:
            if len(keys) != 1:
                raise ValueError(f"dataset: {path} has keys {keys}; name the array 'images'")
            key = keys[0]
        arr = z[key]
    if arr.ndim not in (2, 4):
        raise ValueError(
            f"dataset: {path}[{key}] has shape {arr.shape}; allowed: [N, C, H, W] or [N, D]"
        )
    if arr.dtype == np.uint8:
        items = _to_unit_range(arr)
    elif np.issubdtype(arr.dtype, np.floating):
        items = arr.astype(np.float32)
        _check_finite(items, f"npz {path}")
        if arr.ndim == 4 and (items.min() < -1.0 - 1e-6 or items.max() > 1.0 + 1e-6):
            raise ValueError(
                f"dataset: {path}[{key}] float images must lie in [-1, 1] "
                f"(found [{items.min():.3g}, {items.max():.3g}]); or store uint8"
            )
    else:
        raise ValueError(f"dataset: {path}[{key}] has dtype {arr.dtype}; use uint8 or float")
    if arr.ndim == 4 and arr.shape[1] not in (1, 3):
        raise ValueError(f"dataset: {path}[{key}] has {arr.shape[1]} channels; use 1 or 3")
    return Source(f"npz:{path}", items, "image" if arr.ndim == 4 else "vector")
