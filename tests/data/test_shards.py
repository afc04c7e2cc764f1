"""data.shards: summary, labels, scaling, writing, and every bad input of §4."""

import json
import os
import re

import numpy as np
import pytest

from data import shard_rows, shards, split_summary
from tests.data._helpers import make_split, shard_arrays, write_npz


def test_inspect_split_summary(tmp_path):
    split = make_split(tmp_path / "trn", sizes=(7, 5, 6), undefined=(2, 9))
    s = split_summary.inspect_split(split)
    assert [f.name for f in s.files] == ["shard_000.npz", "shard_001.npz", "shard_002.npz"]
    assert s.n_pairs == 16 and s.n_skipped == 2 and s.pairs_per_file == [6, 4, 6]
    assert s.image_shape == (4, 4, 3) and s.dtype == np.uint8 and s.has_rowcol
    assert s.num_classes == 3 and s.class_names == ["c1", "c2", "c3"]
    labels = split_summary.read_labels(split)
    assert s.hist_t1.tolist() == np.bincount(labels["label_t1"], minlength=3).tolist()
    assert s.hist_t2.tolist() == np.bincount(labels["label_t2"], minlength=3).tolist()
    assert s.n_changed == int((labels["label_t1"] != labels["label_t2"]).sum()) > 0
    json.dumps(s.to_dict())
    text = s.format()
    assert "16 pairs" in text and "2 undefined" in text and "c3" in text


def test_read_labels_order_and_shift(tmp_path):
    split = make_split(tmp_path / "val", sizes=(5, 4), undefined=(1,))
    labels = split_summary.read_labels(split)
    ids = np.array([0, 2, 3, 4, 5, 6, 7, 8])
    assert labels["label_t1"].dtype == np.int32
    np.testing.assert_array_equal(labels["label_t1"], ids % 3)
    np.testing.assert_array_equal(labels["row"] * 10 + labels["col"], ids)
    assert labels["class_names"] == ["c1", "c2", "c3"]


def test_num_classes_from_labels_without_names(tmp_path):
    arrays = shard_arrays(classes=5)
    del arrays["class_names"], arrays["row"], arrays["col"]
    write_npz(tmp_path / "s" / "a.npz", **arrays)
    s = split_summary.inspect_split(tmp_path / "s")
    assert s.num_classes == 5 and s.class_names is None and not s.has_rowcol
    assert split_summary.read_labels(tmp_path / "s")["row"] is None
    assert split_summary.inspect_split(tmp_path / "s", num_classes=7).hist_t1.shape == (7,)


@pytest.mark.parametrize("dtype,value,expected", [
    (np.uint8, 255, 0.5), (np.uint8, 0, -0.5), (np.uint16, 65535, 0.5),
    (np.uint16, 32768, 32768 / 65535 - 0.5), (np.float32, 0.25, -0.25)])
def test_scale_images(dtype, value, expected):
    x = np.full((1, 2, 2, 1), value, dtype)
    y = shards.scale_images(x)
    assert y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-7)


