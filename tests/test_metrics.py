"""Frechet distance, FID weight loading, feature networks and the memorization check."""

import numpy as np
import pytest
import torch
from pytorch_fid import inception as pf_inception
from torchvision.models.inception import Inception3

from sfbd.cli import main
from sfbd.data.sources import DEBIAN_FASHION_MNIST, load_labelled
from sfbd.metrics.fid import build_inception, inception_feature_fn
from sfbd.metrics.frechet import (
    extract_features,
    feature_stats,
    frechet_distance,
    load_feature_net,
)
from sfbd.metrics.memorization import memorization_report, nearest_neighbours


def test_frechet_distance_closed_form_gaussians():
    mu1, mu2 = np.array([0.0, 1.0, -2.0]), np.array([0.5, 1.0, 0.0])
    a, b = np.array([1.0, 4.0, 0.25]), np.array([2.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + (a + b - 2 * np.sqrt(a * b)).sum()
    got = frechet_distance(mu1, np.diag(a), mu2, np.diag(b))
    assert got == pytest.approx(expected, rel=1e-9)
    # Non-diagonal: the same covariance rotated, shifted mean only.
    rot = np.linalg.qr(np.random.default_rng(0).standard_normal((3, 3)))[0]
    s = rot @ np.diag(a) @ rot.T
    assert frechet_distance(mu1, s, mu2, s) == pytest.approx(((mu1 - mu2) ** 2).sum(), abs=1e-8)


def _feature_net(tmp_path, channels: int = 8, side: int = 4):
    """A random conv net saved as TorchScript: `channels * side**2` features."""
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, channels, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(side),
        torch.nn.Flatten(),
    )
    path = tmp_path / "features.pt"
    torch.jit.script(net).save(str(path))
    return path


def test_feature_distance_is_zero_to_itself_and_grows_with_noise(tmp_path):
    # Plumbing with a randomly initialised conv net (named as such: not a quality metric).
    fn = load_feature_net(_feature_net(tmp_path))
    rng = np.random.default_rng(1)
    images = np.clip(rng.standard_normal((400, 1, 8, 8)) * 0.3, -1, 1).astype(np.float32)
    ref = feature_stats(extract_features(fn, images))
    dists = []
    for sigma in (0.0, 0.1, 0.3, 0.6):
        noisy = (images + sigma * rng.standard_normal(images.shape)).astype(np.float32)
        dists.append(frechet_distance(*ref, *feature_stats(extract_features(fn, noisy))))
    print(f"feature distance vs noise 0/0.1/0.3/0.6: {dists}")
    assert abs(dists[0]) < 1e-6
    assert dists[0] < dists[1] < dists[2] < dists[3]


def test_feature_net_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="feature network"):
        load_feature_net(tmp_path / "missing.pt")
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    with pytest.raises(ValueError, match="TorchScript"):
        load_feature_net(bad)


def test_fid_weights_missing_offline_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(FileNotFoundError, match="pt_inception-2015-12-05-6726825d.pth"):
        build_inception(download=False)

    def offline(*_a, **_k):
        raise OSError("network unreachable")

    monkeypatch.setattr(pf_inception, "load_state_dict_from_url", offline)
    with pytest.raises(FileNotFoundError, match="download failed.*network unreachable"):
        build_inception()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_inception(weights=tmp_path / "nope.pth")


def test_fid_weights_load_from_a_given_file(tmp_path, monkeypatch):
    # Write a file from a randomly initialised FID Inception (plumbing only, not real FID).
    monkeypatch.setattr(pf_inception, "load_state_dict_from_url", lambda *a, **k: {})
    monkeypatch.setattr(Inception3, "load_state_dict", lambda self, sd, *a, **k: None)
    random_net = pf_inception.fid_inception_v3()
    monkeypatch.undo()
    path = tmp_path / "random_inception.pth"
    torch.save(random_net.state_dict(), path)

    model = build_inception(weights=path)
    fn = inception_feature_fn(model)
    feats = fn(torch.zeros(2, 1, 28, 28))  # grayscale, small: replicated and resized
    assert feats.shape == (2, 2048)
    torch.testing.assert_close(model.blocks[0][0].conv.weight, random_net.Conv2d_1a_3x3.conv.weight)


