"""Files that are not ours are refused with one line, never executed: a checkpoint, feature
network, Inception weights or statistics file whose pickle would run code, an `.npz` with an
object array, random bytes. The "code" here creates a marker file; it must never appear."""

import io
import os

import numpy as np
import pytest
import torch

from sfbd.data.sources import load_source
from sfbd.diffusion.networks import CHECKPOINT_FORMAT, NetworkConfig, load_denoiser
from sfbd.metrics.fid import load_stats, reference_stats
from sfbd.metrics.frechet import load_feature_net
from sfbd.runfiles import load_denoiser_at, save_checkpoint
from sfbd.safeload import open_npz, torch_load


class Evil:
    """Unpickling this calls `open(marker, "w")`: the file appears if the pickle runs."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _torch_bytes(obj) -> bytes:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "pwned"
    yield path
    assert not path.exists(), "a pickle in an untrusted file was executed"


@pytest.fixture
def evil_checkpoint(tmp_path, marker):
    """A checkpoint-shaped payload with a code-running object inside."""
    cfg = NetworkConfig(preset="mlp", channels=2)
    payload = {"format": CHECKPOINT_FORMAT, "network": vars(cfg), "state_dict": Evil(marker)}
    return _torch_bytes(payload)


def _one_line(exc: pytest.ExceptionInfo) -> str:
    text = str(exc.value)
    assert len(text.splitlines()) == 1, text
    return text


def test_checkpoint_with_code_is_refused(tmp_path, evil_checkpoint):
    path = tmp_path / "checkpoints" / "iter_001.pt"
    # With a matching sha256 beside it: the digest says "unchanged", not "ours".
    save_checkpoint(path, evil_checkpoint)
    with pytest.raises(ValueError) as exc:
        load_denoiser_at(path)
    text = _one_line(exc)
    assert f"checkpoint: {path} is not a readable sfbd checkpoint" in text
    assert "holds more than tensors" in text and "open" in text
    # `sfbd sample`'s loader, and random bytes.
    with pytest.raises(ValueError, match="is not a readable sfbd checkpoint") as exc:
        load_denoiser(path)
    _one_line(exc)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(os.urandom(4096))
    with pytest.raises(ValueError, match=f"checkpoint: {junk} is not a readable") as exc:
        load_denoiser(junk)
    _one_line(exc)


def test_checkpoint_of_another_shape_is_refused_with_one_line(tmp_path):
    path = tmp_path / "other.pt"
    cfg = NetworkConfig(preset="mlp", channels=2)
    payload = {
        "format": CHECKPOINT_FORMAT,
        "network": vars(cfg),
        "state_dict": {"w": torch.ones(2)},
    }
    path.write_bytes(_torch_bytes(payload))
    with pytest.raises(ValueError, match="is not an sfbd checkpoint") as exc:
        load_denoiser(path)
    _one_line(exc)


def test_feature_network_with_code_is_refused(tmp_path, marker):
    net = tmp_path / "net.pt"
    net.write_bytes(_torch_bytes({"model": Evil(marker)}))
    with pytest.raises(ValueError, match=f"feature network: {net} is not a TorchScript") as exc:
        load_feature_net(net)
    _one_line(exc)
    pt2 = tmp_path / "net.pt2"
    pt2.write_bytes(_torch_bytes(Evil(marker)))
    with pytest.raises(ValueError, match="is not a TorchScript file or exported program") as exc:
        load_feature_net(pt2)
    _one_line(exc)


def test_exported_program_with_code_is_refused(tmp_path, marker):
    """torch.export.load alone would run this: it unpickles the example inputs in full when
    the weights-only load fails."""
    import zipfile

    class Flatten(torch.nn.Module):
        def forward(self, x):
            return x.flatten(1)

    good, evil = tmp_path / "good.pt2", tmp_path / "evil.pt2"
    torch.export.save(torch.export.export(Flatten(), (torch.zeros(2, 1, 2, 2),)), good)
    assert load_feature_net(good)(torch.ones(2, 1, 2, 2)).shape == (2, 4)
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        for name in src.namelist():
            inputs = "sample_inputs/" in name
            dst.writestr(name, _torch_bytes((Evil(marker),)) if inputs else src.read(name))
    with pytest.raises(ValueError, match="is not a TorchScript file or exported program") as exc:
        load_feature_net(evil)
    assert "holds more than tensors" in _one_line(exc)


def test_inception_weights_with_code_are_refused(tmp_path, marker):
    from sfbd.metrics.fid import build_inception

    weights = tmp_path / "inception.pth"
    weights.write_bytes(_torch_bytes({"Conv2d_1a_3x3.conv.weight": Evil(marker)}))
    with pytest.raises(ValueError, match="is not pytorch-fid's Inception weights") as exc:
        build_inception(weights, download=False)
    assert "holds more than tensors" in _one_line(exc)


def _object_npz(marker) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, mu=np.array([Evil(marker)], dtype=object), sigma=np.eye(2))
    return buffer.getvalue()


def test_statistics_with_objects_or_code_or_junk_are_refused(tmp_path, marker):
    stats = tmp_path / "stats.npz"
    stats.write_bytes(_object_npz(marker))
    with pytest.raises(ValueError, match="array 'mu' holds Python objects") as exc:
        load_stats(stats)
    assert _one_line(exc).startswith(f"FID: statistics file {stats}")
    stats.write_bytes(_torch_bytes({"mu": Evil(marker)}))  # a zip, but no .npy arrays
    with pytest.raises(ValueError, match="needs arrays mu and sigma") as exc:
        load_stats(stats)
    _one_line(exc)
    stats.write_bytes(os.urandom(2048))
    with pytest.raises(ValueError, match="is not an .npz archive") as exc:
        load_stats(stats)
    _one_line(exc)


def test_cached_reference_statistics_are_never_unpickled(tmp_path, marker):
    images = np.random.default_rng(0).uniform(-1, 1, (8, 1, 4, 4)).astype(np.float32)

    def features(x):
        return x.flatten(1)

    cache = tmp_path / "cache"
    mu, _ = reference_stats(images, features, cache, "fd-test")
    (cached,) = cache.iterdir()
    cached.write_bytes(_object_npz(marker))  # someone swapped the cache file
    with pytest.raises(ValueError, match="holds Python objects") as exc:
        reference_stats(images, features, cache, "fd-test")
    assert "delete it to recompute" in _one_line(exc)
    cached.unlink()
    assert np.allclose(reference_stats(images, features, cache, "fd-test")[0], mu)


def test_npz_data_set_with_object_array_or_junk_is_refused(tmp_path, marker):
    data = tmp_path / "data.npz"
    buffer = io.BytesIO()
    np.savez(buffer, images=np.array([Evil(marker)] * 4, dtype=object))
    data.write_bytes(buffer.getvalue())
    with pytest.raises(ValueError, match="holds Python objects") as exc:
        load_source(f"npz:{data}")
    assert _one_line(exc).startswith(f"dataset: {data}")
    data.write_bytes(os.urandom(1000))
    with pytest.raises(ValueError, match=f"dataset: {data} is not an .npz archive") as exc:
        load_source(f"npz:{data}")
    _one_line(exc)
    # A good one still loads.
    np.savez(data, images=np.zeros((4, 1, 2, 2), np.uint8))
    assert load_source(f"npz:{data}").items.shape == (4, 1, 2, 2)


def test_safe_loaders_read_what_we_write(tmp_path):
    state = {"step": 3, "w": torch.arange(4.0)}
    assert torch.equal(torch_load(_torch_bytes(state), "x")["w"], state["w"])
    np.savez(tmp_path / "a.npz", mu=np.ones(3), sigma=np.eye(3))
    with open_npz(tmp_path / "a.npz", "a") as z:
        assert z.keys() == ["mu", "sigma"] and z["sigma"].shape == (3, 3)
        with pytest.raises(ValueError, match="a has no array 'x'"):
            z["x"]
