"""How a refit starts (`train.refit_start`): the previous EMA with a fresh optimiser (the
authors' code), or the whole train state carried on. Without Ray: the train state and step
of `sfbd.diffusion.training` on the 2-D toy."""

import numpy as np
import pytest
import torch

from sfbd.config import load_config
from sfbd.data.sources import load_source, toy2d_sample
from sfbd.diffusion.samplers import backward_denoise, generate
from sfbd.diffusion.training import TrainState, stage_train_config, train_on_sets
from sfbd.metrics.distances import sliced_wasserstein

TAU = 0.59


def toy_config():
    config = load_config("toy2d", [])
    config.network.channels = 2
    return config


def fit(state: TrainState, sets: list[np.ndarray], kimg: float, stage: str, config, train):
    """`kimg` more images of EDM training on `sets` mixed by size, as the train stage does."""
    train_on_sets(state, sets, kimg, train, config.network, 0, stage)


def test_continue_carries_weights_adam_ema_and_the_image_count():
    config = toy_config()
    train = config.train
    data = toy2d_sample(2000, np.random.default_rng(0))
    before = TrainState(config.network, train, 0, "pretrain")
    fit(before, [data], 1.0, "pretrain", config, train)  # inside the 2-kimg warm-up
    saved = before.state_dict()

    carried = TrainState(config.network, train, 0, "refit_001")
    carried.continue_from(saved)
    assert (carried.images_before, carried.images_seen) == (before.images_seen, 0)
    for a, b in zip(carried.model.parameters(), before.model.parameters(), strict=True):
        assert torch.equal(a, b)
    for a, b in zip(carried.ema.model.parameters(), before.ema.model.parameters(), strict=True):
        assert torch.equal(a, b)
    moments = [s["exp_avg"] for s in carried.optimizer.state_dict()["state"].values()]
    assert moments and all(m.abs().sum() > 0 for m in moments)

    # The warm-up goes on where it was (the step at image 1024 of 2000), not from 0 again.
    fresh = TrainState(config.network, train, 0, "refit_001", before.ema.model)
    fit(carried, [data], 0.064, "refit_001", config, train)
    fit(fresh, [data], 0.064, "refit_001", config, train)
    lr = [s.optimizer.param_groups[0]["lr"] for s in (carried, fresh)]
    assert lr == pytest.approx([train.lr * 1024 / 2000, train.lr * 1e-3])
    assert carried.state_dict()["images_before"] == 1024  # what a resumed refit reads back


def test_refit_lr_applies_to_refits_only():
    train = load_config("toy2d", ["train.refit_lr=0.0005"]).train
    assert stage_train_config(train, 0).lr == train.lr == 0.003
    assert stage_train_config(train, 2).lr == 0.0005
    with pytest.raises(ValueError, match="train.refit_start = 'warm'; allowed: ema, continue"):
        load_config("toy2d", ["train.refit_start=warm"])
    with pytest.raises(ValueError, match="train.refit_lr = -1.0; must be > 0"):
        load_config("toy2d", ["train.refit_lr=-1"])


def test_a_refit_from_a_converged_toy_model_keeps_its_distance_to_the_truth():
    """From a model trained to its plateau, one SFBD refit (posterior samples of the noisy
    set by the SDE from tau, plus the 2% clean set; 100 kimg as the toy preset) with
    refit_start continue ends within 0.01 of the pretrained model's sliced W2 to the truth
    (two sets of 20k true samples lie 0.022 apart; a refit of this kind ends 0.00-0.01 off,
    measured on 2026-12-08: 0.0528 -> 0.0499 after 300 kimg, 0.061 -> 0.078 with ema after
    an unconverged 60)."""
    torch.set_num_threads(1)
    config = toy_config()
    train = config.train
    truth = toy2d_sample(20000, np.random.default_rng(7))
    data = load_source("toy2d", num=10000, seed=0).items
    clean, hidden = data[:200], data[200:]
    y = hidden + TAU * np.random.default_rng(1).standard_normal(hidden.shape).astype(np.float32)

    def distance(model) -> float:
        x = generate(model.eval(), (20000, 2), steps=32, generator=torch.Generator().manual_seed(0))
        return sliced_wasserstein(x.numpy(), truth)

    pretrained = TrainState(config.network, train, 0, "pretrain")
    fit(pretrained, [data], 150.0, "pretrain", config, train)  # on every item: converged
    before = distance(pretrained.ema.model)
    denoised = backward_denoise(
        pretrained.ema.model.eval(),
        torch.from_numpy(y),
        TAU,
        8,
        stochastic=True,
        generator=torch.Generator().manual_seed(3),
    ).numpy()

    refit_train = stage_train_config(train, 1)
    refit = TrainState(config.network, refit_train, 0, "refit_001")
    refit.continue_from(pretrained.state_dict())
    fit(refit, [clean, denoised], 100.0, "refit_001", config, refit_train)
    after = distance(refit.ema.model)
    print(f"toy, converged model: sliced W2 {before:.4f} -> {after:.4f} after a refit (continue)")
    assert before < 0.08  # the pretraining did converge (noisy-only training: 0.29)
    assert after < before + 0.01


def test_continue_after_an_adopted_init_needs_the_train_state_behind_it(tmp_path):
    from sfbd.run import check_init_state

    run = tmp_path / "run"
    init = run / "checkpoints" / "iter_002.pt"
    init.parent.mkdir(parents=True)
    init.write_bytes(b"checked elsewhere")
    sets = ["train.refit_start=continue", "train.pretrain_kimg=0", f"train.init={init}"]
    config = load_config("toy2d", sets)
    config.network.channels = 2
    with pytest.raises(ValueError, match=r"train.refit_start = continue .* none found"):
        check_init_state(config)
    state = run / "train" / "refit_002" / "checkpoint_000000004096" / "train_state.pt"
    state.parent.mkdir(parents=True)
    torch.save(TrainState(config.network, config.train, 0, "x").state_dict(), state)
    check_init_state(config)  # found: no error
    config.train.refit_start = "ema"
    state.unlink()
    check_init_state(config)  # ema needs no train state
