"""What a bare `sfbd run` (no `--config`, no `--run-dir`) picks, as pure functions of what they
read: the preset from the cluster's resources, and a durable run directory.

The run directory, in order:

1. `$SFBD_STORAGE/<config name>` when `SFBD_STORAGE` is set (a path or a URI);
2. (Ray 2.60 has no cluster-wide storage setting to ask: `ray.init(storage=...)` was removed
   in Ray 2.48, and `RAY_STORAGE` is only read by the deprecated Ray Train v1 `RunConfig`;)
3. `$HOME/sfbd/runs/<config name>` when the process runs inside a Ray job's copy of its
   `--working-dir` (`.../runtime_resources/working_dir_files/...`), which Ray deletes once no
   job uses it;
4. else `runs/<config name>` under the current directory, made absolute.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

GPU_PRESET = "fashion-mnist-gpu"
CPU_PRESET = "fashion-mnist-cpu"
BARE_PRESETS = (CPU_PRESET, GPU_PRESET)
STORAGE_ENV = "SFBD_STORAGE"


def default_preset(resources: Mapping[str, float]) -> tuple[str, str]:
    """The preset for a bare run on a cluster with `resources` (`ray.cluster_resources()`),
    and why, in words."""
    gpus = float(resources.get("GPU", 0) or 0)
    if gpus > 0:
        return GPU_PRESET, f"the cluster has {gpus:g} GPU(s)"
    return CPU_PRESET, "the cluster has no GPU"


def working_dir_copy(cwd: str | os.PathLike) -> Path | None:
    """The root of Ray's copy of a job's `--working-dir` that holds `cwd`, else None."""
    parts = Path(cwd).parts
    for i in range(len(parts) - 2):
        if parts[i] == "runtime_resources" and parts[i + 1] == "working_dir_files":
            return Path(*parts[: i + 3])
    return None


@dataclass(frozen=True)
class DefaultRunDir:
    """A default run directory: `where` (an absolute path or a URI) and `why` (for the log)."""

    where: str
    why: str


def default_run_dir(
    name: str,
    env: Mapping[str, str] | None = None,
    cwd: str | os.PathLike | None = None,
    home: str | os.PathLike | None = None,
) -> DefaultRunDir:
    """Where a run of config `name` goes when no run directory is given (see the module's
    docstring). `env`, `cwd` and `home` default to the process's own."""
    from sfbd.storage import is_uri  # pyarrow: not at `sfbd --help` time

    env = os.environ if env is None else env
    cwd = Path(os.getcwd() if cwd is None else cwd).absolute()
    home = Path(os.path.expanduser("~") if home is None else home)
    copy = working_dir_copy(cwd)

    storage = env.get(STORAGE_ENV, "").strip()
    if storage:
        if is_uri(storage):
            return DefaultRunDir(f"{storage.rstrip('/')}/{name}", f"{STORAGE_ENV}={storage}")
        root = Path(storage).expanduser()
        if not root.is_absolute():
            if copy is not None:
                raise ValueError(
                    f"{STORAGE_ENV}: {storage!r} is relative, and this Ray job runs in a "
                    f"temporary copy of its working directory ({copy}); give an absolute "
                    f"path or a URI"
                )
            root = cwd / root
        return DefaultRunDir(str(root / name), f"{STORAGE_ENV}={storage}")

    if copy is not None:
        return DefaultRunDir(
            str(home / "sfbd" / "runs" / name),
            f"a Ray job's working directory is a temporary copy ({copy}); "
            f"set {STORAGE_ENV} or --run-dir for shared storage",
        )
    return DefaultRunDir(str(cwd / "runs" / name), "runs/<config name> under the current directory")
