"""EDM-style non-leaking augmentation: the pipe (identity at p = 0, its draw against its
specification at p = 1, exact pixel cases), the label-conditioned UNet (zero labels are the
unconditioned network), the loss wiring and the config checks. No Ray; a few seconds."""

from __future__ import annotations

import dataclasses
import io
import math

import pytest
import torch

from sfbd.config import dump_config, load_config
from sfbd.diffusion.augment import AUGMENT_DIM, AugmentDraw, AugmentPipe, draw, transform
from sfbd.diffusion.loss import EDMLoss
from sfbd.diffusion.networks import (
    NetworkConfig,
    build_denoiser,
    denoiser_from_payload,
    denoiser_payload,
)
from sfbd.diffusion.training import TrainConfig, TrainState, train_loss, train_step


def image(batch: int = 1, channels: int = 1, side: int = 8) -> torch.Tensor:
    return torch.arange(batch * channels * side * side, dtype=torch.float32).reshape(
        batch, channels, side, side
    )


def one(**params) -> AugmentDraw:
    d = AugmentDraw.identity(1)
    for key, value in params.items():
        getattr(d, key)[:] = value
    return d


# ---------------------------------------------------------------------------------------------
# The pipe


def test_p0_is_the_identity_with_zero_labels_and_draws_nothing():
    x = torch.randn(5, 3, 8, 8)
    state = torch.get_rng_state()
    out, labels = AugmentPipe(0.0)(x)
    assert out is x
    assert labels.shape == (5, AUGMENT_DIM) and not labels.any()
    assert torch.equal(torch.get_rng_state(), state)
    # The loss with a p = 0 pipe is the loss without one, bit for bit.
    d = build_denoiser(NetworkConfig(preset="tiny", channels=3, resolution=8, augment_dim=9))
    with torch.no_grad():
        plain = EDMLoss()(d, x, torch.Generator().manual_seed(3))
        piped = EDMLoss(augment_pipe=AugmentPipe(0.0))(d, x, torch.Generator().manual_seed(3))
    assert torch.equal(plain, piped)
    assert train_loss(TrainConfig(), NetworkConfig()).augment_pipe is None
    assert train_loss(TrainConfig(augment=0.12), NetworkConfig()).augment_pipe.p == 0.12


def test_p1_draw_matches_its_specification():
    n, side = 40_000, 28
    d = draw(n, side, side, 1.0, generator=torch.Generator().manual_seed(0))
    for flip in (d.xflip, d.yflip):  # a fair coin once drawn
        assert set(flip.unique().tolist()) == {0.0, 1.0}
        assert abs(flip.mean().item() - 0.5) < 0.015
    for t in (d.tx, d.ty):  # uniform on the integers of [-3.5, 3.5]
        assert set(t.unique().tolist()) == set(map(float, range(-3, 4)))
        for v in range(-3, 4):
            assert abs((t == v).float().mean().item() - 1 / 7) < 0.01
    for log2, std in ((d.log2_scale, 0.2), (d.log2_aniso, 0.2)):
        assert abs(log2.mean().item()) < 0.005 and abs(log2.std().item() - std) < 0.005
    assert d.angle.min() >= -math.pi and d.angle.max() < math.pi
    assert abs(d.angle.std().item() - math.pi / math.sqrt(3)) < 0.02  # uniform on [-pi, pi)
    assert d.aniso_dir.min() >= 0 and d.aniso_dir.max() < math.pi
    assert abs(d.aniso_dir.mean().item() - math.pi / 2) < 0.03
    labels = d.labels(side, side, AugmentPipe(1.0).spec)
    assert labels.shape == (n, AUGMENT_DIM) and labels[:, 2:4].abs().max() <= 1
    assert abs(labels[:, 4].std().item() - 1) < 0.02  # log2 scale / scale_std


