"""The `--plan` flags of `sfbd benchmark`: the scale plan (sfbd.studies.scale_plan), printed
after the benchmark from the rates it measured, or without measuring from the recorded H200
anchors (`--plan-rates h200`) or given rates (`--plan-denoise-tflops`, `--plan-train-tflops`)."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from sfbd.studies.scale_inputs import PlanOptions

PLAN_FLAGS = (
    "plan_sizes",
    "plan_gpus",
    "plan_configs",
    "plan_rates",
    "plan_denoise_tflops",
    "plan_train_tflops",
    "plan_efficiency",
    "plan_storage_gbps",
)


def add_plan_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scale plan (docs/scale.md)")
    g.add_argument(
        "--plan",
        action="store_true",
        help="also print the estimated hours of every stage and of whole runs at scale",
    )
    g.add_argument(
        "--plan-sizes", default=None, help="noisy images, comma-separated; default 50k,1M,100M"
    )
    g.add_argument("--plan-gpus", default=None, help="GPU counts; default 8,64,512")
    g.add_argument(
        "--plan-configs",
        default=None,
        help="run configs (preset or YAML) as NAME[@PIXELS] or NAME@CxPIXELS, giving the "
        "network, iterations and kimg; default cifar10@32,celeba64@64",
    )
    g.add_argument(
        "--plan-rates",
        default=None,
        help="per-GPU rates: measured (this benchmark's, default) or h200 (the recorded "
        "H200 anchors; nothing is measured)",
    )
    g.add_argument(
        "--plan-denoise-tflops",
        type=float,
        default=None,
        help="achieved TFLOP/s per GPU of denoising and sampling (overrides --plan-rates)",
    )
    g.add_argument(
        "--plan-train-tflops",
        type=float,
        default=None,
        help="achieved TFLOP/s per GPU of training (overrides --plan-rates)",
    )
    g.add_argument(
        "--plan-efficiency",
        type=float,
        default=None,
        help="DDP images/s over N x one GPU's, for pretraining and refits; default 0.9",
    )
    g.add_argument(
        "--plan-storage-gbps",
        type=float,
        default=None,
        help="aggregate storage bandwidth in GB/s (gigabytes); default 10",
    )


def plan_options(args: argparse.Namespace) -> PlanOptions | None:
    """The checked `PlanOptions` of `--plan`, or None without it; a one-line ValueError naming
    the flag for bad values (and for `--plan-*` flags without `--plan`)."""
    from sfbd.studies.scale_inputs import PlanOptions, parse_counts

    given = [f for f in PLAN_FLAGS if getattr(args, f, None) is not None]
    if not args.plan:
        if given:
            flag = "--" + given[0].replace("_", "-")
            raise ValueError(f"{flag}: needs --plan")
        return None
    options = PlanOptions()
    if args.plan_sizes is not None:
        options.sizes = parse_counts(args.plan_sizes, "--plan-sizes")
    if args.plan_gpus is not None:
        options.gpus = parse_counts(args.plan_gpus, "--plan-gpus")
    if args.plan_configs is not None:
        options.configs = tuple(x.strip() for x in args.plan_configs.split(",") if x.strip())
    for flag in ("rates", "denoise_tflops", "train_tflops", "efficiency", "storage_gbps"):
        value = getattr(args, f"plan_{flag}")
        if value is not None:
            setattr(options, flag, value)
    options.validate()
    return options
