"""Image folders and EDM zips: the centre crop, the parallel prepare with Ray Data, errors."""

import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sfbd.cli import main
from sfbd.data import read_manifest, read_split
from sfbd.data.images import ImageError, center_crop, image_item, list_image_files
from sfbd.data.prepare import DataConfig, _same_identity, prepare
from sfbd.stages.prepare_images import prepare_images

QUIET = {"log": lambda *_: None}
SPLITS = ("clean", "noisy", "holdout")


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def _columns(width: int, height: int) -> np.ndarray:
    """An RGB image whose column j holds 10 * j + 5 + c in channel c."""
    values = 10 * np.arange(width, dtype=np.uint8)[None, :, None] + 5 + np.arange(3)
    return np.broadcast_to(values, (height, width, 3)).astype(np.uint8)


def test_centre_crop_keeps_the_centre_square_and_scales_it():
    wide = image_item(_png(_columns(6, 4)), "wide.png", 4)  # 6 wide, 4 high
    assert wide.shape == (3, 4, 4)
    assert (wide == _columns(6, 4)[:, 1:5].transpose(2, 0, 1)).all()  # columns 1..4
    odd = image_item(_png(_columns(7, 4)), "odd.png", 4)
    assert (odd == _columns(7, 4)[:, 1:5].transpose(2, 0, 1)).all()  # left offset (7-4)//2
    rows = _columns(9, 3).transpose(1, 0, 2).copy()  # 3 wide, 9 high: distinct rows
    tall = image_item(_png(rows), "tall.png", 3)
    assert (tall == rows[3:6].transpose(2, 0, 1)).all()  # rows 3..5
    grey = np.full((1, 12, 8), 77, np.uint8)  # scaled: Lanczos keeps a flat image flat
    assert (center_crop(grey, 3) == 77).all() and center_crop(grey, 3).shape == (1, 3, 3)
    assert image_item(_png(_columns(6, 4)), "same.png", None).shape == (3, 4, 6)


