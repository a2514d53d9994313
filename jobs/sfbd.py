"""Run SFBD end to end: prepare data (unless given), pretrain, then K rounds of
denoise -> refit -> evaluate, driven by a Ray actor that resumes an interrupted run.

    python jobs/sfbd.py --config toy2d
    python jobs/sfbd.py --config fashion-mnist-cpu --run-dir runs/fm --set iterations=2
    ray job submit --working-dir . -- python jobs/sfbd.py --config fashion-mnist-gpu
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import _path  # noqa: F401, E402  (keeps jobs/ from shadowing the sfbd package)

from sfbd.config import load_config, preset_names  # noqa: E402
from sfbd.run import check_resources, prepare_run_dir  # noqa: E402
from sfbd.storage import Location  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--config", required=True, help=f"a preset ({', '.join(preset_names())}) or a YAML file"
    )
    p.add_argument(
        "--data",
        default=None,
        help="prepared data (prepare_data.py): a path or a URI such as s3://bucket/data",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        help="a path or a URI such as s3://bucket/runs/x; default: runs/<config name>",
    )
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
        help="after the run, also train comparison models: noisy, all-clean",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        config = load_config(args.config, args.set)
        unknown = set(filter(None, args.baselines.split(","))) - {"noisy", "all-clean"}
        if unknown:
            raise ValueError(f"--baselines: unknown {sorted(unknown)}; allowed: noisy, all-clean")
        # Resolved here: Ray workers run in another working directory.
        data = Location.of(args.data) if args.data else None
        run_dir = Location.of(args.run_dir or f"runs/{config.name}")
        run_dir.check_writable("run-dir")
        if data is not None and not (data / "manifest.json").is_file():
            raise FileNotFoundError(
                f"data: {data} is not a prepared data directory "
                f"(no manifest.json); run jobs/prepare_data.py first"
            )
    except (ValueError, OSError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2

    import ray

    from sfbd import orchestrator

    ctx = ray.init(address=args.address, namespace="sfbd", ignore_reinit_error=True)
    try:
        check_resources(config, ray.cluster_resources())
        data = prepare_run_dir(config, run_dir, data)
    except (ValueError, OSError) as exc:
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
