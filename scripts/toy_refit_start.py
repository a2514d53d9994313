"""The toy's SFBD loop without Ray, refit_start ema against continue (docs/results.md).

    .venv/bin/python scripts/toy_refit_start.py --seed 0 --pretrain-kimg 150 --iterations 3

Pretrains on a 2% clean set of the `toy2d` preset's data, then runs K rounds of backward
sampling (the SDE from tau, 8 levels) and refit (clean + denoised by size, `refit_kimg`) with
the functions the train and denoise stages use (`sfbd.diffusion`), once with each refit start
from the same pretraining; prints the sliced W2 to 20k fresh true samples after pretraining and
after every round. One process, one thread: seconds per refit.
"""

from __future__ import annotations

import argparse
import json

import numpy as np
import torch

from sfbd.config import load_config
from sfbd.data.sources import load_source, toy2d_sample
from sfbd.diffusion.samplers import backward_denoise, generate
from sfbd.diffusion.training import TrainState, stage_train_config, train_on_sets
from sfbd.metrics.distances import sliced_wasserstein

TAU = 0.59


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--pretrain-kimg", type=float, default=150.0)
    p.add_argument("--iterations", type=int, default=3)
    args = p.parse_args()
    torch.set_num_threads(1)
    seed = args.seed
    config = load_config("toy2d", [])
    config.network.channels = 2
    net, train = config.network, config.train
    truth = toy2d_sample(20000, np.random.default_rng(100 + seed))

    def distance(model) -> float:
        x = generate(model.eval(), (20000, 2), steps=32, generator=torch.Generator().manual_seed(0))
        model.train()
        return round(sliced_wasserstein(x.numpy(), truth), 4)

    def fit(state: TrainState, sets: list[np.ndarray], kimg: float, stage: str, t) -> None:
        train_on_sets(state, sets, kimg, t, net, seed, stage)

    data = load_source("toy2d", num=config.data.num, seed=seed).items
    rng = np.random.default_rng([seed, 9])
    order = rng.permutation(len(data))
    clean, hidden = data[order[:200]], data[order[200:]]
    y = (hidden + TAU * rng.standard_normal(hidden.shape)).astype(np.float32)
    pretrained = TrainState(net, train, seed, "pretrain")
    fit(pretrained, [clean], args.pretrain_kimg, "pretrain", train)
    out = {
        "seed": seed,
        "pretrain_kimg": args.pretrain_kimg,
        "pretrained": distance(pretrained.ema.model),
    }
    for start in ("ema", "continue"):
        before, after = pretrained, []
        for k in range(1, args.iterations + 1):
            g = torch.Generator().manual_seed(1000 * seed + k)
            denoised = backward_denoise(
                before.ema.model.eval(), torch.from_numpy(y), TAU, 8, stochastic=True, generator=g
            ).numpy()
            before.ema.model.train()
            t, stage = stage_train_config(train, k), f"refit_{k:03d}"
            refit = TrainState(net, t, seed, stage, before.ema.model if start == "ema" else None)
            if start == "continue":
                refit.continue_from(before.state_dict())
            fit(refit, [clean, denoised], train.refit_kimg, stage, t)
            after.append(distance(refit.ema.model))
            before = refit
        out[start] = after
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
