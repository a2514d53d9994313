"""The clean/noisy split, the Parquet store and the prepare job."""

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from PIL import Image

from sfbd.cli import main
from sfbd.data import load_source, noise_for, read_manifest, read_split, verify_split
from sfbd.data.prepare import DataConfig, prepare
from sfbd.data.sources import DEBIAN_FASHION_MNIST
from sfbd.data.store import (
    auto_encoding,
    items_table,
    split_encoding,
    table_items,
    write_shards,
)

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
    held_ids, held = read_split(out, "holdout")
    held_expected = round(0.02 * (500 - expected))  # the default holdout_fraction
    assert len(clean_ids) == expected and len(held_ids) == held_expected
    assert len(noisy_ids) == 500 - expected - held_expected
    assert clean.shape == (expected, 3, 8, 8) and noisy.dtype == held.dtype == np.float32
    # Every id exactly once, across the three splits.
    every = np.concatenate([clean_ids, noisy_ids, held_ids])
    assert sorted(every.tolist()) == list(range(500))
    m = read_manifest(out)
    assert m["splits"]["clean"]["count"] == expected
    assert m["splits"]["holdout"]["count"] == held_expected
    assert sum(s["rows"] for s in m["splits"]["noisy"]["shards"]) == len(noisy_ids)


def test_same_seed_gives_identical_bytes_other_seed_differs(tmp_path, npz_images):
    a = _prepare(tmp_path, npz_images[0], "a", clean_fraction=0.1, seed=7, shard_size=100)
    b = _prepare(tmp_path, npz_images[0], "b", clean_fraction=0.1, seed=7, shard_size=100)
    c = _prepare(tmp_path, npz_images[0], "c", clean_fraction=0.1, seed=8, shard_size=100)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 1 + 1 + 5 + 1  # manifest, clean, noisy (441 rows), holdout (9)
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


@pytest.mark.parametrize("noisy_dtype", ["float32", "float16"])
def test_no_clean_original_of_the_noisy_part_is_written(tmp_path, npz_images, noisy_dtype):
    path, images = npz_images
    out = _prepare(tmp_path, path, clean_fraction=0.1, noisy_dtype=noisy_dtype)
    blob = b"".join(p.read_bytes() for p in out.rglob("*") if p.is_file())
    items = images.astype(np.float32) / 127.5 - 1
    noisy_ids, _ = read_split(out, "noisy")
    clean_ids, _ = read_split(out, "clean")
    # Positive control: the clean items are found row by row in the encoding they are stored
    # in, 8-bit pixel codes (8 bytes a row), and not as float32 rows...
    assert split_encoding(out, "clean") == "uint8"
    assert all(images[i, 0, 3].tobytes() in blob for i in clean_ids)
    assert not any(items[i, 0, 3].tobytes() in blob for i in clean_ids)
    # ...while no row of any noisy-set original is, in any encoding: float32 (32 bytes),
    # float16 (16 bytes) or pixel codes (8 bytes); nor the original uint8 image.
    rows = [(i, c, r) for i in noisy_ids for c in range(3) for r in range(8)]
    assert not any(items[i, c, r].tobytes() in blob for i, c, r in rows)
    assert not any(items[i, c, r].astype(np.float16).tobytes() in blob for i, c, r in rows)
    assert not any(images[i, c, r].tobytes() in blob for i, c, r in rows)
    assert not any(images[i].tobytes() in blob for i in noisy_ids)


def _x_bytes(shard: Path) -> int:
    """Bytes of the `x` column in a shard file (its only row group)."""
    return pq.ParquetFile(shard).metadata.row_group(0).column(1).total_compressed_size


