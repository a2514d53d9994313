"""The clean/noisy split, the Parquet store and the prepare job."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sfbd.cli import main
from sfbd.data import load_source, noise_for, read_manifest, read_split, verify_split
from sfbd.data.prepare import DataConfig, prepare
from sfbd.data.sources import DEBIAN_FASHION_MNIST

ROOT = Path(__file__).resolve().parents[1]
TAU = 0.59


@pytest.fixture
def npz_images(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(500, 3, 8, 8), dtype=np.uint8)
    path = tmp_path / "images.npz"
    np.savez(path, images=images)
    return path, images


def _prepare(tmp_path, src, name="out", **kw):
    cfg = DataConfig(dataset=f"npz:{src}", tau=TAU, **kw)
    return prepare(cfg, tmp_path / name, log=lambda *_: None).local


@pytest.mark.parametrize("fraction,expected", [(0.04, 20), (0.1, 50), (0.5, 250), (0.998, 499)])
def test_exact_counts(tmp_path, npz_images, fraction, expected):
    out = _prepare(tmp_path, npz_images[0], clean_fraction=fraction, shard_size=64)
    clean_ids, clean = read_split(out, "clean")
    noisy_ids, noisy = read_split(out, "noisy")
    assert len(clean_ids) == expected and len(noisy_ids) == 500 - expected
    assert clean.shape == (expected, 3, 8, 8) and noisy.dtype == np.float32
    # Every id exactly once, across both splits.
    assert sorted(np.concatenate([clean_ids, noisy_ids]).tolist()) == list(range(500))
    m = read_manifest(out)
    assert m["splits"]["clean"]["count"] == expected
    assert sum(s["rows"] for s in m["splits"]["noisy"]["shards"]) == 500 - expected


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path, npz_images):
    a = _prepare(tmp_path, npz_images[0], "a", clean_fraction=0.1, seed=7, shard_size=100)
    b = _prepare(tmp_path, npz_images[0], "b", clean_fraction=0.1, seed=7, shard_size=100)
    c = _prepare(tmp_path, npz_images[0], "c", clean_fraction=0.1, seed=8, shard_size=100)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 1 + 1 + 5
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f
    assert read_split(a, "noisy")[0].tolist() != read_split(c, "noisy")[0].tolist()


def test_noise_has_std_tau_and_depends_only_on_seed_and_id(tmp_path, npz_images):
    path, images = npz_images
    out = _prepare(tmp_path, path, clean_fraction=0.1, seed=3)
    ids, y = read_split(out, "noisy")
    x = images[ids].astype(np.float32) / 127.5 - 1
    eps = (y - x) / TAU
    assert abs(eps.mean()) < 0.01 and abs(eps.std() - 1) < 0.01
    # Reproducible from (seed, i) alone, whatever else is drawn with it.
    np.testing.assert_allclose(eps[5], noise_for(3, ids[5:6], (3, 8, 8))[0], atol=1e-5)
    np.testing.assert_array_equal(
        noise_for(3, ids[[5, 9]], (3, 8, 8))[0], noise_for(3, ids[[5]], (3, 8, 8))[0]
    )


def test_no_clean_original_of_the_noisy_part_is_written(tmp_path, npz_images):
    path, images = npz_images
    out = _prepare(tmp_path, path, clean_fraction=0.1)
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    items = images.astype(np.float32) / 127.5 - 1
    noisy_ids, _ = read_split(out, "noisy")
    clean_ids, _ = read_split(out, "clean")
    # Positive control: the clean items' bytes are found, row by row (8 floats = 32 bytes)...
    assert all(items[i, 0, 3].tobytes() in blob for i in clean_ids)
    # ...while no row of any noisy-set original, nor the original uint8 image, is.
    assert not any(
        items[i, c, r].tobytes() in blob for i in noisy_ids for c in range(3) for r in range(8)
    )
    assert not any(images[i].tobytes() in blob for i in noisy_ids)


def test_manifest_detects_a_changed_shard(tmp_path, npz_images):
    out = _prepare(tmp_path, npz_images[0], clean_fraction=0.1, shard_size=128)
    verify_split(out)
    shard = out / "noisy" / "part-00001.parquet"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="part-00001.parquet"):
        verify_split(out)
    with pytest.raises(ValueError, match="sha256"):
        read_split(out, "noisy", verify=True)


def test_prepare_is_idempotent_and_refuses_other_settings(tmp_path, npz_images):
    out = _prepare(tmp_path, npz_images[0], clean_fraction=0.1)
    mtime = (out / "manifest.json").stat().st_mtime_ns
    _prepare(tmp_path, npz_images[0], clean_fraction=0.1)
    assert (out / "manifest.json").stat().st_mtime_ns == mtime
    with pytest.raises(FileExistsError, match="out"):
        _prepare(tmp_path, npz_images[0], clean_fraction=0.2)
    assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]


def test_folder_source(tmp_path):
    folder = tmp_path / "pics"
    folder.mkdir()
    for i in range(6):
        Image.fromarray(np.full((4, 4, 3), 40 * i, dtype=np.uint8)).save(folder / f"{i}.png")
    src = load_source(f"folder:{folder}")
    assert src.items.shape == (6, 3, 4, 4)
    assert src.items.min() == -1.0 and src.items[5].max() == pytest.approx(200 / 127.5 - 1)


def test_toy2d(tmp_path):
    out = prepare(
        DataConfig(dataset="toy2d", num=1000, clean_fraction=0.05),
        tmp_path / "toy",
        log=lambda *_: None,
    )
    ids, y = read_split(out, "noisy")
    assert y.shape == (950, 2) and read_split(out, "clean")[1].shape == (50, 2)
    r = np.linalg.norm(read_split(out, "clean")[1], axis=1)
    assert abs(r.mean() - 1.0) < 0.05  # clean points lie on the unit ring


@pytest.mark.skipif(
    not DEBIAN_FASHION_MNIST.is_dir(),
    reason="apt-get install dataset-fashion-mnist (CI installs it)",
)
def test_fashion_mnist_job(tmp_path):
    out = tmp_path / "fm"
    r = subprocess.run(
        [
            sys.executable,
            str(ROOT / "jobs/prepare_data.py"),
            "--dataset",
            "fashion-mnist",
            "--clean-fraction",
            "0.04",
            "--tau",
            "0.59",
            "--seed",
            "0",
            "--out",
            str(out),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["clean"] == 2400 and summary["noisy"] == 57600
    assert read_manifest(out)["item_shape"] == [1, 28, 28]
    verify_split(out)


# --- bad input: one clear line, nothing written ---------------------------------------------


def _bad_inputs(tmp_path):
    nan = tmp_path / "nan.npz"
    np.savez(nan, images=np.where(np.eye(4)[None, None] > 0, np.nan, 0.0).repeat(10, 0))
    inf = tmp_path / "inf.npz"
    np.savez(inf, x=np.array([[0.0, np.inf]] * 10))
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    Image.fromarray(np.zeros((4, 4), np.uint8)).save(mixed / "a.png")
    Image.fromarray(np.zeros((5, 4), np.uint8)).save(mixed / "b.png")
    empty = tmp_path / "empty"
    empty.mkdir()
    return [
        (["--dataset", "toy2d", "--tau", "0"], "tau"),
        (["--dataset", "toy2d", "--tau", "-1"], "tau"),
        (["--dataset", "toy2d", "--clean-fraction", "0"], "clean_fraction"),
        (["--dataset", "toy2d", "--clean-fraction", "1"], "clean_fraction"),
        (["--dataset", "toy2d", "--clean-fraction", "1.5"], "clean_fraction"),
        (["--dataset", "imagenet"], "unknown dataset"),
        (["--dataset", f"folder:{tmp_path / 'nope'}"], "does not exist"),
        (["--dataset", f"npz:{tmp_path / 'nope.npz'}"], "does not exist"),
        (["--dataset", f"npz:{nan}"], "NaN or infinite"),
        (["--dataset", f"npz:{inf}"], "NaN or infinite"),
        (["--dataset", f"folder:{mixed}"], "mixed image shapes"),
        (["--dataset", f"folder:{empty}"], "no PNG or JPEG"),
    ]


def test_the_old_sigma_flag_is_refused_naming_tau(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["prepare", "--dataset", "toy2d", "--sigma", "0.5", "--out", str(tmp_path / "o")])
    assert exc.value.code == 2
    assert "--sigma is now --tau" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_data_prepared_before_the_tau_rename_is_still_recognised(tmp_path):
    """A manifest whose recorded settings say `sigma` is the same data as `tau`."""
    out = tmp_path / "toy"
    cfg = DataConfig(dataset="toy2d", num=300, clean_fraction=0.1)
    prepare(cfg, out, log=lambda *_: None)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["config"]["sigma"] = manifest["config"].pop("tau")
    (out / "manifest.json").write_text(json.dumps(manifest))
    seen = []
    prepare(cfg, out, log=seen.append)  # recognised: nothing redone
    assert "nothing to do" in seen[-1]
    with pytest.raises(FileExistsError, match="other settings"):
        prepare(DataConfig(dataset="toy2d", num=300, clean_fraction=0.1, tau=0.3), out)


def test_bad_inputs(tmp_path, capsys):
    for args, needle in _bad_inputs(tmp_path):
        out = tmp_path / "out"
        rc = main(["prepare", *args, "--out", str(out)])
        err = capsys.readouterr().err
        assert rc == 2, args
        assert needle in err, (args, err)
        assert len(err.strip().splitlines()) == 1, err
        assert not out.exists(), args
        assert not [p for p in tmp_path.iterdir() if ".tmp" in p.name]