def test_memorization_flags_copies_and_not_fresh_samples():
    rng = np.random.default_rng(0)
    train = np.clip(rng.standard_normal((300, 1, 8, 8)), -1, 1).astype(np.float32)
    fresh = np.clip(rng.standard_normal((100, 1, 8, 8)), -1, 1).astype(np.float32)
    copies = fresh.copy()
    copies[:30] = train[:30] + 0.001 * rng.standard_normal((30, 1, 8, 8)).astype(np.float32)
    nn = nearest_neighbours(copies, train, chunk=64)
    assert (nn.index[:30] == np.arange(30)).all()
    report, _ = memorization_report(copies, {"clean": train}, threshold=0.05)
    assert report["clean"]["fraction_copies"] == pytest.approx(0.30)
    assert memorization_report(fresh, {"clean": train}, 0.05)[0]["clean"]["fraction_copies"] == 0


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(),
    reason="apt-get install dataset-fashion-mnist (CI installs it)",
)
def test_classifier_job_exports_a_feature_net(tmp_path):
    out = tmp_path / "fm_features.pt"
    args = ["--dataset", "fashion-mnist", "--epochs", "1", "--limit", "6000", "--out", str(out)]
    assert main(["train-classifier", *args]) == 0
    fn = load_feature_net(out)
    test_images, test_labels = load_labelled("fashion-mnist", train=False)
    clean = test_images[:1000]
    ref = feature_stats(extract_features(fn, test_images[5000:7000]))
    rng = np.random.default_rng(0)
    d_clean = frechet_distance(*ref, *feature_stats(extract_features(fn, clean)))
    noisy = (clean + 0.59 * rng.standard_normal(clean.shape)).astype(np.float32)
    d_noisy = frechet_distance(*ref, *feature_stats(extract_features(fn, noisy)))
    print(f"classifier features: FD clean {d_clean:.2f}, noisy (tau 0.59) {d_noisy:.2f}")
    assert d_noisy > 10 * d_clean


def test_kid_matches_a_direct_computation_and_separates_shifted_sets():
    from sfbd.metrics.kid import kernel_inception_distance

    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 5)), rng.normal(size=(30, 5)) + 0.5
    # One subset of all rows: the textbook unbiased MMD^2, written out pair by pair.
    k = lambda a, b: (a @ b / 5 + 1) ** 3  # noqa: E731
    m = len(x)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / m**2
    mean, std = kernel_inception_distance(x, y, subsets=1, subset_size=m)
    assert mean == pytest.approx(kxx + kyy - 2 * kxy, rel=1e-12) and std == 0

    # Unbiased: two samples of one distribution average to 0 within the spread; a shifted
    # set lies far above it.
    a, b = rng.normal(size=(400, 8)), rng.normal(size=(400, 8))
    same, same_std = kernel_inception_distance(a, b, subsets=50, subset_size=200)
    shifted, _ = kernel_inception_distance(a, b + 0.3, subsets=50, subset_size=200)
    assert abs(same) < same_std  # the subsets overlap: their mean spreads less than one
    assert shifted > same + 10 * same_std
    with pytest.raises(ValueError, match="KID: features of shapes"):
        kernel_inception_distance(a, b[:, :4])


def test_denoised_diagnostics_residual_and_collapse_share():
    from sfbd.stages.evaluate import denoised_diagnostics

    rng = np.random.default_rng(0)
    denoised = rng.uniform(-1, 1, (40, 1, 4, 4)).astype(np.float32)
    previous = denoised + 0.1  # every element moved by 0.1 since the last iteration
    clean = np.concatenate([denoised[:10], rng.uniform(-1, 1, (5, 1, 4, 4))])  # 10 copies
    out = denoised_diagnostics(denoised, previous, clean.astype(np.float32), threshold=0.05)
    assert out["residual_rms"] == pytest.approx(0.1, rel=1e-5)
    assert out["fraction_near_clean"] == 10 / 40
    assert out["median_distance_to_clean"] > 0.05
    # The first iteration has no E_{k-1}; without a threshold there is no collapse share.
    assert denoised_diagnostics(denoised, None, clean, None) == {}


def test_quantize_uint8_lands_on_the_256_levels_and_keeps_quantised_input():
    from sfbd.metrics.quantize import quantize_uint8

    grid = np.arange(256, dtype=np.float32) / 127.5 - 1  # what the data loaders produce
    assert np.array_equal(quantize_uint8(grid), grid)
    x = np.random.default_rng(0).uniform(-1.3, 1.3, (64, 3, 4, 4)).astype(np.float32)
    q = quantize_uint8(x)
    assert q.dtype == np.float32 and q.shape == x.shape
    levels = (q + 1) * 127.5
    assert np.abs(levels - np.round(levels)).max() < 1e-4  # on the grid
    assert set(np.unique(np.round(levels))) <= set(range(256))
    assert q.min() == -1 and q.max() == 1  # outside [-1, 1]: clipped to the end levels
    inside = np.abs(x) <= 1
    assert np.abs(q - x)[inside].max() <= 1 / 255 + 1e-6  # half a level, 1 / 127.5 / 2
    assert quantize_uint8(np.float32([0.0, -1.0, 1.0, 0.003])).tolist() == pytest.approx(
        [1 / 255, -1.0, 1.0, 1 / 255],
        abs=1e-6,  # 127.5 rounds to 128 (half to even)
    )
    assert np.array_equal(quantize_uint8(q), q)