def test_compact_storage_is_exact_for_8_bit_clean_items_and_halves_float16(tmp_path, npz_images):
    path, images = npz_images
    a = _prepare(tmp_path, path, "a", clean_fraction=0.5)
    b = _prepare(tmp_path, path, "b", clean_fraction=0.5, noisy_dtype="float16")
    encodings = {k: v["encoding"] for k, v in read_manifest(b)["splits"].items()}
    assert encodings == {"clean": "uint8", "noisy": "float16", "holdout": "float16"}
    assert read_manifest(a)["splits"]["noisy"]["encoding"] == "float32"
    # Clean: bit-identical to the source's float32 items, in a quarter of float32's bytes.
    ids, clean = read_split(b, "clean")
    assert clean.dtype == np.float32
    assert np.array_equal(clean, images[ids].astype(np.float32) / 127.5 - 1)
    write_shards(tmp_path / "f32", ids, clean, 1000, "float32")
    u8, f32 = (
        _x_bytes(b / "clean" / "part-00000.parquet"),
        _x_bytes(tmp_path / "f32" / "part-00000.parquet"),
    )
    assert clean.size <= u8 < clean.size + 1024 and abs(f32 / u8 - 4) < 0.01
    # Noisy: float16's rounding of the float32 observations, in half the bytes.
    ids16, y16 = read_split(b, "noisy")
    ids32, y32 = read_split(a, "noisy")
    assert np.array_equal(ids16, ids32) and y16.dtype == np.float32
    assert np.array_equal(y16, y32.astype(np.float16).astype(np.float32))
    assert np.all(np.abs(y16 - y32) <= np.abs(y32) * 2.0**-11 + 2.0**-24)
    half = _x_bytes(b / "noisy" / "part-00000.parquet") / _x_bytes(
        a / "noisy" / "part-00000.parquet"
    )
    assert abs(half - 0.5) < 0.01
    # The storage dtype is part of the prepared identity.
    with pytest.raises(FileExistsError, match="other settings"):
        _prepare(tmp_path, path, "b", clean_fraction=0.5)


def test_every_encoding_decodes_and_uint8_takes_only_pixel_codes():
    codes = np.arange(256, dtype=np.uint8).reshape(4, 64)
    items = codes.astype(np.float32) / 127.5 - 1
    for encoding in ("float32", "float16", "uint8"):
        ids, back = table_items(items_table(np.arange(4), items, encoding), (64,))
        assert ids.tolist() == [0, 1, 2, 3] and back.dtype == np.float32
        assert np.abs(back - items).max() <= (2.0**-11 if encoding == "float16" else 0)
    # A slice of a table decodes its own rows (uint8 codes sit in one shared buffer).
    table = items_table(np.arange(4), items, "uint8").slice(1, 2)
    assert np.array_equal(table_items(table, (64,))[1], items[1:3])
    assert auto_encoding(items, "image") == "uint8" and auto_encoding(items, "vector") == "float32"
    assert auto_encoding(items + 1e-3, "image") == "float32"
    with pytest.raises(ValueError, match="encoding: uint8"):
        items_table(np.arange(4), items * 0.999, "uint8")
    with pytest.raises(ValueError, match="encoding: 'int4'; allowed"):
        items_table(np.arange(4), items, "int4")


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
    assert y.shape == (931, 2) and read_split(out, "clean")[1].shape == (50, 2)
    assert read_split(out, "holdout")[1].shape == (19, 2)  # 2% of the 950 observed
    r = np.linalg.norm(read_split(out, "clean")[1], axis=1)
    assert abs(r.mean() - 1.0) < 0.05  # clean points lie on the unit ring
    assert split_encoding(out, "clean") == "float32"  # vectors: never pixel codes


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
    assert summary["clean"] == 2400 and summary["noisy"] + summary["holdout"] == 57600
    assert summary["holdout"] == 1152  # 2% of the observed items, never denoised or trained
    assert read_manifest(out)["item_shape"] == [1, 28, 28]
    verify_split(out)


# --- bad input: one clear line, nothing written ---------------------------------------------


