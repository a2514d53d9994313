"""EDM preconditioning, loss, networks, EMA and checkpoints."""

import math

import pytest
import torch

from sfbd.diffusion import EMA, EDMLoss, NetworkConfig, build_denoiser, ema_beta
from sfbd.diffusion.networks import count_parameters, load_denoiser, save_denoiser


def test_preconditioned_denoiser_returns_x_at_zero_noise():
    torch.manual_seed(0)
    d = build_denoiser(NetworkConfig(preset="tiny", channels=1, resolution=8))
    # Make the raw network's output non-zero so the test is not trivially true.
    torch.nn.init.normal_(d.net.conv_out.weight, std=0.5)
    x = torch.randn(4, 1, 8, 8)
    big = d(x, torch.full((4,), 1.0))
    tiny = d(x, torch.full((4,), 1e-5))
    assert (big - x).abs().max() > 1e-2
    assert (tiny - x).abs().max() < 1e-3


@pytest.mark.parametrize(
    "preset,channels,res", [("tiny", 1, 28), ("tiny", 3, 32), ("small", 1, 28), ("small", 3, 32)]
)
def test_unet_shapes(preset, channels, res):
    d = build_denoiser(NetworkConfig(preset=preset, channels=channels, resolution=res))
    x = torch.randn(2, channels, res, res)
    assert d(x, torch.tensor([0.1, 2.0])).shape == x.shape


def test_preset_sizes():
    tiny = count_parameters(build_denoiser(NetworkConfig(preset="tiny", channels=3)))
    small = count_parameters(build_denoiser(NetworkConfig(preset="small", channels=3)))
    ddpmpp = count_parameters(build_denoiser(NetworkConfig(preset="ddpmpp-cifar10", channels=3)))
    print(f"parameters: tiny {tiny}, small {small}, ddpmpp-cifar10 {ddpmpp}")
    assert tiny < 1_000_000
    assert 2_000_000 < small < 10_000_000
    assert 55_000_000 < ddpmpp < 57_000_000  # EDM's DDPM++ CIFAR-10: 55.73M


def test_bad_network_config():
    with pytest.raises(ValueError, match="network.preset"):
        build_denoiser(NetworkConfig(preset="resnet"))
    with pytest.raises(ValueError, match="network.resolution"):
        build_denoiser(NetworkConfig(preset="small", resolution=30))
    with pytest.raises(ValueError, match="network.channels"):
        build_denoiser(NetworkConfig(preset="tiny", channels=2))


def test_loss_is_per_sample_and_falls_with_training():
    torch.manual_seed(0)
    # Data: 64 8x8 one-channel images of two kinds of stripes.
    base = torch.zeros(2, 1, 8, 8)
    base[0, :, ::2] = 1.0
    base[1, :, :, ::2] = 1.0
    data = (base.repeat(32, 1, 1, 1) * 2 - 1) * 0.8
    d = build_denoiser(NetworkConfig(preset="tiny", channels=1, resolution=8))
    loss_fn = EDMLoss()

    def eval_loss():
        g = torch.Generator().manual_seed(123)
        with torch.no_grad():
            return torch.cat([loss_fn(d, data, generator=g) for _ in range(8)]).mean().item()

    per_sample = loss_fn(d, data)
    assert per_sample.shape == (64,)
    before = eval_loss()
    opt = torch.optim.Adam(d.parameters(), lr=2e-3)
    for _ in range(100):  # the loss ratio is ~0.11 by then (0.05 at 300 steps)
        opt.zero_grad()
        loss_fn(d, data).mean().backward()
        opt.step()
    after = eval_loss()
    print(f"EDM loss on the stripes: {before:.3f} -> {after:.3f} after 100 steps")
    assert after < 0.7 * before


def test_refits_keep_or_drop_the_ema_ramp_up():
    from sfbd.diffusion.training import TrainConfig, stage_train_config

    on = TrainConfig(ema_rampup_ratio=0.05)
    off = TrainConfig(ema_rampup_ratio=0.05, refit_ema_rampup=False)
    # Pretraining always ramps up; a refit with the switch off keeps the whole half-life
    # from its first step (images_seen restarts at 0 in every refit).
    assert stage_train_config(off, 0) is off and stage_train_config(on, 2) is on
    refit = stage_train_config(off, 1)
    assert refit.ema_rampup_ratio is None and refit.lr == off.lr
    first = [ema_beta(64, t.ema_halflife_kimg * 1000, t.ema_rampup_ratio, 64) for t in (on, refit)]
    assert first[0] == pytest.approx(0.5**20) and first[1] == pytest.approx(0.5 ** (64 / 500))


def test_ema_half_life():
    beta = ema_beta(batch_images=64, halflife_images=6400)
    assert beta ** (6400 / 64) == pytest.approx(0.5)
    # Ramp-up caps the half-life at ratio * images seen.
    assert ema_beta(64, 6400, rampup_ratio=0.05, images_seen=1280) == pytest.approx(0.5)
    assert ema_beta(64, 6400, rampup_ratio=0.05, images_seen=0) == 0.0

    model = torch.nn.Linear(2, 1)
    with torch.no_grad():
        model.weight.zero_()
    ema = EMA(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(100):
        ema.update(model, beta)
    # After one half-life of images the EMA is halfway from 0 to 1.
    assert ema.model.weight.mean().item() == pytest.approx(0.5, rel=1e-5)


def test_checkpoint_round_trip(tmp_path):
    cfg = NetworkConfig(preset="tiny", channels=3, resolution=16, overrides={"model_channels": 8})
    d = build_denoiser(cfg)
    torch.nn.init.normal_(d.net.conv_out.weight)
    path = tmp_path / "ckpt.pt"
    save_denoiser(path, d, cfg, iteration=3)
    d2, cfg2, payload = load_denoiser(path)
    assert cfg2 == cfg and payload["iteration"] == 3
    x, s = torch.randn(2, 3, 16, 16), torch.tensor([0.3, 1.0])
    torch.testing.assert_close(d.eval()(x, s), d2(x, s))
    assert not list(tmp_path.glob("*.tmp"))
    path.write_bytes(path.read_bytes()[:100])  # truncated
    with pytest.raises(ValueError, match="checkpoint"):
        load_denoiser(path)


def test_mlp_denoiser_for_vectors():
    d = build_denoiser(NetworkConfig(preset="mlp", channels=2))
    x = torch.randn(5, 2)
    assert d(x, torch.full((5,), 0.5)).shape == (5, 2)
    assert math.isfinite(EDMLoss()(d, x).mean().item())
