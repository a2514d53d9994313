"""Where run directories and prepared data live: a local path, a shared file system mounted
on every node, or a URI that pyarrow understands (`s3://`, `gs://`, `abfs://`, `hdfs://`,
`file://`) or, failing that, fsspec (`memory://`, `az://`, ...).

A `Location` is a path on one of those file systems. Every read and write of the pipeline goes
through it, so a local run and an `s3://` run take the same code path. Between processes a
location travels as its string (`str(loc)`) and is resolved again on the other side, where
that node's credentials apply.

Writes of single files are atomic: on a local file system a temporary name is renamed into
place; object stores make a completed upload visible at once. Folders that a stage fills are
marked complete by a record written last (see `sfbd.runfiles`), which works on both.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa
import pyarrow.fs as pafs


def is_uri(where: str | os.PathLike) -> bool:
    return "://" in str(where)


def _resolve(uri: str) -> tuple[pafs.FileSystem, str]:
    try:
        return pafs.FileSystem.from_uri(uri)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        try:
            import fsspec.core
        except ImportError:  # pragma: no cover - fsspec ships with Ray Data
            raise ValueError(f"storage: {uri}: unsupported URI ({exc})") from exc
        try:
            fs, path = fsspec.core.url_to_fs(uri)
        except (ImportError, ValueError) as exc2:
            raise ValueError(f"storage: {uri}: unsupported URI ({exc2})") from exc2
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


@dataclass(frozen=True)
class Location:
    """A file or folder: `uri` names it for people and other processes, `fs` + `path` do I/O."""

    uri: str
    fs: pafs.FileSystem
    path: str

    @staticmethod
    def of(where: str | os.PathLike | Location) -> Location:
        if isinstance(where, Location):
            return where
        text = str(where)
        if is_uri(text):
            fs, path = _resolve(text)
            return Location(text.rstrip("/") or text, fs, path.rstrip("/") or path)
        path = str(Path(text).expanduser().resolve())
        return Location(path, pafs.LocalFileSystem(), path)

    def __str__(self) -> str:
        return self.uri

    def __truediv__(self, name: str) -> Location:
        if self.local is not None and not is_uri(self.uri):
            uri = str(Path(self.uri) / name)
        else:
            uri = f"{self.uri}/{name}"
        return Location(uri, self.fs, posixpath.join(self.path, name))

    @property
    def name(self) -> str:
        return posixpath.basename(self.path)

    @property
    def parent(self) -> Location:
        uri = self.uri.rsplit("/", 1)[0] if "/" in self.uri else self.uri
        return Location(uri, self.fs, posixpath.dirname(self.path))

    def with_suffix_name(self, suffix: str) -> Location:
        """The sibling named `<name><suffix>` (e.g. `iter_001.tmp`)."""
        return self.parent / (self.name + suffix)

    @property
    def local(self) -> Path | None:
        """The local path when this is on the local file system (a shared mount counts)."""
        if isinstance(self.fs, pafs.LocalFileSystem):
            return Path(self.path)
        return None

    # -- queries --------------------------------------------------------------------------------

    def _type(self) -> pafs.FileType:
        return self.fs.get_file_info(self.path).type

    def exists(self) -> bool:
        return self._type() != pafs.FileType.NotFound

    def is_file(self) -> bool:
        return self._type() == pafs.FileType.File

    def is_dir(self) -> bool:
        return self._type() == pafs.FileType.Directory

    def children(self, suffix: str = "") -> list[Location]:
        """The entries directly inside this folder whose names end in `suffix`, by name."""
        if not self.is_dir():
            return []
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=False))
        names = sorted(posixpath.basename(i.path) for i in infos)
        return [self / n for n in names if n.endswith(suffix)]

    # -- reading ------------------------------------------------------------------------------

    def read_bytes(self) -> bytes:
        try:
            with self.fs.open_input_stream(self.path) as f:
                return f.read()
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"{self.uri} does not exist") from exc

    def read_text(self) -> str:
        return self.read_bytes().decode()

    def sha256(self) -> str:
        h = hashlib.sha256()
        with self.fs.open_input_stream(self.path) as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
        return h.hexdigest()

    # -- writing ------------------------------------------------------------------------------

    def mkdir(self) -> None:
        try:
            self.fs.create_dir(self.path, recursive=True)
        except OSError as exc:
            raise OSError(f"storage: cannot create {self.uri}: {_reason(exc)}") from exc

    def write_bytes(self, data: bytes) -> None:
        """Write the whole file at once; readers see the old content or the new, never half."""
        target = self
        if self.local is not None:
            target = self.with_suffix_name(".tmp")
        try:
            self.parent.mkdir()
            with self.fs.open_output_stream(target.path) as f:
                f.write(data)
            if target is not self:
                self.fs.move(target.path, self.path)
        except OSError as exc:
            if target is not self:
                _quietly(lambda: self.fs.delete_file(target.path))
            raise OSError(f"storage: cannot write {self.uri}: {_reason(exc)}") from exc

    def write_text(self, text: str) -> None:
        self.write_bytes(text.encode())

    def remove(self) -> None:
        """Delete the file or folder (with its content) if it exists."""
        kind = self._type()
        if kind == pafs.FileType.Directory:
            self.fs.delete_dir(self.path)
        elif kind == pafs.FileType.File:
            self.fs.delete_file(self.path)

    def move_to(self, dest: Location) -> None:
        self.fs.move(self.path, dest.path)

    def check_writable(self, what: str) -> None:
        """Fail at once, naming `what`, when nothing can be written here; leaves no trace
        (folders it had to create for the test are removed again)."""
        top = self  # the outermost folder that does not exist yet
        while not top.parent.exists() and top.parent.path != top.path:
            top = top.parent
        created = not self.exists()
        probe = self / f".write-test-{uuid.uuid4().hex[:8]}"
        try:
            self.mkdir()
            probe.write_bytes(b"ok")
            probe.remove()
        except OSError as exc:
            raise OSError(f"{what}: {self.uri} is not writable: {_reason(exc)}") from exc
        finally:
            if created:
                _quietly(top.remove)


Where = str | os.PathLike | Location


def _reason(exc: BaseException) -> str:
    """The last line of an OSError's message without our own prefixes: 'No space left...'."""
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    text = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
    return text.split(": ")[-1] if text.startswith("storage:") else text


def _quietly(fn) -> None:
    try:
        fn()
    except OSError:
        pass
