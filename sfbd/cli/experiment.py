"""Compare SFBD with its baselines at one or more clean fractions, in one table.

    sfbd experiment --config fashion-mnist-cpu --clean-fractions 0.04,0.1 \\
        --feature-net fm_features.pt --out runs/experiment-fm
    ray job submit --working-dir . -- python jobs/experiment.py --config fashion-mnist-gpu \\
        --feature-net /shared/fm_features.pt --out /shared/runs/experiment-fm

For each clean fraction one SFBD run per seed (as `sfbd run`, in OUT/cf<F>/, with `--seeds N`
also OUT/cf<F>-seed<S>/ for S = 1..N-1) with the noisy-only and all-clean baselines; rows
noisy-only, pretrain-only, SFBD iteration k, all-clean, mean +/- std over the seeds (see
`sfbd.studies.experiment`). Writes OUT/results.json, OUT/results.md and
OUT/comparison_<run>.png. Run the same command again to resume.
"""

from __future__ import annotations

import argparse

from sfbd.cli.common import add_address, add_config, floats


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_config(p)
    p.add_argument(
        "--clean-fractions",
        type=floats("--clean-fractions"),
        default=(0.04, 0.1),
        help="comma-separated clean fractions in [0, 1) (0: all observed noisy, with "
        "data.pretrain), one SFBD run each (default 0.04,0.1)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="runs per clean fraction, seed s = 0..N-1 (--set seed=s --set data.seed=s; "
        "run directory cf<F> for s = 0, cf<F>-seed<s> after); the table shows mean +/- std "
        "(default 1: one run per fraction with the config's seeds)",
    )
    p.add_argument("--out", default=None, help="default: runs/experiment-<config name>")
    p.add_argument(
        "--feature-net",
        default=None,
        help="TorchScript feature network: sets eval.metric=fd with it; trained as by "
        "sfbd train-classifier on data.dataset (fashion-mnist, mnist) when missing",
    )
    p.add_argument(
        "--feature-net-epochs",
        type=int,
        default=2,
        help="epochs when the feature network is trained here (default 2)",
    )
    p.add_argument(
        "--extra-metrics",
        default="auto",
        help="distances besides eval.metric, computed on each row's checkpoint: a list of "
        "swd, fid, auto (fid where the Inception weights are found; the default), or none",
    )
    add_address(p)


def main(args: argparse.Namespace) -> int:
    from sfbd.studies.experiment import markdown, run_experiment

    results = run_experiment(
        args.config,
        args.clean_fractions,
        args.out,
        seeds=args.seeds,
        overrides=args.set,
        feature_net=args.feature_net,
        feature_net_epochs=args.feature_net_epochs,
        extra=args.extra_metrics,
        address=args.address,
        log=lambda line: print(line, flush=True),
    )
    print()
    print(markdown(results, results["out"]), flush=True)
    return 0