def _bad_inputs(tmp_path):
    nan = tmp_path / "nan.npz"
    np.savez(nan, images=np.where(np.eye(4)[None, None] > 0, np.nan, 0.0).repeat(10, 0))
    inf = tmp_path / "inf.npz"
    np.savez(inf, x=np.array([[0.0, np.inf]] * 10))
    empty = tmp_path / "empty"
    empty.mkdir()
    return [
        (["--dataset", "toy2d", "--tau", "0"], "tau"),
        (["--dataset", "toy2d", "--tau", "-1"], "tau"),
        (["--dataset", "toy2d", "--clean-fraction", "0"], "clean_fraction"),
        (["--dataset", "toy2d", "--clean-fraction", "1"], "clean_fraction"),
        (["--dataset", "toy2d", "--clean-fraction", "1.5"], "clean_fraction"),
        (["--dataset", "imagenet"], "unknown dataset"),
        (["--dataset", "toy2d", "--holdout-fraction", "1"], "holdout_fraction"),
        (
            ["--dataset", "toy2d", "--clean-fraction", "0", "--pretrain", "mnist:val"],
            "train or test",
        ),
        (["--dataset", f"folder:{tmp_path / 'nope'}"], "does not exist"),
        (["--dataset", f"npz:{tmp_path / 'nope.npz'}"], "does not exist"),
        (["--dataset", f"npz:{nan}"], "NaN or infinite"),
        (["--dataset", f"npz:{inf}"], "NaN or infinite"),
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


def test_holdout_observations_are_the_noisy_ones_a_run_without_holdout_would_see(
    tmp_path, npz_images
):
    """Holding out changes which noisy items are trained on, never their values: the union of
    noisy and holdout is, id by id and byte by byte, the noisy split of holdout_fraction 0."""
    path, _ = npz_images
    none = _prepare(tmp_path, path, "none", clean_fraction=0.1, holdout_fraction=0.0)
    held = _prepare(tmp_path, path, "held", clean_fraction=0.1, holdout_fraction=0.2)
    assert read_manifest(none)["splits"]["holdout"]["count"] == 0
    ids0, y0 = read_split(none, "noisy")
    ids_n, y_n = read_split(held, "noisy")
    ids_h, y_h = read_split(held, "holdout")
    assert len(ids_h) == 90 and len(ids_n) == 360
    ids, y = np.concatenate([ids_n, ids_h]), np.concatenate([y_n, y_h])
    order = np.argsort(ids)
    np.testing.assert_array_equal(ids[order], ids0)
    np.testing.assert_array_equal(y[order], y0)
    assert read_split(held, "clean")[0].tolist() == read_split(none, "clean")[0].tolist()


def test_data_prepared_before_the_holdout_existed_reads_as_none_held_out(tmp_path):
    out = tmp_path / "toy"
    cfg = DataConfig(dataset="toy2d", num=300, clean_fraction=0.1, holdout_fraction=0.0)
    prepare(cfg, out, log=lambda *_: None)
    manifest = json.loads((out / "manifest.json").read_text())
    del manifest["splits"]["holdout"], manifest["config"]["holdout_fraction"]
    del manifest["config"]["pretrain"], manifest["config"]["pretrain_limit"]
    (out / "manifest.json").write_text(json.dumps(manifest))
    seen = []
    prepare(cfg, out, log=seen.append)  # the same data: nothing redone
    assert "nothing to do" in seen[-1]
    ids, items = read_split(out, "holdout")
    assert ids.shape == (0,) and items.shape == (0, 2)
    verify_split(out)


def test_a_similar_data_set_as_the_clean_set(tmp_path):
    """data.pretrain: its items are the clean set (ids after the observed set's) and, with
    clean_fraction 0, every item of the data set is observed noisy or held out."""
    cfg = DataConfig(
        dataset="toy2d",
        num=1000,
        clean_fraction=0.0,
        holdout_fraction=0.05,
        pretrain="toy2d:rotate=90",
        pretrain_limit=40,
    )
    out = prepare(cfg, tmp_path / "p", log=lambda *_: None).local
    clean_ids, clean = read_split(out, "clean")
    noisy_ids, _ = read_split(out, "noisy")
    held_ids, _ = read_split(out, "holdout")
    assert clean_ids.tolist() == list(range(1000, 1040))
    assert len(noisy_ids) == 950 and len(held_ids) == 50
    assert sorted(np.concatenate([noisy_ids, held_ids]).tolist()) == list(range(1000))
    # The toy turned by 90 degrees, drawn with seed + 1: (x, y) -> (-y, x) of those points.
    drawn = load_source("toy2d", num=1000, seed=cfg.seed + 1).items[:40]
    np.testing.assert_allclose(clean, np.stack([-drawn[:, 1], drawn[:, 0]], 1), atol=1e-6)
    assert read_manifest(out)["pretrain"] == {"source": "toy2d:rotate=90", "count": 40}


def test_bad_pretrain_and_holdout_settings_fail_before_any_work(tmp_path, npz_images):
    path, _ = npz_images
    cases = [
        (dict(clean_fraction=0.0), "clean_fraction: 0 needs data.pretrain"),
        (dict(pretrain="npz:/nonexistent.npz"), "pretrain: dataset: npz path"),
        (dict(pretrain="toy2d:spin=3"), "toy2d:rotate=DEG"),
        (dict(pretrain="fashion-mnist:val"), "train or test"),
        (dict(pretrain_limit=5), "pretrain_limit: set, but data.pretrain is not"),
        (dict(holdout_fraction=1.0), "holdout_fraction: 1.0; must lie in [0, 1)"),
        (dict(holdout_fraction=0.999), "nothing would be left"),
        (dict(pretrain="toy2d", clean_fraction=0.0), "pretrain: toy2d holds items of shape [2]"),
    ]
    for kw, needle in cases:
        with pytest.raises((ValueError, OSError), match=re.escape(needle)):
            _prepare(tmp_path, path, "bad", **{"clean_fraction": 0.1, **kw})
        assert not (tmp_path / "bad").exists(), kw