def test_decoding_scales_16_bit_grey_and_skips_macos_files(tmp_path):
    # 16-bit greyscale: scaled to 8 bits (Pillow's own conversion would clip 4000 to 255).
    wide = np.arange(16, dtype=np.uint16).reshape(4, 4) * 4369  # 0 .. 65535
    assert np.array_equal(image_item(_png(wide), "w.png", None)[0], wide // 257)
    # Greyscale with alpha is greyscale.
    la = Image.fromarray(np.full((4, 4, 2), 100, np.uint8), "LA")
    buf = io.BytesIO()
    la.save(buf, format="PNG")
    assert image_item(buf.getvalue(), "la.png", None).shape == (1, 4, 4)
    # macOS's resource forks are not images; a damaged zip member is one line naming it.
    path = tmp_path / "d.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("00000/img00000000.png", _png(np.zeros((4, 4), np.uint8)))
        z.writestr("00000/._img00000000.png", b"fork")
        z.writestr("__MACOSX/00000/img00000000.png", b"fork")
    files = list_image_files(f"zip:{path}")
    assert files.names == ("00000/img00000000.png",)
    raw = bytearray(path.read_bytes())
    start = raw.index(b"00000/img00000000.png") + len("00000/img00000000.png")
    raw[start + 4 : start + 12] = b"\xff" * 8  # inside the first member's compressed data
    path.write_bytes(bytes(raw))
    with files.reader() as reader, pytest.raises(ImageError, match="cannot read .*img00000000"):
        reader.read(files.names[0])


def test_resolution_is_checked_with_the_config(tmp_path):
    for bad in (0, -2, 3.5, "64", True):
        with pytest.raises(ValueError, match="resolution: .*whole number"):
            DataConfig(dataset=f"folder:{tmp_path}", resolution=bad).validate()
    with pytest.raises(ValueError, match="resolution: 32 applies to folder: and zip:"):
        DataConfig(dataset="toy2d", resolution=32).validate()
    assert DataConfig(dataset=f"folder:{tmp_path}", resolution=16).identity()["resolution"] == 16
    # Data prepared before the key existed was made at the images' own size.
    before = DataConfig(dataset=f"folder:{tmp_path}").identity()
    del before["resolution"]
    assert _same_identity(before, DataConfig(dataset=f"folder:{tmp_path}"))
    assert not _same_identity(before, DataConfig(dataset=f"folder:{tmp_path}", resolution=8))


@pytest.fixture(scope="module")
def edm_folder(tmp_path_factory):
    """Images in EDM's layout (`00000/img00000000.png`): 6x4 and 4x4 RGB, one 8x8 below."""
    folder = tmp_path_factory.mktemp("edm") / "pics"
    rng = np.random.default_rng(0)
    for i in range(24):
        shape = [(4, 6, 3), (4, 4, 3), (8, 8, 3)][0 if i % 2 else (2 if i == 10 else 1)]
        path = folder / f"{i // 10:05d}" / f"img{i:08d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    (folder / "dataset.json").write_text(json.dumps({"labels": None}))
    return folder


def _config(spec: str, **kw) -> DataConfig:
    base = dict(clean_fraction=0.25, tau=0.5, holdout_fraction=0.2, shard_size=8, resolution=4)
    return DataConfig(dataset=spec, **{**base, **kw})


def _splits(out) -> dict:
    return {s: read_split(out, s) for s in SPLITS}


def _same(a: dict, b: dict) -> bool:
    return all(np.array_equal(a[s][0], b[s][0]) and np.array_equal(a[s][1], b[s][1]) for s in a)


@pytest.fixture(scope="module")
def edm_prepared(edm_folder, ray_cluster):
    """`edm_folder` prepared with Ray Data (resolution 4)."""
    return prepare_images(_config(f"folder:{edm_folder}"), edm_folder.parent / "ray", **QUIET)


def test_a_folder_prepares_in_parallel_as_it_does_in_process(tmp_path, edm_folder, edm_prepared):
    out = edm_prepared
    manifest = read_manifest(out)
    assert manifest["item_shape"] == [3, 4, 4] and manifest["num_items"] == 24
    counts = {s: manifest["splits"][s]["count"] for s in SPLITS}
    assert counts == {"clean": 6, "noisy": 14, "holdout": 4}
    assert manifest["config"]["resolution"] == 4
    assert not (out / ".parts").exists() and not Path(f"{out}.tmp").exists()
    assert [len(manifest["splits"][s]["shards"]) for s in SPLITS] == [1, 2, 1]
    got = _splits(out)
    ids = np.sort(np.concatenate([got[s][0] for s in SPLITS]))
    assert (ids == np.arange(24)).all()  # every image once, in one split

    # The in-process path on the same folder: the same split and the same shards, byte for byte.
    mem = prepare(_config(f"folder:{edm_folder}"), tmp_path / "mem", **QUIET)
    assert _same(got, _splits(mem))
    assert manifest["splits"] == read_manifest(mem)["splits"]

    # Clean items are the images' centre squares exactly (the 6x4 ones: columns 1..4).
    names = list_image_files(f"folder:{edm_folder}").names
    for i, x in zip(*got["clean"], strict=True):
        image = np.asarray(Image.open(edm_folder / names[i])).transpose(2, 0, 1)
        crop = image[:, :, 1:5] if image.shape[2] == 6 else center_crop(image, 4)
        assert np.array_equal(x, crop.astype(np.float32) / 127.5 - 1), names[i]

    # A file:// URI of the same folder writes the same bytes.
    uri = prepare_images(_config(f"folder:file://{edm_folder}"), tmp_path / "uri", **QUIET)
    assert read_manifest(uri)["splits"] == manifest["splits"]


def test_an_edm_zip_prepares_the_same_items_as_its_folder(tmp_path, edm_folder, edm_prepared):
    archive = tmp_path / "dataset.zip"
    with zipfile.ZipFile(archive, "w") as z:  # as EDM's dataset_tool writes it
        for f in sorted(edm_folder.rglob("*")):
            if f.is_file():
                z.write(f, f.relative_to(edm_folder).as_posix())
    folder = edm_prepared
    zipped = tmp_path / "z"
    args = "--clean-fraction 0.25 --tau 0.5 --holdout-fraction 0.2 --shard-size 8 --resolution 4"
    assert (
        main(["prepare", "--dataset", f"zip:{archive}", *args.split(), "--out", str(zipped)]) == 0
    )
    assert _same(_splits(zipped), _splits(folder))
    assert read_manifest(zipped)["splits"] == read_manifest(folder)["splits"]
    as_folder = prepare(_config(f"folder:{archive}"), tmp_path / "fz", **QUIET)  # in process
    assert _same(_splits(as_folder), _splits(folder))


def _no_output(tmp_path) -> bool:
    return not (tmp_path / "out").exists() and not (tmp_path / "out.tmp").exists()


def test_bad_images_name_the_file_and_leave_nothing(tmp_path, edm_folder, ray_cluster):
    rgb = np.zeros((4, 4, 3), np.uint8)
    cases = {
        "broken": ({"img00000005.png": b"\x89PNG not really"}, "img00000005.png is not a readable"),
        "grey": ({"img00000007.png": _png(rgb[..., 0])}, "mixed channel counts: .*has 1"),
    }
    for name, (files, message) in cases.items():
        folder = tmp_path / name
        folder.mkdir()
        for i in range(8):
            (folder / f"img{i:08d}.png").write_bytes(files.get(f"img{i:08d}.png", _png(rgb)))
        with pytest.raises(ImageError, match=message):
            prepare_images(_config(f"folder:{folder}"), tmp_path / "out", **QUIET)
        assert _no_output(tmp_path), name
    with pytest.raises(ImageError, match="mixed image shapes: .* set data.resolution"):
        prepare_images(_config(f"folder:{edm_folder}", resolution=None), tmp_path / "out", **QUIET)
    assert _no_output(tmp_path)


def test_empty_or_missing_sources_fail_before_any_work(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    with zipfile.ZipFile(tmp_path / "empty.zip", "w") as z:
        z.writestr("dataset.json", "{}")
    (tmp_path / "junk.zip").write_bytes(b"not a zip")
    cases = [
        ("folder:" + str(tmp_path / "empty"), "folder .*empty has no PNG or JPEG"),
        ("zip:" + str(tmp_path / "empty.zip"), "zip .*empty.zip has no PNG or JPEG"),
        ("folder:" + str(tmp_path / "empty.zip"), "zip .*empty.zip has no PNG or JPEG"),
        ("zip:" + str(tmp_path / "junk.zip"), "junk.zip is not a zip file"),
        ("folder:" + str(tmp_path / "nope"), "folder path .*nope does not exist"),
        ("zip:" + str(tmp_path / "nope.zip"), "zip path .*nope.zip does not exist"),
        (f"folder:file://{tmp_path}/nope", "nope does not exist"),
        ("zip:" + str(tmp_path / "empty"), "zip path .*empty is not a file"),
    ]
    for spec, message in cases:  # no Ray needed: these fail while listing
        with pytest.raises((ValueError, OSError), match=message):
            prepare_images(_config(spec), tmp_path / "out", **QUIET)
        assert _no_output(tmp_path), spec
