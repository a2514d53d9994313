"""Small file helpers shared by the stages: atomic writes and stage completion records."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

COMPLETE = "_COMPLETE.json"


def write_json_atomic(path: Path, obj) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


def is_complete(directory: Path) -> bool:
    return (directory / COMPLETE).is_file()


def publish_dir(tmp: Path, final: Path, record: dict) -> None:
    """Mark `tmp` complete and rename it to `final` (replacing an incomplete leftover)."""
    write_json_atomic(tmp / COMPLETE, record)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)


def fresh_tmp_dir(final: Path) -> Path:
    """An empty `<final>.tmp` directory beside `final` (a leftover from a crash is removed)."""
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    return tmp