def test_reference_stats_files_of_pytorch_fid_and_edm_load(tmp_path):
    from sfbd.metrics.fid import load_stats

    rng = np.random.default_rng(0)
    mu, sigma = rng.normal(size=16), np.cov(rng.normal(size=(16, 40)))
    # pytorch-fid's --save-stats writes a compressed .npz; EDM's reference files are plain.
    np.savez_compressed(tmp_path / "pytorch_fid.npz", mu=mu, sigma=sigma)
    np.savez(tmp_path / "edm.npz", mu=mu.astype(np.float64), sigma=sigma)
    for name in ("pytorch_fid.npz", "edm.npz"):
        got_mu, got_sigma = load_stats(tmp_path / name)
        assert np.array_equal(got_mu, mu) and np.array_equal(got_sigma, sigma)


def test_eval_reference_train_is_validated_like_test():
    from sfbd.config import SFBDConfig

    config = SFBDConfig()
    config.eval.reference = "train"
    config.validate()  # fashion-mnist
    config.data.dataset = "toy2d"
    with pytest.raises(ValueError, match="eval.reference = train needs data.dataset cifar10"):
        config.validate()
    config.eval.reference = "training"
    with pytest.raises(ValueError, match="allowed: clean, test, train, npz:PATH"):
        config.validate()


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(),
    reason="apt-get install dataset-fashion-mnist (CI installs it)",
)
def test_reference_train_is_the_whole_training_split(tmp_path):
    from sfbd.config import EvalConfig
    from sfbd.data.store import write_manifest
    from sfbd.stages.evaluate import SWD_TRAIN_MAX, reference_items

    # The manifest's fields that name the source (data prepared with data.limit = 50).
    data = tmp_path / "d"
    write_manifest(data, {"source": "fashion-mnist", "config": {"root": None, "limit": 50}})
    fid = reference_items(data, EvalConfig(reference="train", metric="fid"))
    assert fid.shape == (60000, 1, 28, 28)  # all of it, not data.limit's 50
    swd = reference_items(data, EvalConfig(reference="train", seed=3))
    assert swd.shape == (SWD_TRAIN_MAX, 1, 28, 28)
    # For swd: the training items that eval.seed picks, in their order.
    keep = np.random.default_rng([3, 5]).choice(60000, SWD_TRAIN_MAX, replace=False)
    assert np.array_equal(swd, fid[np.sort(keep)])


def test_fd_rows_quantise_samples_and_measure_in_noisy_space(tmp_path, monkeypatch):
    import functools

    from sfbd.config import EvalConfig
    from sfbd.data.prepare import DataConfig, prepare
    from sfbd.data.store import split_count
    from sfbd.metrics import kid
    from sfbd.metrics.quantize import quantize_uint8
    from sfbd.stages.evaluate import distance

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (600, 1, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "imgs.npz", images=images)
    data = prepare(
        DataConfig(
            dataset=f"npz:{tmp_path / 'imgs.npz'}", clean_fraction=0.5, holdout_fraction=0.4
        ),
        tmp_path / "d",
        log=lambda _: None,
    )
    net = _feature_net(tmp_path, channels=4, side=2)  # 16-d: small matrix square roots
    config = EvalConfig(num_samples=200, metric="fd", feature_net=str(net))
    # KID's 100 subsets are its own test's business; a few keep this one quick.
    few = functools.partial(kid.kernel_inception_distance, subsets=5)
    monkeypatch.setattr(kid, "kernel_inception_distance", few)
    cache = tmp_path / "cache"
    samples = quantize_uint8(rng.uniform(-1, 1, (200, 1, 8, 8)))
    row = distance(samples, data, config, cache)
    print({k: v for k, v in row.items() if k != "feature_net"})
    assert row["quantized"] == "uint8"
    assert row["noisy_distance_items"] == split_count(data, "holdout") == 120
    assert row["fd"] > 0 and row["noisy_distance"] > 0
    assert {"kid", "kid_std", "noisy_kid", "noisy_kid_std"} <= row.keys()
    # The holdout's features are cached beside the reference's, and read back the next time;
    # samples less than half a level off the 8-bit grid are quantised onto it: the same row.
    cached = sorted(p.name.split("-")[2] for p in cache.iterdir())
    assert cached == ["clean", "holdout"]
    assert distance(samples + 0.003, data, config, cache) == row
    assert len(list(cache.iterdir())) == 2
    # Shifted samples lie further from the observations in noisy space too.
    far_samples = np.clip(samples * 0.3 + 0.5, -1, 1)
    far = distance(far_samples, data, config, cache)
    assert far["noisy_distance"] > 2 * row["noisy_distance"]
    # A scorer loads the feature network once and scores every set as `distance` does.
    from sfbd.metrics import frechet
    from sfbd.stages.evaluate import scorer

    loads, load = [], frechet.load_feature_net
    monkeypatch.setattr(frechet, "load_feature_net", lambda *a: loads.append(a) or load(*a))
    score = scorer(data, config, cache)
    assert score(samples, True) == row and score(far_samples, True) == far
    clean_only = {k: v for k, v in row.items() if not k.startswith("noisy_")}
    assert score(samples, False) == clean_only and len(loads) == 1
