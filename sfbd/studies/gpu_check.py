"""The Python half of `scripts/gpu_check.sh`: the environment check, the copy of the preset
run's small outputs, the end-to-end projection and `summary.json` with every target judged.

    python -m sfbd.studies.gpu_check env OUTDIR --mode-file F [--dry-run]
    python -m sfbd.studies.gpu_check head ADDRESS_FILE        (holds the parts' Ray cluster)
    python -m sfbd.studies.gpu_check collect RUN_DIR OUTDIR/preset
    python -m sfbd.studies.gpu_check summary OUTDIR --parts F --overrides F --preset-wall S

The shell script owns the order, the time budgets and the processes; this module reads and
writes files, checks the environment (`env`) and holds the Ray cluster (`head`).

Targets (`TARGETS`): the Ray Data denoise stage and the Ray Train loop each at >= 0.95x the
plain PyTorch loop on the same allotment (`sfbd.studies.benchmark`), the compiled DDPM++
denoiser at >= 40% of the chip's dense bf16 peak (`BF16_PEAK_TFLOPS`: 989 TFLOP/s for H100 and
H200 SXM), and the fashion-mnist-gpu preset end to end in <= 10 minutes. When the check ran
the preset shrunk (fewer iterations and kimg, to fit its time budget), the end-to-end figure
is projected from the stages it timed: see `project_preset_seconds`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

PRESET = "fashion-mnist-gpu"
# name -> (comparison, target); values are ratios, a fraction of the peak, minutes.
TARGETS: dict[str, tuple[str, float]] = {
    "ray_data_ratio": (">=", 0.95),
    "ray_train_ratio": (">=", 0.95),
    "compiled_ddpmpp_peak_fraction": (">=", 0.40),
    "preset_end_to_end_minutes": ("<=", 10.0),
}
PEAK_SOURCE = (
    "vendor datasheet dense bf16 tensor-core peak (no sparsity), by device name, from "
    "sfbd.studies.benchmark.BF16_PEAK_TFLOPS: H100/H200 SXM 989 TFLOP/s"
)
RUN_FILES = ("metrics.jsonl", "state.json", "config.yaml", "metrics.png")
NEEDED = ("numpy", "pyarrow", "yaml", "PIL")  # beyond torch and Ray, what the run imports
# The evaluate stage imports pytorch-fid (and so torchvision) for every metric: without them
# the benchmark still runs, the preset's evaluations fail.
WANTED = ("torchvision", "pytorch_fid.fid_score")
BUNDLE_HINT = (
    "on the device machine: bash .raybundle/install.sh && export PYTHONPATH=/tmp/site:$PWD"
)


# ---------------------------------------------------------------------------------------------
# Environment


def check_environment(dry_run: bool) -> dict:
    """Versions and the device; raises RuntimeError (one line) when torch, Ray or sfbd is not
    importable. Without a CUDA device the check becomes a dry run (`dry_run_reason`)."""
    info: dict = {"python": platform.python_version(), "executable": sys.executable}
    try:
        import torch
    except ImportError as exc:
        raise RuntimeError(f"torch is not importable ({exc})") from None
    try:
        import ray
    except ImportError as exc:
        raise RuntimeError(f"Ray is not importable ({exc}); {BUNDLE_HINT}") from None
    for module in NEEDED:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            raise RuntimeError(f"{module} is not importable ({exc}); sfbd needs it") from None
    try:
        import sfbd
    except ImportError as exc:
        raise RuntimeError(f"sfbd is not importable ({exc}); run from the project root") from None
    missing = []
    for module in WANTED:
        try:
            importlib.import_module(module)
        except ImportError as exc:
            missing.append(f"{module} ({exc})")
    cuda = torch.cuda.is_available()
    info.update(
        missing=missing,
        torch=torch.__version__,
        torch_cuda=torch.version.cuda,
        ray=ray.__version__,
        sfbd=sfbd.__version__,
        cuda_available=cuda,
        gpus=torch.cuda.device_count() if cuda else 0,
        device=torch.cuda.get_device_name(0) if cuda else None,
        dry_run=dry_run or not cuda,
        dry_run_reason="--dry-run" if dry_run else (None if cuda else "no CUDA device"),
    )
    if cuda:
        from sfbd.studies.benchmark import bf16_peak_tflops

        info["peak_bf16_tflops"] = bf16_peak_tflops(info["device"])
    return info


def environment_line(info: dict) -> str:
    where = f"cuda {info['device']} x{info['gpus']}" if info["cuda_available"] else "no GPU"
    mode = f"dry run ({info['dry_run_reason']})" if info["dry_run"] else "GPU check"
    line = f"python {info['python']}, torch {info['torch']}, ray {info['ray']}, {where}: {mode}"
    if info["missing"]:
        line += f"; warning, not importable: {', '.join(info['missing'])}"
    return line


def hold_cluster(address_file: Path) -> None:
    """Start a local Ray cluster for the check's parts, write its GCS address to
    `address_file` and keep it until SIGTERM (then `ray.shutdown()` ends its processes)."""
    import signal

    import ray

    for attempt in range(3):
        try:
            ctx = ray.init(address="local", include_dashboard=False, namespace="sfbd")
            break
        except Exception as exc:  # Ray gives its raylet 30 s to register, too few on a busy CPU
            if "timed out during startup" not in str(exc) or attempt == 2:
                raise
            print(f"ray start-up attempt {attempt + 1}: {exc}", flush=True)
            ray.shutdown()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    tmp = address_file.with_suffix(".tmp")
    tmp.write_text(ctx.address_info["gcs_address"] + "\n")
    tmp.replace(address_file)
    print(f"ray {ray.__version__}: {ray.cluster_resources()}", flush=True)
    try:
        while True:
            time.sleep(3600)
    finally:
        ray.shutdown()


# ---------------------------------------------------------------------------------------------
# The preset run's outputs


def collect_run(run_dir: Path, dest: Path) -> list[str]:
    """Copy the run's small files (metrics rows, state, config, sample grids) into `dest`;
    the data, checkpoints and denoised sets stay behind. Returns the copied paths."""
    dest.mkdir(parents=True, exist_ok=True)
    copied = []
    for name in RUN_FILES:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, dest / name)
            copied.append(name)
    grids = sorted((run_dir / "grids").glob("*.png")) if (run_dir / "grids").is_dir() else []
    if grids:
        (dest / "grids").mkdir(exist_ok=True)
        for g in grids:
            shutil.copy2(g, dest / "grids" / g.name)
            copied.append(f"grids/{g.name}")
    return copied


def read_rows(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _train_rate(stage: dict) -> float | None:
    rate = stage.get("loop_images_per_s") or stage.get("images_per_s")
    return float(rate) if rate else None


def project_train(stage: dict, kimg: float) -> float | None:
    """Seconds of a train stage at `kimg`: its measured fixed cost (start-up, first step,
    checkpoints: measured seconds less kimg / loop rate) plus `kimg` at its loop rate."""
    rate = _train_rate(stage)
    if rate is None or "seconds" not in stage or "kimg" not in stage:
        return None
    fixed = max(float(stage["seconds"]) - float(stage["kimg"]) * 1000 / rate, 0.0)
    return fixed + kimg * 1000 / rate


def project_preset_seconds(
    completed: dict, wall: float, ran: dict, full: dict
) -> tuple[float | None, str]:
    """The end-to-end seconds of the run as `full` configures it (iterations, pretrain_kimg,
    refit_kimg) from a run of the same data configured as `ran`, which took `wall` seconds and
    recorded `completed` (state.json's stages). Train stages are rescaled by their loop rate;
    each iteration missing from the shorter run costs what the last one it ran cost (denoise,
    rescaled refit, evaluate). Returns (None, why) when the stages needed are missing."""
    if ran == full:
        return wall, "measured: the preset ran as it is"
    k_ran, k_full = ran["iterations"], full["iterations"]
    if not isinstance(k_full, int) or not isinstance(k_ran, int) or k_ran < 1:
        return None, "iterations must be counts (not auto) and the run at least one"
    pretrain = completed.get("pretrain")
    last = k_ran
    stages = [completed.get(f"{kind}_{last:03d}") for kind in ("denoise", "refit", "evaluate")]
    if pretrain is None or any(s is None for s in stages):
        return None, f"the run did not finish pretrain and iteration {last}"
    denoise, refit, evaluate = stages
    total = wall
    p = project_train(pretrain, full["pretrain_kimg"])
    r = project_train(refit, full["refit_kimg"])
    if p is None or r is None:
        return None, "a train stage recorded no rate"
    total += p - float(pretrain["seconds"])
    for i in range(1, k_ran + 1):
        stage = completed.get(f"refit_{i:03d}")
        ri = project_train(stage, full["refit_kimg"]) if stage else None
        if ri is None:
            return None, f"refit_{i:03d} recorded no rate"
        total += ri - float(stage["seconds"])
    total += (k_full - k_ran) * (float(denoise["seconds"]) + r + float(evaluate["seconds"]))
    why = (
        f"projected: ran {k_ran} iteration(s), pretrain {ran['pretrain_kimg']} kimg, refits "
        f"{ran['refit_kimg']} kimg; rescaled to {k_full}, {full['pretrain_kimg']}, "
        f"{full['refit_kimg']} at the measured loop rates"
    )
    return total, why


def _schedule(config) -> dict:
    return {
        "iterations": config.iterations,
        "pretrain_kimg": config.train.pretrain_kimg,
        "refit_kimg": config.train.refit_kimg,
    }


# ---------------------------------------------------------------------------------------------
# The summary


def judge(name: str, value: float | None, note: str | None = None) -> dict:
    """A target's verdict: met / not met, or not measured (value None, with the reason)."""
    compare, target = TARGETS[name]
    row = {"compare": compare, "target": target, "value": value}
    if value is None:
        return {**row, "met": None, "status": "not measured", "note": note}
    met = value >= target if compare == ">=" else value <= target
    return {**row, "met": met, "status": "met" if met else "not met", "note": note}


def read_parts(path: Path) -> dict:
    """Lines `name status seconds budget` (written by the shell script) -> dict."""
    parts = {}
    for line in path.read_text().splitlines():
        name, status, seconds, budget = line.split()
        parts[name] = {"status": status, "seconds": float(seconds), "budget_seconds": int(budget)}
    return parts


def benchmark_section(bench: dict | None) -> tuple[dict | None, dict]:
    """The benchmark's headline figures and its three targets."""
    if bench is None:
        why = "the benchmark produced no result"
        return None, {
            k: judge(k, None, why)
            for k in ("ray_data_ratio", "ray_train_ratio", "compiled_ddpmpp_peak_fraction")
        }
    d, t = bench["denoise"], bench["train"]
    compiled = d.get("plain_compiled") or {}
    peak_target = bench["targets"]["compiled_ddpmpp_peak"]
    section = {
        "file": "benchmark.json",
        "network": bench["preset"],
        "parameters": bench["parameters"],
        "batch_size": bench["batch_size"],
        "nfe_per_image": bench["nfe_per_image"],
        "denoise_images_per_s": {
            "plain_eager": d["plain"]["images_per_s"],
            "plain_compiled": compiled.get("images_per_s"),
            "ray_data": d["ray"]["images_per_s"],
        },
        "denoise_tflops": {
            "plain_eager": d["plain"]["tflops"],
            "plain_compiled": compiled.get("tflops"),
            "ray_data": d["ray"]["tflops"],
        },
        "train_images_per_s": {
            "plain": t["plain"]["images_per_s"],
            "ray_train": t["ray"]["images_per_s"],
        },
        "device": bench["device"],
    }
    peak = bench["device"].get("peak_bf16_tflops")
    targets = {
        "ray_data_ratio": judge(
            "ray_data_ratio",
            d["ratio_ray_over_plain"],
            "Ray Data stage (compiled) over the compiled plain loop, images/s after batch 1",
        ),
        "ray_train_ratio": judge(
            "ray_train_ratio",
            t["ratio_ray_over_plain"],
            "Ray Train loop over the plain training loop, images/s after the first step",
        ),
        "compiled_ddpmpp_peak_fraction": {
            **judge(
                "compiled_ddpmpp_peak_fraction",
                peak_target["value"],
                peak_target.get("note") or "compiled plain loop, bf16 autocast",
            ),
            "peak_bf16_tflops": peak,
            "peak_source": PEAK_SOURCE,
        },
    }
    return section, targets


def preset_section(
    outdir: Path, overrides: list[str], wall: float | None, status: str
) -> tuple[dict, dict]:
    """The preset run's figures (from OUTDIR/preset) and the end-to-end target."""
    from sfbd.config import load_config

    run = outdir / "preset"
    rows = read_rows(run / "metrics.jsonl")
    state = json.loads((run / "state.json").read_text()) if (run / "state.json").is_file() else {}
    completed = state.get("completed", {})
    full = _schedule(load_config(PRESET))
    ran = _schedule(load_config(PRESET, overrides))
    projected, how = None, f"the preset run ended with status {status}"
    if status == "ok" and wall is not None:
        projected, how = project_preset_seconds(completed, wall, ran, full)
    metric = rows[0]["metric"] if rows else None
    section = {
        "name": PRESET,
        "dir": "preset",
        "overrides": overrides,
        "shrunk": ran != full,
        "schedule_ran": ran,
        "schedule_preset": full,
        "finished": bool(state.get("finished")),
        "metrics_rows": len(rows),
        "metric": metric,
        "metric_values": [r.get(metric) for r in rows] if metric else [],
        "noisy_distance": [r.get("noisy_distance") for r in rows],
        "grids": sorted(f"grids/{p.name}" for p in (run / "grids").glob("*.png")),
        "wall_seconds": wall,
        "projected_seconds": projected,
        "projection": how,
        "stage_seconds": {k: v.get("seconds") for k, v in completed.items()},
    }
    value = projected / 60 if projected is not None else None
    target = judge("preset_end_to_end_minutes", value, how)
    return section, {"preset_end_to_end_minutes": target}


def summarize(outdir: Path, parts: dict, overrides: list[str], preset_wall: float | None) -> dict:
    """summary.json's content from the files the parts left in OUTDIR."""
    env_path, bench_path = outdir / "environment.json", outdir / "benchmark.json"
    env = json.loads(env_path.read_text()) if env_path.is_file() else {}
    bench = None
    if parts.get("benchmark", {}).get("status") == "ok" and bench_path.is_file():
        bench = json.loads(bench_path.read_text())
    bench_section, targets = benchmark_section(bench)
    preset_status = parts.get("preset", {}).get("status", "skipped")
    preset, preset_target = preset_section(outdir, overrides, preset_wall, preset_status)
    targets.update(preset_target)
    notes = []
    if preset["shrunk"]:
        notes.append(
            f"the {PRESET} preset as it is does not fit the check's time budget: it ran with "
            f"--set {' --set '.join(o for o in overrides if not o.startswith('data.root='))}; "
            "the end-to-end minutes are projected from its stages"
        )
    notes.append(
        f"evaluation offline: the preset's metric ({preset['metric'] or 'swd'}, sliced "
        "Wasserstein distance on pixels against the Fashion-MNIST test split) needs no download"
    )
    if env.get("dry_run"):
        notes.append(
            "dry run: tiny networks and sizes on the CPU; the figures test the plumbing, not "
            "the targets"
        )
    if os.environ.get("TORCH_COMPILE_DISABLE"):
        notes.append("TORCH_COMPILE_DISABLE is set: the compiled rows ran eagerly")
    return {
        "dry_run": bool(env.get("dry_run", True)),
        "dry_run_reason": env.get("dry_run_reason"),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "environment": env,
        "parts": parts,
        "check_seconds": sum(p["seconds"] for p in parts.values()),
        "benchmark": bench_section,
        "preset": preset,
        "targets": targets,
        "notes": notes,
    }


def benchmark_line(bench: dict) -> str:
    """The benchmark's rates in one line."""
    d, t = bench["denoise"], bench["train"]
    compiled = (d.get("plain_compiled") or {}).get("images_per_s")
    return (
        f"denoise {d['plain']['images_per_s']:.0f} eager / "
        f"{compiled or 0:.0f} compiled / {d['ray']['images_per_s']:.0f} Ray Data images/s "
        f"(Ray/plain {d['ratio_ray_over_plain']:.2f}); train {t['plain']['images_per_s']:.0f} "
        f"plain / {t['ray']['images_per_s']:.0f} Ray Train images/s "
        f"(Ray/plain {t['ratio_ray_over_plain']:.2f})"
    )


def summary_line(summary: dict) -> str:
    def fmt(name: str, t: dict) -> str:
        v = "-" if t["value"] is None else f"{t['value']:.3g}"
        return f"{name} {v} {t['compare']} {t['target']:g}: {t['status']}"

    return "; ".join(fmt(k, t) for k, t in summary["targets"].items())


# ---------------------------------------------------------------------------------------------
# Command line


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m sfbd.studies.gpu_check")
    sub = p.add_subparsers(dest="cmd", required=True)
    e = sub.add_parser("env", help="check python, torch, CUDA, Ray; write environment.json")
    e.add_argument("outdir", type=Path)
    e.add_argument("--dry-run", action="store_true")
    e.add_argument("--mode-file", type=Path, required=True, help="receives 'dry' or 'gpu'")
    c = sub.add_parser("collect", help="copy a run's metrics, state and grids")
    c.add_argument("run_dir", type=Path)
    c.add_argument("dest", type=Path)
    h = sub.add_parser("head", help="hold a local Ray cluster; its address into ADDRESS_FILE")
    h.add_argument("address_file", type=Path)
    b = sub.add_parser("benchmark-line", help="OUTDIR/benchmark.json's rates in one line")
    b.add_argument("outdir", type=Path)
    s = sub.add_parser("summary", help="write OUTDIR/summary.json")
    s.add_argument("outdir", type=Path)
    s.add_argument("--parts", type=Path, required=True, help="lines: name status seconds budget")
    s.add_argument("--overrides", type=Path, required=True, help="the preset's --set values")
    s.add_argument("--preset-wall", type=float, default=None)
    args = p.parse_args(argv)

    if args.cmd == "env":
        t0 = time.time()
        try:
            info = check_environment(args.dry_run)
        except RuntimeError as exc:
            print(f"gpu_check: environment: {exc}", file=sys.stderr)
            return 2
        info["seconds"] = time.time() - t0
        args.outdir.mkdir(parents=True, exist_ok=True)
        (args.outdir / "environment.json").write_text(json.dumps(info, indent=2) + "\n")
        args.mode_file.write_text("dry\n" if info["dry_run"] else "gpu\n")
        print(environment_line(info))
        return 0
    if args.cmd == "head":
        hold_cluster(args.address_file)
        return 0
    if args.cmd == "benchmark-line":
        print(benchmark_line(json.loads((args.outdir / "benchmark.json").read_text())))
        return 0
    if args.cmd == "collect":
        copied = collect_run(args.run_dir, args.dest)
        print(f"{len(copied)} files")
        return 0
    overrides = [o for o in args.overrides.read_text().splitlines() if o.strip()]
    summary = summarize(args.outdir, read_parts(args.parts), overrides, args.preset_wall)
    (args.outdir / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(summary_line(summary))
    return 0


if __name__ == "__main__":
    sys.exit(main())