def test_each_transform_is_drawn_with_probability_p():
    n, p = 40_000, 0.3
    d = draw(n, 16, 16, p, generator=torch.Generator().manual_seed(1))
    for values, share in (
        (d.xflip, p / 2),
        (d.yflip, p / 2),
        (d.tx.ne(0) | d.ty.ne(0), p * (1 - 1 / 25)),  # 2 px each way: (0, 0) is 1 in 25
        (d.log2_scale, p),
        (d.angle, p),
        (d.log2_aniso, p),
    ):
        assert abs(values.ne(0).float().mean().item() - share) < 0.01
    untouched = (1 - p / 2) ** 2 * (1 - p * 24 / 25) * (1 - p) ** 3
    labels = d.labels(16, 16, AugmentPipe(p).spec)
    assert abs(labels.eq(0).all(dim=1).float().mean().item() - untouched) < 0.01
    assert torch.equal(labels.eq(0).all(dim=1), ~d.applied())


def test_exact_pixel_cases():
    x = image()
    assert torch.equal(transform(x, one(xflip=1)), x.flip(3))
    assert torch.equal(transform(x, one(yflip=1)), x.flip(2))
    # 90 degrees counter-clockwise on screen, 180 degrees: pixel permutations.
    assert torch.allclose(transform(x, one(angle=math.pi / 2)), x.rot90(1, (2, 3)), atol=1e-4)
    assert torch.allclose(transform(x, one(angle=math.pi)), x.flip(2, 3), atol=1e-4)
    # Integer translation, 2 px right and 1 px up, mirrored at the border (edge repeated).
    src_col = torch.tensor([1, 0, 0, 1, 2, 3, 4, 5])
    src_row = torch.tensor([1, 2, 3, 4, 5, 6, 7, 7])
    expected = x[0, 0][src_row][:, src_col]
    assert torch.allclose(transform(x, one(tx=2, ty=-1))[0, 0], expected, atol=1e-4)


def test_affine_maps_match_their_definition():
    d = one(log2_scale=0.5)
    assert torch.allclose(d.forward_matrices()[0, :2, :2], 2**0.5 * torch.eye(2))
    d = one(log2_aniso=0.7, aniso_dir=0.4)
    m = d.forward_matrices()[0, :2, :2].double()
    assert torch.allclose(m, m.T) and abs(torch.linalg.det(m).item() - 1) < 1e-6
    direction = torch.tensor([math.cos(0.4), math.sin(0.4)], dtype=torch.float64)
    assert torch.allclose(m @ direction, 2**0.7 * direction, atol=1e-6)


def test_labels_mark_exactly_the_changed_samples_and_a_seed_repeats_the_draw():
    x = torch.randn(64, 3, 16, 16)
    out, labels = AugmentPipe(0.3)(x, torch.Generator().manual_seed(5))
    zero = labels.eq(0).all(dim=1)
    assert 0 < zero.sum() < 64
    assert torch.equal(out[zero], x[zero])
    assert (out[~zero] - x[~zero]).flatten(1).abs().amax(dim=1).gt(1e-3).all()
    again, labels2 = AugmentPipe(0.3)(x, torch.Generator().manual_seed(5))
    assert torch.equal(again, out) and torch.equal(labels2, labels)
    with torch.autocast("cpu", torch.bfloat16):  # as inside a bf16 training step
        again, _ = AugmentPipe(0.3)(x, torch.Generator().manual_seed(5))
    assert torch.equal(again, out)
    with pytest.raises(ValueError, match=r"augment: p = 1.5; must lie in \[0, 1\]"):
        AugmentPipe(1.5)
    with pytest.raises(ValueError, match="vectors are not augmented"):
        AugmentPipe(0.5)(torch.randn(4, 2))


# ---------------------------------------------------------------------------------------------
# The conditioned network


def randomized(config: NetworkConfig, seed: int = 0):
    """A denoiser whose weights are all random (the zero-initialized output layers too)."""
    d = build_denoiser(config)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in d.parameters():
            p.copy_(torch.randn(p.shape, generator=gen) * 0.1)
    return d.eval()