def test_write_shard_round_trip(tmp_path):
    a = shard_arrays(dtype=np.uint16)
    (tmp_path / "s").mkdir()
    shards.write_shard(tmp_path / "s" / "x.npz", a["image_t1"], a["image_t2"], a["label_t1"],
                       a["label_t2"], a["row"], a["col"], ["c1", "c2", "c3"], compress=True)
    with np.load(tmp_path / "s" / "x.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["image_t1"], a["image_t1"])
        assert z["image_t1"].dtype == np.uint16
    assert split_summary.inspect_split(tmp_path / "s").class_names == ["c1", "c2", "c3"]
    assert [p.name for p in (tmp_path / "s").iterdir()] == ["x.npz"]  # no temporary left


def test_write_shard_stores_uncompressed_by_default(tmp_path):
    a = shard_arrays(n=5, dtype=np.float32)
    path = shards.write_shard(tmp_path / "x.npz", a["image_t1"], a["image_t2"], a["label_t1"],
                              a["label_t2"])
    for key in shards.IMAGE_KEYS:
        layout = shard_rows.stored_layout(path, key)
        assert layout is not None and layout.shape == (5, 4, 4, 3) and layout.dtype == np.float32
        np.testing.assert_array_equal(shard_rows.read_rows(path, layout, [4, 0, 1]), a[key][[4, 0, 1]])
    shards.write_shard(tmp_path / "z.npz", a["image_t1"], a["image_t2"], a["label_t1"],
                       a["label_t2"], compress=True)
    assert shard_rows.stored_layout(tmp_path / "z.npz", "image_t1") is None  # compressed: no offsets


def test_per_batch_read_of_a_truncated_shard(tmp_path):
    a = shard_arrays(n=6)
    path = shards.write_shard(tmp_path / "x.npz", a["image_t1"], a["image_t2"], a["label_t1"],
                              a["label_t2"])
    layout = shard_rows.stored_layout(path, "image_t2")
    os.truncate(path, layout.offset + 2 * layout.row_bytes + 5)  # shrinks after it was opened
    np.testing.assert_array_equal(shard_rows.read_rows(path, layout, [1, 0]), a["image_t2"][[1, 0]])
    with pytest.raises(shards.ShardError, match=r"x\.npz: image_t2: unreadable \(read .* bytes\)"):
        shard_rows.read_rows(path, layout, [0, 3])
    with pytest.raises(shards.ShardError, match=r"x\.npz: file: not a zip"):
        shard_rows.stored_layout(path, "image_t2")


def test_write_shard_refuses_bad_labels(tmp_path):
    a = shard_arrays()
    with pytest.raises(shards.ShardError, match="label_t1"):
        shards.write_shard(tmp_path / "x.npz", a["image_t1"], a["image_t2"], a["label_t1"] + 5,
                           a["label_t2"], class_names=["a", "b", "c"])
    assert not list(tmp_path.iterdir())


def test_float_check_is_chunked(tmp_path, monkeypatch):
    arrays = shard_arrays(n=9, dtype=np.float32)
    arrays["image_t2"][8, 1, 1, 0] = np.nan
    write_npz(tmp_path / "s" / "a.npz", **arrays)
    monkeypatch.setattr(shards, "CHUNK_BYTES", arrays["image_t1"][0].nbytes * 2)
    with pytest.raises(shards.ShardError, match=r"a\.npz: image_t2: NaN or inf in pair 8"):
        split_summary.inspect_split(tmp_path / "s")
    # header-only inspection (the loader's) does not decode images
    assert split_summary.inspect_split(tmp_path / "s", check_values=False).n_pairs == 9


# ----------------------------------------------------------------------------- bad input


def _bad(tmp_path, name, **changes):
    """A split with one good shard and a second one changed by ``changes`` (None deletes a key)."""
    split = make_split(tmp_path / "trn", sizes=(4,))
    arrays = shard_arrays(n=5, start_id=4, seed=1)
    for key, value in changes.items():
        if value is None:
            del arrays[key]
        else:
            arrays[key] = value
    write_npz(split / name, **arrays)
    return split


def _float(n=5, size=4, channels=3, **kw):
    return shard_arrays(n=n, size=size, channels=channels, dtype=np.float32, **kw)["image_t1"]


BAD = {  # case -> (changes to shard_001.npz, key named in the message, words of the message)
    "missing key": (dict(label_t2=None), "label_t2", "missing"),
    "t1/t2 shape": (dict(image_t2=np.zeros((5, 4, 5, 3), np.uint8)), "image_t2", "shape"),
    "t1/t2 dtype": (dict(image_t2=np.zeros((5, 4, 4, 3), np.uint16)), "image_t2", "dtype"),
    "label length": (dict(label_t1=np.ones(4, np.int32)), "label_t1", r"expected \(5,\)"),
    "label above K": (dict(label_t2=np.array([1, 2, 3, 4, 1])), "label_t2", "label 4 > 3"),
    "negative label": (dict(label_t1=np.array([1, -1, 2, 3, 1])), "label_t1", "negative"),
    "float labels": (dict(label_t1=np.ones(5, np.float32)), "label_t1", "integer"),
    "image rank": (dict(image_t1=np.zeros((5, 4, 4), np.uint8), image_t2=np.zeros((5, 4, 4), np.uint8)),
                   "image_t1", r"\(N, H, W, C\)"),
    "image dtype": (dict(image_t1=np.zeros((5, 4, 4, 3), np.int32), image_t2=np.zeros((5, 4, 4, 3), np.int32)),
                    "image_t1", "uint8, uint16 or float32"),
    "row without col": (dict(col=None), "col", "together"),
    "object array": (dict(class_names=np.array(["a", 1, None], dtype=object)), "class_names", "pickled"),
    "other size": (dict(image_t1=np.zeros((5, 6, 6, 3), np.uint8), image_t2=np.zeros((5, 6, 6, 3), np.uint8)),
                   "image_t1", r"\(6, 6, 3\); expected \(4, 4, 3\)"),
    "other channels": (dict(image_t1=np.zeros((5, 4, 4, 4), np.uint8), image_t2=np.zeros((5, 4, 4, 4), np.uint8)),
                       "image_t1", r"\(4, 4, 4\); expected \(4, 4, 3\)"),
    "other class names": (dict(class_names=np.array(["x", "y", "z"])), "class_names", "expected"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_shard(tmp_path, case):
    changes, key, words = BAD[case]
    split = _bad(tmp_path, "shard_001.npz", **changes)
    with pytest.raises(shards.ShardError) as info:
        split_summary.inspect_split(split)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{split / 'shard_001.npz'}: {key}: "), message
    assert re.search(words, message), message


def test_float_images_out_of_range_or_nan(tmp_path):
    a = shard_arrays(dtype=np.float32)
    a["image_t1"][2, 0, 0, 1] = 1.5
    write_npz(tmp_path / "a" / "s.npz", **a)
    with pytest.raises(shards.ShardError, match=r"s\.npz: image_t1: values in \[.*1\.5\].*\[0, 1\]"):
        split_summary.inspect_split(tmp_path / "a")
    a = shard_arrays(dtype=np.float32)
    a["image_t2"][0, 0, 0, 0] = np.nan
    write_npz(tmp_path / "b" / "s.npz", **a)
    with pytest.raises(shards.ShardError, match=r"s\.npz: image_t2: NaN"):
        split_summary.inspect_split(tmp_path / "b")


def test_num_classes_given_is_checked(tmp_path):
    split = make_split(tmp_path / "trn", sizes=(4,))
    with pytest.raises(shards.ShardError, match="label_t1: label 3 > 2"):
        split_summary.inspect_split(split, num_classes=2)
    with pytest.raises(shards.ShardError, match="class_names: 3 names; expected num_classes=4"):
        split_summary.inspect_split(split, num_classes=4)


def test_missing_and_empty_split_dir(tmp_path):
    with pytest.raises(shards.ShardError, match=r"nope: split: no such directory"):
        shards.list_shards(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("hi")
    with pytest.raises(shards.ShardError, match=r"empty: split: no \.npz files"):
        split_summary.inspect_split(tmp_path / "empty")


def test_not_a_zip(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.npz").write_text("not a zip file")
    with pytest.raises(shards.ShardError, match=r"a\.npz: file: not a zip/npz"):
        split_summary.inspect_split(tmp_path / "s")
    np.save(tmp_path / "s" / "a.npy", np.zeros(3))  # a bare .npy renamed to .npz
    (tmp_path / "s" / "a.npy").replace(tmp_path / "s" / "a.npz")
    with pytest.raises(shards.ShardError, match="not a zip/npz"):
        split_summary.inspect_split(tmp_path / "s")


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_npz(tmp_path, keep):
    path = write_npz(tmp_path / "s" / "a.npz", **shard_arrays(n=20, size=8))
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(shards.ShardError, match=r"a\.npz: file: "):
        split_summary.inspect_split(tmp_path / "s")


def test_corrupt_member_data(tmp_path):
    """Central directory intact but a member's bytes damaged: named by key, no traceback chain."""
    path = write_npz(tmp_path / "s" / "a.npz", **shard_arrays(n=4, dtype=np.float32))
    data = bytearray(path.read_bytes())
    start = data.find(b"image_t1.npy") + 200
    data[start:start + 50] = b"\xff" * 50
    path.write_bytes(bytes(data))
    with pytest.raises(shards.ShardError, match=r"a\.npz: image_t1: "):
        split_summary.inspect_split(tmp_path / "s")


# ----------------------------------------------------------------------------- damaged data (CRC-32)


def _damage(path, key, offset=200, n=40):
    """Overwrite ``n`` bytes of ``key``'s member data in place (zip directory left intact)."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
    data = bytearray(path.read_bytes())
    name_len, extra_len = np.frombuffer(data[info.header_offset + 26:info.header_offset + 30], "<u2")
    start = info.header_offset + 30 + int(name_len) + int(extra_len) + offset
    assert start + n < info.header_offset + 30 + name_len + extra_len + info.compress_size
    data[start:start + n] = bytes(255 - b for b in data[start:start + n])
    path.write_bytes(bytes(data))
    return path


def test_corrupt_compressed_images_fail_the_default_check(tmp_path):
    """A compressed shard whose image bytes are damaged fails the check run before training (the
    loader would only hit it mid-epoch); the loader's header-only check does not read it."""
    path = tmp_path / "s" / "a.npz"
    path.parent.mkdir()
    np.savez_compressed(path, **shard_arrays(n=20, size=16))
    _damage(path, "image_t1", offset=1000)
    with pytest.raises(shards.ShardError) as info:
        split_summary.inspect_split(tmp_path / "s")
    message = str(info.value)
    assert message.startswith(f"{path}: image_t1: ") and "\n" not in message, message
    assert split_summary.inspect_split(tmp_path / "s", check_values=False).n_pairs == 20


def test_corrupt_stored_images_fail_check_stored_only(tmp_path):
    """Uncompressed integer images are CRC-checked only on request (a full read of the split)."""
    path = write_npz(tmp_path / "s" / "a.npz", **shard_arrays(n=20, size=16))
    _damage(path, "image_t2")
    assert split_summary.inspect_split(tmp_path / "s").n_pairs == 20  # cheap check: images not read
    with pytest.raises(shards.ShardError) as info:
        split_summary.inspect_split(tmp_path / "s", check_stored=True)
    assert str(info.value).startswith(f"{path}: image_t2: damaged data (Bad CRC-32"), info.value


def test_check_stored_reads_in_chunks(tmp_path, monkeypatch):
    """The CRC read never asks zipfile for a whole member at once."""
    import zipfile

    write_npz(tmp_path / "s" / "a.npz", **shard_arrays(n=20, size=16))
    monkeypatch.setattr(shards, "VERIFY_CHUNK_BYTES", 1000)
    sizes = []
    read = zipfile.ZipExtFile.read

    def spy(self, n=-1):
        sizes.append(n)
        return read(self, n)

    monkeypatch.setattr(zipfile.ZipExtFile, "read", spy)
    for key in shards.IMAGE_KEYS:
        sizes.clear()
        shards.verify_member(tmp_path / "s" / "a.npz", key)
        assert len(sizes) > 10 and all(0 < n <= 1000 for n in sizes), sizes


def test_dangling_symlink_is_an_error(tmp_path):
    split = make_split(tmp_path / "trn", sizes=(4, 3))
    link = split / "shard_005.npz"
    link.symlink_to(tmp_path / "nonexistent.npz")
    with pytest.raises(shards.ShardError) as info:
        shards.list_shards(split)
    message = str(info.value)
    assert message.startswith(f"{link}: file: dangling symbolic link") and "\n" not in message
    with pytest.raises(shards.ShardError, match="dangling"):
        split_summary.inspect_split(split, check_values=False)  # the loader's check


@pytest.mark.parametrize("case", ["0-255", "nan"])
def test_float_value_error_is_not_called_corruption(tmp_path, case):
    a = shard_arrays(dtype=np.float32)
    if case == "0-255":
        a["image_t1"] = np.round(a["image_t1"] * 255).astype(np.float32)
        a["image_t1"][0, 0, 0, :2] = 255, 0
        words = "image_t1: values in [0, 255] near pair 0; expected float images in [0, 1]"
    else:
        a["image_t1"][3] = np.nan
        words = "image_t1: NaN or inf in pair 3; expected float images in [0, 1]"
    path = write_npz(tmp_path / "s" / "s.npz", **a)
    with pytest.raises(shards.ShardError) as info:
        split_summary.inspect_split(tmp_path / "s")
    message = str(info.value)
    assert message.startswith(f"{path}: {words}"), message
    assert "unreadable" not in message and "corrupt" not in message and message.count(str(path)) == 1


# ----------------------------------------------------------------------------- georeferencing keys


def _geo_shard(tmp_path, name="s.npz", **extra):
    from tests.data._helpers import shard_arrays, write_npz

    arrays = {**shard_arrays(), "crs": np.asarray('PROJCS["WGS 84 / UTM zone 50N"]'),
              "transform": np.array([80.0, 0, 5e5, 0, -80.0, 3.4e6]),
              "tile_size": np.asarray(8, np.int64), **extra}
    return write_npz(tmp_path / "split" / name, **{k: v for k, v in arrays.items()
                                                  if v is not None})


def test_georeferencing_keys_are_summarised(tmp_path):
    _geo_shard(tmp_path)
    s = split_summary.inspect_split(tmp_path / "split")
    assert s.geo == {"crs": 'PROJCS["WGS 84 / UTM zone 50N"]',
                     "transform": (80.0, 0.0, 5e5, 0.0, -80.0, 3.4e6), "tile_size": 8}
    assert "georeferenced: WGS 84 / UTM zone 50N; tiles of 8 px" in s.format()


@pytest.mark.parametrize("extra, words", [
    ({"crs": np.array([1, 2])}, "crs: shape (2,) dtype int64; expected a str scalar (WKT)"),
    ({"transform": np.zeros(4)}, "transform: shape (4,) dtype float64; expected 6 floats"),
    ({"transform": np.zeros(6)}, "expected a finite, invertible affine transform"),
    ({"tile_size": np.asarray(0)}, "tile_size: 0; expected >= 1"),
    ({"tile_size": np.asarray(1.5)}, "tile_size: shape () dtype float64; expected an integer"),
    ({"row": None, "col": None}, "transform: present without row/col"),
])
def test_bad_georeferencing_keys(tmp_path, extra, words):
    _geo_shard(tmp_path, **extra)
    with pytest.raises(shards.ShardError, match=re.escape(words)):
        split_summary.inspect_split(tmp_path / "split")


def test_shards_of_a_split_share_one_grid(tmp_path):
    _geo_shard(tmp_path, "a.npz")
    _geo_shard(tmp_path, "b.npz", transform=np.array([80.0, 0, 6e5, 0, -80.0, 3.4e6]))
    with pytest.raises(shards.ShardError, match="b.npz: transform: differs; expected the "
                                                "transform of a.npz"):
        split_summary.inspect_split(tmp_path / "split")


def test_a_huge_label_without_class_names_is_one_error_not_a_huge_histogram(tmp_path):
    """issue 15 item 6: one label of 10⁹ in shards without class_names grew the process to 22 GB (a
    histogram of that size); now a one-line error naming the file and key, before any allocation."""
    import subprocess
    import sys

    arrays = shard_arrays(classes=5)
    del arrays["class_names"]
    arrays["label_t2"] = arrays["label_t2"].astype(np.int64)
    arrays["label_t2"][3] = 10**9
    write_npz(tmp_path / "s" / "a.npz", **arrays)
    with pytest.raises(shards.ShardError, match=r"a\.npz: label_t2: label 1000000000; expected class ids 1\.\.K with K <= 1000"):
        split_summary.inspect_split(tmp_path / "s")
    proc = subprocess.run([sys.executable, "-m", "data.inspect", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=120,
                          cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "label 1000000000" in proc.stderr
    # with names (or a num_classes) the bound is theirs
    arrays["label_t2"][3] = 5
    write_npz(tmp_path / "ok" / "a.npz", **arrays)
    assert split_summary.inspect_split(tmp_path / "ok").num_classes == 5
