"""Reading files that sfbd may not have written: checkpoints, train states, feature networks,
Inception weights, reference statistics and `.npz` data sets. Nothing in them is executed:
torch loads tensors and plain data only (`weights_only=True`), NumPy never unpickles
(`allow_pickle=False`), and a file that is not what it should be is refused with one line
naming it and what was expected.

    payload = torch_load(data, f"checkpoint: {path} is not a readable sfbd checkpoint")
    with open_npz(path, "FID: statistics file s.npz") as z:
        mu, sigma = z["mu"], z["sigma"]
"""

from __future__ import annotations

import contextlib
import io
import os
import pickle
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

_ZIP_MAGIC = b"PK"  # an .npz is a zip archive
_GUARD = threading.Lock()


def reason(exc: BaseException) -> str:
    """One short line saying why a load failed (torch's and numpy's messages run to
    paragraphs, and some advise loading the file unsafely)."""
    text = str(exc)
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if isinstance(exc, pickle.UnpicklingError) and text.startswith("Weights only load failed"):
        skip = ("Please file an issue", "Check the documentation", "In PyTorch", "Re-running")
        detail = [line for line in lines[1:] if not line.startswith(skip)]
        return "holds more than tensors and plain data" + (
            f": {' '.join(detail)}" if detail else ""
        )
    if not lines:
        return type(exc).__name__
    first = lines[0].split(". ")[0].rstrip(".")
    return first if len(first) <= 300 else first[:297] + "..."


def torch_load(src: bytes | str | os.PathLike, what: str, map_location: Any = "cpu") -> Any:
    """`torch.load(..., weights_only=True)`; `ValueError(f"{what} ({reason})")` otherwise.
    `what` is the refusal: e.g. `checkpoint: PATH is not a readable sfbd checkpoint`."""
    import torch

    f = io.BytesIO(src) if isinstance(src, bytes) else src
    try:
        return torch.load(f, map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure is a refusal of the file
        raise ValueError(f"{what} ({reason(exc)})") from exc


class _NoPickle:
    """Stands in for the `pickle` module of code that would unpickle arbitrary objects."""

    @staticmethod
    def loads(*_args, **_kwargs):
        raise pickle.UnpicklingError("pickled Python objects are not loaded")


@contextlib.contextmanager
def weights_only_torch() -> Iterator[None]:
    """Within the block, every `torch.load` is weights-only even where the caller asks
    otherwise (torch.export's loader falls back to full unpickling), and torch.export's
    loader cannot unpickle opaque objects. Serialized: the patch is process-wide."""
    import torch

    unsafe_load = torch.load

    def safe_load(*args, **kwargs):
        kwargs.pop("pickle_module", None)
        return unsafe_load(*args, **{**kwargs, "weights_only": True})

    with _GUARD, contextlib.ExitStack() as stack:
        from unittest import mock

        stack.enter_context(mock.patch.object(torch, "load", safe_load))
        with contextlib.suppress(ImportError):
            from torch.export.pt2_archive import _package

            if hasattr(_package, "pickle"):
                stack.enter_context(mock.patch.object(_package, "pickle", _NoPickle))
        yield


class NpzArrays:
    """The arrays of an open `.npz` file, each read without pickle."""

    def __init__(self, z: Any, what: str):
        self._z, self.what = z, what

    def keys(self) -> list[str]:
        return list(self._z.files)

    def __contains__(self, key: str) -> bool:
        return key in self._z.files

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self._z.files:
            raise ValueError(f"{self.what} has no array {key!r} (it has {self.keys()})")
        try:
            value = self._z[key]
        except ValueError as exc:
            if "allow_pickle" in str(exc):
                raise ValueError(
                    f"{self.what}: array {key!r} holds Python objects (pickled data, never "
                    f"loaded); store plain numeric arrays"
                ) from exc
            raise ValueError(f"{self.what}: array {key!r} is unreadable ({reason(exc)})") from exc
        except (OSError, EOFError, zipfile.BadZipFile) as exc:
            raise ValueError(f"{self.what}: array {key!r} is unreadable ({reason(exc)})") from exc
        if not isinstance(value, np.ndarray):
            raise ValueError(f"{self.what}: {key!r} is not a NumPy array (.npy) in the archive")
        return value


@contextlib.contextmanager
def open_npz(src: bytes | str | os.PathLike, what: str) -> Iterator[NpzArrays]:
    """An `.npz` archive (bytes or a local path) opened with `allow_pickle=False`. `what`
    names the file in errors: `ValueError` when it is not an `.npz` or an array holds
    pickled objects."""
    if isinstance(src, bytes):
        head, f = src[:4], io.BytesIO(src)
    else:
        with open(Path(src), "rb") as fh:
            head = fh.read(4)
        f = Path(src)
    if not head.startswith(_ZIP_MAGIC):
        raise ValueError(f"{what} is not an .npz archive (np.savez / np.savez_compressed)")
    try:
        z = np.load(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as exc:
        raise ValueError(f"{what} is not a readable .npz archive ({reason(exc)})") from exc
    try:
        yield NpzArrays(z, what)
    finally:
        z.close()
