"""TensorBoard events of a run (`RUN/tensorboard/`, see `sfbd.rundir.RunDir.tensorboard`).

Each writing process (the orchestrator; rank 0 of every train stage) opens its own event file
there, with a name no other process or restart can repeat, so a resumed run adds files rather
than rewriting old ones; TensorBoard merges every file of a folder. Scalars:

    train/loss, train/images_per_s   every `train.log_kimg`, step = images trained in the run
                                     so far (pretraining, then each refit after it)
    eval/<field>                     every number of a metrics.jsonl row, step = iteration
    grids/<what>                     the evaluation's pictures (samples, denoised, ...)

The event files are written with tensorboardX's record writer. On the local file system (a
shared mount counts) they go straight into the folder; for a URI (`s3://...`) they are written
to a local temporary folder and each one is copied whole to the run directory at every
`flush`.
"""

from __future__ import annotations

import io
import os
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from sfbd.storage import Location, Where


def flat_numbers(row: dict, prefix: str = "") -> Iterator[tuple[str, float]]:
    """(`a/b`, value) for every number in a nested dict, booleans and strings left out."""
    for key, value in row.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            yield from flat_numbers(value, name + "/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield name, float(value)


class EventLog:
    """One event file in a run's TensorBoard folder `where` (a path or a URI). Writes are
    synchronous (tensorboardX's record writer, without SummaryWriter's background queue), so
    after `flush` the file holds every event."""

    def __init__(self, where: Where, who: str):
        from tensorboardX.event_file_writer import EventsWriter

        self.target = Location.of(where)
        self._tmp = None
        if self.target.local is not None:
            self.target.mkdir()
            self.folder = self.target.local
        else:
            self._tmp = tempfile.TemporaryDirectory(prefix="sfbd-tb-")
            self.folder = Path(self._tmp.name)
        # tensorboardX names files by second and host only: two writers (or a restart) in the
        # same second would share a name, so the process and a random tag go in too.
        suffix = f".{who}.{os.getpid()}.{uuid.uuid4().hex[:6]}"
        self._writer = EventsWriter(str(self.folder / "events"), suffix)

    def _add(self, summary, step: int) -> None:
        from tensorboardX.proto.event_pb2 import Event

        self._writer.write_event(Event(wall_time=time.time(), step=int(step), summary=summary))

    def scalar(self, tag: str, value: float, step: int) -> None:
        from tensorboardX.summary import scalar

        self._add(scalar(tag, float(value)), step)

    def scalars(self, row: dict, step: int, prefix: str) -> None:
        """Every number of `row` (nested keys joined by `/`) under `prefix/`."""
        for name, value in flat_numbers(row):
            self.scalar(f"{prefix}/{name}", value, step)

    def image_file(self, tag: str, png: Location, step: int) -> bool:
        """A PNG file as an image; False when there is no such file."""
        if not png.is_file():
            return False
        from PIL import Image
        from tensorboardX.summary import image

        pixels = np.asarray(Image.open(io.BytesIO(png.read_bytes())).convert("RGB"))
        self._add(image(tag, pixels, dataformats="HWC"), step)
        return True

    def flush(self) -> None:
        """Everything written so far on disk, and for a URI copied to the run directory."""
        self._writer.flush()
        self._copy()

    def close(self) -> None:
        self._writer.close()
        self._copy()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def _copy(self) -> None:
        if self._tmp is not None:
            for f in self.folder.iterdir():
                (self.target / f.name).write_bytes(f.read_bytes())


def read_events(where: Where) -> list:
    """Every event (`tensorboardX.proto.event_pb2.Event`) of every event file in a folder
    and its subfolders, file by file in name order. Reads the TFRecord framing itself
    (tensorboardX has no reader): per record an 8-byte length, its 4-byte CRC, the data, the
    data's 4-byte CRC. A file's cut-off last record is skipped, as TensorBoard does; a wrong
    CRC is an error."""
    import struct

    from tensorboardX.proto.event_pb2 import Event
    from tensorboardX.record_writer import masked_crc32c as masked

    events = []
    for f in Location.of(where).children():
        if f.is_dir():
            events += read_events(f)
            continue
        if ".tfevents." not in f.name:
            continue
        data, pos = f.read_bytes(), 0
        while pos + 12 <= len(data):
            header = data[pos : pos + 8]
            (length,) = struct.unpack("<Q", header)
            (header_crc,) = struct.unpack("<I", data[pos + 8 : pos + 12])
            body = data[pos + 12 : pos + 12 + length]
            tail = data[pos + 12 + length : pos + 16 + length]
            if header_crc == masked(header) and len(tail) < 4:
                break  # the last record was being written (or cut short by a crash)
            if header_crc != masked(header) or tail != _crc_bytes(masked(body)):
                raise ValueError(f"tensorboard: {f} is damaged at byte {pos}")
            event = Event()
            event.ParseFromString(body)
            events.append(event)
            pos += 16 + length
    return events


def _crc_bytes(crc: int) -> bytes:
    import struct

    return struct.pack("<I", crc)


def read_scalars(where: Where) -> dict[str, list[tuple[int, float]]]:
    """The scalars of a TensorBoard folder: per tag its (step, value) pairs in written order."""
    out: dict[str, list[tuple[int, float]]] = {}
    for event in read_events(where):
        for value in event.summary.value:
            if value.HasField("simple_value"):
                out.setdefault(value.tag, []).append((event.step, value.simple_value))
    return out


def image_tags(where: Where) -> dict[str, list[int]]:
    """The images of a TensorBoard folder: per tag the steps that have one."""
    out: dict[str, list[int]] = {}
    for event in read_events(where):
        for value in event.summary.value:
            if value.HasField("image"):
                out.setdefault(value.tag, []).append(event.step)
    return out
