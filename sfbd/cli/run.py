"""Run SFBD end to end: prepare data (unless given), pretrain, then K rounds of
denoise -> refit -> evaluate, driven by a Ray actor that resumes an interrupted run.

    sfbd run --config toy2d
    sfbd run --config fashion-mnist-cpu --run-dir runs/fm --set iterations=2
    ray job submit --working-dir . -- python jobs/sfbd.py --config fashion-mnist-gpu
    ray job submit --working-dir . -- python jobs/sfbd.py     (GPU preset if the cluster has GPUs)
"""

from __future__ import annotations

import argparse
import json

from sfbd.cli.common import add_address, add_config
from sfbd.config import SFBDConfig
from sfbd.defaults import CPU_PRESET, GPU_PRESET
from sfbd.rundir import RunDir


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(
        p,
        required=False,
        default=f"{GPU_PRESET} when the Ray cluster has GPUs, else {CPU_PRESET}",
    )
    p.add_argument(
        "--data",
        default=None,
        help="prepared data (sfbd prepare): a path or a URI such as s3://bucket/data",
    )
    p.add_argument(
        "--run-dir",
        default=None,
        help="a path or a URI such as s3://bucket/runs/x; default: $SFBD_STORAGE/<config "
        "name> when SFBD_STORAGE is set, else runs/<config name> (in a Ray job's temporary "
        "working directory: ~/sfbd/runs/<config name>)",
    )
    add_address(p)
    p.add_argument(
        "--baselines",
        default=None,
        help="after the run, also train comparison models for its whole budget: noisy, clean-only "
        "(pretraining continued), all-clean; none for none (default: the config's baselines)",
    )


def main(args: argparse.Namespace) -> int:
    from sfbd.run import fit

    baselines = None
    if args.baselines is not None:
        baselines = [b.strip() for b in args.baselines.split(",") if b.strip() not in ("", "none")]
    summary = fit(
        args.config,
        args.run_dir,
        overrides=args.set,
        data=args.data,
        address=args.address,
        baselines=baselines,
    )
    for row in summary["metrics"]:
        print(json.dumps({k: row[k] for k in ("iteration", row["metric"], "train_loss")}))
    if summary.get("best"):
        print(json.dumps({"best": summary["best"]}))
    for kind, row in summary["baselines"].items():
        print(
            json.dumps(
                {
                    "baseline": kind,
                    row["metric"]: row[row["metric"]],
                    "train_loss": row["train_loss"],
                }
            )
        )
    config = RunDir(summary["run_dir"]).read_config()
    print("\n".join(outcome_lines(summary, config)), flush=True)
    return 0


BASELINE_NOTES = {
    "clean-only": "the clean set alone for SFBD's whole budget",
    "all-clean": "every original item, for reference",
    "noisy": "the noisy set as if clean",
}


def outcome_lines(summary: dict, config: SFBDConfig) -> list[str]:
    """What the run got, for a person: the distance after pretraining and every iteration,
    the kept iteration (best.pt), the baselines beside them, and with a pretraining set that
    lacks some classes, the share of samples the classifier puts in those classes."""
    rows = summary["metrics"]
    if not rows:
        return []
    metric, t = rows[0]["metric"], config.train
    missing = config.data.classes_pretraining_lacks()

    def line(label: str, kimg: float | None, row: dict) -> str:
        text = f"  {label:<24} {'' if kimg is None else f'{kimg:g} kimg':>9}  "
        text += f"{metric} {row[metric]:8.1f}"
        if row.get("kid") is not None:
            text += f"  kid {row['kid']:6.1f}"
        if missing and row.get("class_shares"):
            share = sum(row["class_shares"][c] for c in missing)
            text += f"  in classes pretraining lacks {100 * share:4.1f}%"
        return text

    net = f", {config.eval.feature_net} features" if metric == "fd" else ""
    out = [
        "",
        f"what this run got ({metric}, lower is better; "
        f"{rows[0].get('num_samples', '?')} samples{net}):",
    ]
    for r in rows:
        k = r["iteration"]
        label = "pretraining" if k == 0 else f"iteration {k}"
        out.append(line(label, t.pretrain_kimg + k * t.refit_kimg, r))
    best = summary.get("best")
    if best is not None:
        kept = next(r for r in rows if r["iteration"] == best["iteration"])
        out.append(line(f"kept: iteration {best['iteration']}", None, kept) + "  (best.pt)")
    for kind, row in summary["baselines"].items():
        out.append(line(kind, row.get("kimg"), row) + f"  ({BASELINE_NOTES[kind]})")
    if missing:
        out.append(f"  (classes the pretraining set lacks: {', '.join(map(str, missing))})")
    return out