def test_zero_labels_reproduce_the_unconditioned_network():
    cfg = NetworkConfig(preset="tiny", channels=1, resolution=8, augment_dim=AUGMENT_DIM)
    cond = randomized(cfg)
    plain = build_denoiser(dataclasses.replace(cfg, augment_dim=0)).eval()
    state = {k: v for k, v in cond.state_dict().items() if "map_augment" not in k}
    plain.load_state_dict(state)  # strict: the map is the only extra weight
    assert set(cond.state_dict()) - set(state) == {"net.map_augment.weight"}
    x, sigma = torch.randn(4, 1, 8, 8), torch.tensor([0.1, 0.5, 1.0, 3.0])
    with torch.no_grad():
        ref = plain(x, sigma)
        assert torch.equal(cond(x, sigma), ref)
        assert torch.equal(cond(x, sigma, torch.zeros(4, AUGMENT_DIM)), ref)
        assert not torch.allclose(cond(x, sigma, torch.ones(4, AUGMENT_DIM)), ref)
    with pytest.raises(ValueError, match="augment_dim = 0"):
        plain(x, sigma, torch.zeros(4, AUGMENT_DIM))
    with pytest.raises(ValueError, match="network.augment_dim"):
        build_denoiser(NetworkConfig(preset="mlp", channels=2, augment_dim=AUGMENT_DIM))


def test_checkpoints_without_augment_dim_still_load():
    cfg = NetworkConfig(preset="tiny", channels=1, resolution=8)
    d = randomized(cfg)
    payload = torch.load(io.BytesIO(denoiser_payload(d, cfg)), weights_only=True)
    del payload["network"]["augment_dim"]  # a file written before the key existed
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    loaded, config, _ = denoiser_from_payload(buffer.getvalue(), "old.pt")
    assert config.augment_dim == 0 and loaded.net.map_augment is None
    x, sigma = torch.randn(2, 1, 8, 8), torch.tensor([0.3, 2.0])
    with torch.no_grad():
        assert torch.equal(loaded(x, sigma), d(x, sigma))


def test_a_few_augmented_training_steps_train_the_label_map():
    net = NetworkConfig(preset="tiny", channels=1, resolution=8, augment_dim=AUGMENT_DIM)
    train = TrainConfig(batch_size=4, augment=0.5, warmup_kimg=0)
    state = TrainState(net, train, seed=0, stage="t")
    before = state.model.net.map_augment.weight.detach().clone()
    loss_fn = train_loss(train, net)
    torch.manual_seed(0)
    losses = [
        train_step(state, state.model, loss_fn, torch.rand(4, 1, 8, 8) * 2 - 1, train, False)
        for _ in range(3)  # zero-initialized output layers: the map's gradient starts at 3
    ]
    assert all(math.isfinite(v) for v in losses)
    assert not torch.equal(state.model.net.map_augment.weight, before)


# ---------------------------------------------------------------------------------------------
# Configuration


def test_augment_sets_the_label_dimension_and_is_written_back():
    assert load_config("fashion-mnist-cpu").network.augment_dim == 0
    config = load_config("fashion-mnist-cpu", ["train.augment=0.12"])
    assert config.network.augment_dim == AUGMENT_DIM
    assert f"augment_dim: {AUGMENT_DIM}" in dump_config(config)


@pytest.mark.parametrize(
    "preset,overrides,message",
    [
        ("fashion-mnist-cpu", ["train.augment=1.5"], "train.augment = 1.5; must lie in [0, 1]"),
        ("fashion-mnist-cpu", ["train.augment=-0.1"], "train.augment = -0.1; must lie in"),
        ("toy2d", ["train.augment=0.5"], "train.augment = 0.5 needs an image network"),
        ("fashion-mnist-cpu", ["network.augment_dim=4"], "network.augment_dim = 4; allowed"),
        ("toy2d", ["network.augment_dim=9"], "network.augment_dim = 9; allowed"),
    ],
)
def test_bad_augment_settings_give_one_line(preset, overrides, message):
    with pytest.raises(ValueError) as info:
        load_config(preset, overrides)
    text = str(info.value)
    assert text.startswith("config: ") and message in text and "\n" not in text


def test_a_config_object_with_augment_needs_the_labels():
    config = load_config("fashion-mnist-cpu")
    config.train.augment = 0.2
    with pytest.raises(ValueError, match="needs network.augment_dim = 9"):
        config.validate()
