"""Setting up a run directory and checking a config against the cluster (shared by
`jobs/sfbd.py` and the Tune sweep)."""

from __future__ import annotations

import dataclasses

import yaml

from sfbd.config import SFBDConfig, dump_config, from_dict
from sfbd.storage import Location, Where


def check_resources(config: SFBDConfig, resources: dict) -> None:
    """Fail before any work when the cluster cannot hold what the config asks for."""
    cpus, gpus = resources.get("CPU", 0), resources.get("GPU", 0)
    t = config.train
    if t.use_gpu and gpus < max(t.num_workers, 1):
        raise ValueError(
            f"config: train.use_gpu with train.num_workers = {t.num_workers} needs "
            f"{max(t.num_workers, 1)} GPU(s); the cluster has {gpus:g}"
        )
    if t.num_workers * t.cpus_per_worker > cpus:
        raise ValueError(
            f"config: train.num_workers * train.cpus_per_worker = "
            f"{t.num_workers * t.cpus_per_worker:g} CPUs; the cluster has {cpus:g}"
        )
    if config.denoise.cpus_per_actor > cpus:
        raise ValueError(
            f"config: denoise.cpus_per_actor = {config.denoise.cpus_per_actor:g}; "
            f"the cluster has {cpus:g} CPUs"
        )


def prepare_run_dir(config: SFBDConfig, run_dir: Where, data: Where | None) -> Location:
    """Check that the run directory is writable, resolve the data and the network shape, and
    write (or check) config.yaml. Returns the data's location."""
    from sfbd.data.prepare import PrepareConfig, prepare
    from sfbd.data.store import read_manifest, verify_split
    from sfbd.orchestrator import CONFIG

    run_dir = Location.of(run_dir)
    run_dir.check_writable("run-dir")
    if data is None:
        data = run_dir / "data"
        prepare(
            PrepareConfig(**dataclasses.asdict(config.data), out=str(data)),
            log=lambda m: print(f"[sfbd] {m}", flush=True),
        )
    data = Location.of(data)
    manifest = read_manifest(data)
    verify_split(data)
    if config.eval.reference == "test" and manifest["source"] not in (
        "cifar10",
        "fashion-mnist",
        "mnist",
    ):
        raise ValueError(
            f"config: eval.reference = test, but the data ({manifest['source']}) "
            f"has no held-out split; use clean or npz:PATH"
        )
    shape = manifest["item_shape"]
    config.network.channels = shape[0]
    if len(shape) == 3:
        if shape[1] != shape[2]:
            raise ValueError(f"data: {data} holds {shape[1]}x{shape[2]} images; need square ones")
        config.network.resolution = shape[1]
    elif config.network.preset != "mlp":
        raise ValueError(
            f"config: network.preset = {config.network.preset!r} cannot model "
            f"vectors of shape {shape}; use mlp"
        )
    config.network.validate()
    text = dump_config(config)
    path = run_dir / CONFIG
    if path.is_file() and path.read_text() != text:
        # Compared as configs, not text: keys added since the run began take their defaults.
        try:
            same = from_dict(SFBDConfig, yaml.safe_load(path.read_text())) == config
        except ValueError:
            same = False
        if not same:
            raise ValueError(
                f"run-dir: {run_dir} holds a run with a different config.yaml; "
                f"use another --run-dir (or the same settings to resume)"
            )
    path.write_text(text)
    return data
