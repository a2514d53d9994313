"""Distance of the denoised set against the number of backward levels, ODE vs SDE.

    sfbd nfe-study --checkpoint RUN/checkpoints/iter_001.pt --data RUN/data \\
        --steps 1,2,4,8,16,32 --modes ode,sde --limit 2000 --out nfe.json

For one checkpoint and the first `--limit` noisy observations of prepared data: the
backward pass at every (mode, levels), its counted network evaluations per image, the sliced
Wasserstein-2 distance of the denoised set to a reference, the RMS to the converged ODE
solution and the time per image (see `sfbd.studies.nfe`). Prints a table; `--out` writes all
of it as JSON.
"""

from __future__ import annotations

import argparse

from sfbd.cli.common import ints

MODES = ("ode", "sde")


def modes(text: str) -> tuple[str, ...]:
    """`ode,sde` -> ("ode", "sde"); an argparse type."""
    names = tuple(m.strip() for m in text.split(",") if m.strip())
    if not names or any(m not in MODES for m in names):
        raise argparse.ArgumentTypeError(f"modes: {text!r}; allowed: {', '.join(MODES)}")
    return names


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--checkpoint", required=True, help="an sfbd checkpoint (iter_KKK.pt)")
    p.add_argument("--data", required=True, help="a prepared data directory (manifest.json)")
    p.add_argument(
        "--steps",
        type=ints("--steps"),
        default=(1, 2, 4, 8, 16, 32),
        help="comma-separated backward levels (each costs 2 levels - 1 evaluations per image)",
    )
    p.add_argument("--modes", type=modes, default=MODES, help="ode, sde or ode,sde (default)")
    p.add_argument("--limit", type=int, default=2000, help="noisy items denoised (the first N)")
    p.add_argument(
        "--converged-steps",
        type=int,
        default=128,
        help="levels of the converged rows (the reference solution); 0: no converged rows",
    )
    p.add_argument("--converged-modes", type=modes, default=None, help="default: those of --modes")
    p.add_argument(
        "--reference",
        choices=("test", "clean"),
        default="test",
        help="images only: the held-out test split or the prepared clean split",
    )
    p.add_argument("--batch-size", type=int, default=512, help="items per backward pass")
    p.add_argument("--sigma-min", type=float, default=0.002, help="the last nonzero level")
    p.add_argument("--seed", type=int, default=0, help="the SDE's seeds (as the run's seed)")
    p.add_argument("--projections", type=int, default=256, help="sliced W2 directions")
    p.add_argument("--threads", type=int, default=1, help="torch threads")
    p.add_argument("--out", default=None, help="JSON file for the results")


def main(args: argparse.Namespace) -> int:
    import json
    import os
    from pathlib import Path

    import torch

    from sfbd.studies.nfe import Config, nfe_study

    if args.threads < 1:
        raise ValueError(f"--threads: {args.threads}; must be >= 1")
    torch.set_num_threads(args.threads)
    config = Config(
        tau=0.0,  # the data's, filled in by nfe_study
        steps=args.steps,
        modes=args.modes,
        converged_steps=args.converged_steps,
        converged_modes=args.converged_modes,
        sigma_min=args.sigma_min,
        batch_size=args.batch_size,
        seed=args.seed,
    )
    record = nfe_study(
        args.checkpoint,
        args.data,
        config,
        limit=args.limit,
        reference=args.reference,
        projections=args.projections,
        log=lambda line: print(line, flush=True),
    )
    if args.out:
        out = Path(args.out)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.with_name(out.name + ".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, out)
        print(f"wrote {out}")
    return 0
