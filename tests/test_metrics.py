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


def _feature_net(tmp_path):
    torch.manual_seed(0)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 8, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(4),
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
