"""Run SFBD end to end: prepare data (unless given), pretrain, then K rounds of
denoise -> refit -> evaluate, driven by a Ray actor that resumes an interrupted run.

    python jobs/sfbd.py --config toy2d
    python jobs/sfbd.py --config fashion-mnist-cpu --run-dir runs/fm --set iterations=2
    ray job submit --working-dir . -- python jobs/sfbd.py --config fashion-mnist-gpu
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import time
from pathlib import Path

import _path  # noqa: F401, E402  (keeps jobs/ from shadowing the sfbd package)

from sfbd.config import SFBDConfig, dump_config, load_config, preset_names  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config", required=True, help=f"a preset ({', '.join(preset_names())}) or a YAML file"
    )
    p.add_argument("--data", default=None, help="a prepared data directory (prepare_data.py)")
    p.add_argument("--run-dir", default=None, help="default: runs/<config name>")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, e.g. --set train.lr=2e-4 (repeatable)",
    )
    p.add_argument("--address", default=None, help="Ray address; default: RAY_ADDRESS or local")
    p.add_argument(
        "--baselines",
        default="",
        help="after the run, also train comparison models: noisy, all-clean (toy)",
    )
    return p.parse_args(argv)


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


def prepare_run_dir(config: SFBDConfig, run_dir: Path, data: Path | None) -> Path:
    """Resolve the data and the network shape, and write (or check) config.yaml."""
    from sfbd.data.prepare import PrepareConfig, prepare
    from sfbd.data.store import read_manifest, verify_split
    from sfbd.orchestrator import CONFIG

    if data is None:
        data = run_dir / "data"
        prepare(
            PrepareConfig(**dataclasses.asdict(config.data), out=str(data)),
            log=lambda m: print(f"[sfbd] {m}", flush=True),
        )
    manifest = read_manifest(data)
    verify_split(data)
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
        raise ValueError(
            f"run-dir: {run_dir} holds a run with a different config.yaml; "
            f"use another --run-dir (or the same settings to resume)"
        )
    path.write_text(text)
    return data


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        unknown = set(filter(None, args.baselines.split(","))) - {"noisy", "all-clean"}
        if unknown:
            raise ValueError(f"--baselines: unknown {sorted(unknown)}; allowed: noisy, all-clean")
        data = Path(args.data).resolve() if args.data else None
        if data is not None and not (data / "manifest.json").is_file():
            raise FileNotFoundError(
                f"data: {data} is not a prepared data directory "
                f"(no manifest.json); run jobs/prepare_data.py first"
            )
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import ray

    from sfbd import orchestrator

    ctx = ray.init(address=args.address, namespace="sfbd", ignore_reinit_error=True)
    try:
        check_resources(config, ray.cluster_resources())
        run_dir = Path(args.run_dir or f"runs/{config.name}").resolve()  # workers' cwd differs
        run_dir.mkdir(parents=True, exist_ok=True)
        data = prepare_run_dir(config, run_dir, data)
    except (ValueError, FileNotFoundError, FileExistsError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    t0 = time.time()
    print(
        f"[sfbd] run {run_dir} ({config.name}): {config.iterations} iterations; "
        f"dashboard: {ctx.dashboard_url or 'not running'}",
        flush=True,
    )
    actor = orchestrator.start(run_dir, data)
    try:
        summary = ray.get(actor.run.remote())
    except Exception as exc:  # a stage failed: say which, exit non-zero
        state = orchestrator.read_state(run_dir)
        lines = [line for line in str(exc).splitlines() if line.strip()]
        print(
            f"error: stage {state.get('current')} failed: {lines[-1] if lines else exc!r} "
            f"(rerun the same command to resume)",
            file=sys.stderr,
        )
        return 1
    print(f"[sfbd] finished in {time.time() - t0:.1f}s; run directory {run_dir}")
    for row in summary["metrics"]:
        print(json.dumps({k: row[k] for k in ("iteration", row["metric"], "train_loss")}))
    for kind in filter(None, args.baselines.split(",")):
        from sfbd.baselines import run_baseline

        try:
            row = run_baseline(kind.strip(), run_dir, data, config)
        except ValueError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        print(json.dumps({k: row[k] for k in ("baseline", row["metric"], "train_loss")}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
