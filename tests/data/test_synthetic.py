"""data.synthetic: format, determinism, change rate, no overwrite, structure (not colour) separates classes."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from data import shards, split_summary, synthetic


def test_demo_data_format(demo_data):
    sizes = {}
    for split in ("trn", "val", "tst"):
        s = split_summary.inspect_split(demo_data / split)
        assert s.image_shape == (32, 32, 3) and s.dtype == np.uint8 and s.has_rowcol
        assert s.class_names == list(synthetic.CLASS_NAMES[:4]) and s.n_skipped == 0
        sizes[split] = s.n_pairs
    assert sizes == {"trn": 84, "val": 12, "tst": 24}
    rows = np.concatenate([split_summary.read_labels(demo_data / s)["row"] for s in sizes])
    cols = np.concatenate([split_summary.read_labels(demo_data / s)["col"] for s in sizes])
    assert len(set(zip(rows.tolist(), cols.tolist(), strict=True))) == 120  # one grid cell per pair


def test_deterministic_and_change_rate():
    a = synthetic.make_pairs(60, size=16, classes=5, change_rate=0.1, seed=7)
    b = synthetic.make_pairs(60, size=16, classes=5, change_rate=0.1, seed=7)
    c = synthetic.make_pairs(60, size=16, classes=5, change_rate=0.1, seed=8)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert not np.array_equal(a["image_t1"], c["image_t1"])
    assert (a["label_t1"] != a["label_t2"]).sum() == 6
    assert a["label_t1"].min() == 1 and a["label_t1"].max() == 5
    np.testing.assert_array_equal(np.bincount(a["label_t1"])[1:], [12] * 5)  # balanced


def test_second_date_is_same_scene_under_new_conditions():
    d = synthetic.make_pairs(40, size=32, classes=4, change_rate=0.0, seed=0)
    x1, x2 = d["image_t1"].astype(np.float32), d["image_t2"].astype(np.float32)
    assert np.abs(x1 - x2).mean() > 3  # illumination, noise, misregistration
    g1, g2 = x1.mean(-1), x2.mean(-1)
    same = [np.corrcoef(g1[i, 4:-4, 4:-4].ravel(), g2[i, 4:-4, 4:-4].ravel())[0, 1] for i in range(40)]
    other = [np.corrcoef(g1[i, 4:-4, 4:-4].ravel(), g2[i - 1, 4:-4, 4:-4].ravel())[0, 1] for i in range(40)]
    assert np.median(same) > 0.4 > np.median(np.abs(other))


def _mean_colour(x):
    return x.mean(axis=(1, 2))


def _structure(x):
    """Radial FFT spectrum, orientation coherence and intensity / gradient quantiles of grey tiles."""
    g = x.mean(-1)
    g = (g - g.mean((1, 2), keepdims=True)) / (g.std((1, 2), keepdims=True) + 1e-3)
    spectrum = np.abs(np.fft.fftshift(np.fft.fft2(g), axes=(1, 2)))
    s = g.shape[1]
    yy, xx = np.mgrid[0:s, 0:s] - s // 2
    ring = np.minimum((np.hypot(yy, xx) / (s / 2) * 8).astype(int), 7)
    radial = np.log(np.stack([spectrum[:, ring == k].mean(1) for k in range(8)], 1) + 1e-3)
    gy, gx = np.gradient(g, axis=(1, 2))
    coherence = np.hypot((gx**2 - gy**2).mean((1, 2)), 2 * (gx * gy).mean((1, 2))) / (
        (gx**2 + gy**2).mean((1, 2)) + 1e-6)
    flat = g.reshape(len(g), -1)
    grad = np.hypot(gx, gy).reshape(len(g), -1)
    return np.concatenate([radial, coherence[:, None], np.percentile(flat, [5, 25, 50, 75, 95], 1).T,
                           np.percentile(grad, [25, 50, 75, 95], 1).T], 1)


@pytest.mark.parametrize("classes", [8, 14])
def test_structure_not_mean_colour_separates_classes(classes):
    n = 75 * classes
    d = synthetic.make_pairs(n, size=32, classes=classes, seed=1)
    x, y = d["image_t1"].astype(np.float32) / 255, d["label_t1"]
    train, test = slice(0, n * 3 // 4), slice(n * 3 // 4, n)
    scores = {}
    for name, features in (("colour", _mean_colour), ("structure", _structure)):
        f = features(x)
        clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
        scores[name] = clf.fit(f[train], y[train]).score(f[test], y[test])
    chance = 1 / classes
    assert scores["colour"] < 2 * chance, scores
    assert scores["structure"] > 0.85, scores


def test_refuses_non_empty_output(tmp_path, capsys):
    (tmp_path / "val").mkdir()
    (tmp_path / "val" / "mine.txt").write_text("keep me")
    with pytest.raises(shards.ShardError, match="val: --out: exists and is not empty"):
        synthetic.generate(tmp_path, pairs=20, size=16, classes=3)
    assert synthetic.main(["--out", str(tmp_path), "--pairs", "20", "--size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["val"]  # nothing written
    assert (tmp_path / "val" / "mine.txt").read_text() == "keep me"


def test_bad_arguments_and_shard_size(tmp_path, capsys):
    assert synthetic.main(["--out", str(tmp_path / "a"), "--classes", "15"]) == 2
    assert "--classes 15" in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
    assert synthetic.main(["--out", str(tmp_path / "b"), "--pairs", "50", "--size", "16",
                           "--shard_size", "10", "--classes", "14", "--seed", "3"]) == 0
    s = split_summary.inspect_split(tmp_path / "b" / "trn")
    assert s.pairs_per_file == [10, 10, 10, 5] and s.num_classes == 14
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["trn", "tst", "val"]


# ----------------------------------------------------------------------------- degradation
def _files(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_degradation_of_strength_zero_is_todays_data_bit_for_bit(tmp_path):
    synthetic.generate(tmp_path / "plain", pairs=40, size=16, classes=3, seed=4)
    synthetic.main(["--out", str(tmp_path / "zero"), "--pairs", "40", "--size", "16",
                    "--classes", "3", "--seed", "4", "--degrade", "both", "--haze", "0",
                    "--cloud_cover", "0", "--noise", "0", "--blur", "0"])
    plain, zero = _files(tmp_path / "plain"), _files(tmp_path / "zero")
    assert plain and plain == zero  # same files, same bytes


def test_degradation_is_deterministic_and_leaves_the_clean_scenes_alone():
    clean = synthetic.make_pairs(60, size=16, classes=4, seed=3)
    kw = {"haze": 0.6, "cloud_cover": 0.3, "noise": 0.02, "blur": 0.5}
    a = synthetic.degrade_pairs(clean, seed=3, date="t2", **kw)
    b = synthetic.degrade_pairs(synthetic.make_pairs(60, size=16, classes=4, seed=3), 3, "t2", **kw)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    weak = synthetic.degrade_pairs(clean, seed=3, date="t2", haze=0.2)
    for d in (a, weak):  # levels differ only by the degradation of date 2
        for key in ("image_t1", "label_t1", "label_t2", "row", "col"):
            np.testing.assert_array_equal(d[key], clean[key])
    diff = [np.abs(d["image_t2"].astype(int) - clean["image_t2"]).mean() for d in (weak, a)]
    assert 0 < diff[0] < diff[1]
    other = synthetic.degrade_pairs(clean, seed=4, date="t2", **kw)
    assert not np.array_equal(other["image_t2"], a["image_t2"])
    assert synthetic.degrade_pairs(clean, seed=3, date="t2") is clean  # nothing to do


def test_degradation_strengths_share_their_random_fields():
    """A stronger haze degrades the same tiles with the same noise: t2(h) is monotone in h."""
    clean = synthetic.make_pairs(30, size=16, classes=3, seed=0)
    x = [synthetic.degrade_pairs(clean, 0, "t1", haze=h)["image_t1"].astype(int)
         for h in (0.3, 0.6, 1.0)]
    c = clean["image_t1"].astype(int)
    contrast = [np.std(v - v.mean((1, 2), keepdims=True)) for v in (c, *x)]
    assert contrast[0] > contrast[1] > contrast[2] > contrast[3]
    assert contrast[3] < 0.25 * contrast[0]  # haze 1: an almost flat veil


@pytest.mark.parametrize("date", ["t1", "both", "either"])
def test_degraded_dates(date):
    clean = synthetic.make_pairs(80, size=16, classes=4, seed=1)
    d = synthetic.degrade_pairs(clean, seed=1, date=date, noise=0.1)
    hit = {t: (d[f"image_{t}"] != clean[f"image_{t}"]).reshape(80, -1).mean(1) > 0.5
           for t in ("t1", "t2")}
    if date == "t1":
        assert hit["t1"].all() and not hit["t2"].any()
    elif date == "both":
        assert hit["t1"].all() and hit["t2"].all()
    else:  # one date per pair, each about half of the time
        assert (hit["t1"] ^ hit["t2"]).all() and 20 < hit["t1"].sum() < 60


def test_cloud_cover_is_the_covered_fraction():
    clean = synthetic.make_pairs(40, size=32, classes=4, seed=2)
    d = synthetic.degrade_pairs(clean, seed=2, date="t2", cloud_cover=0.4)
    bright = (d["image_t2"].min(-1) >= int(0.85 * 255) - 1).mean()  # clouds are 0.85..1 white
    assert 0.3 < bright < 0.5


@pytest.mark.parametrize("argv, message", [
    (["--haze", "1.5"], "--haze 1.5: expected a strength in [0, 1]"),
    (["--cloud_cover", "-0.1"], "--cloud_cover -0.1: expected a strength in [0, 1]"),
    (["--noise", "-1"], "--noise -1.0: expected a sigma in [0, 100]"),
])
def test_bad_degradation_arguments(tmp_path, capsys, argv, message):
    assert synthetic.main(["--out", str(tmp_path / "x"), "--pairs", "20", "--size", "16", *argv]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {message}\n"
    assert not (tmp_path / "x").exists()


# ----------------------------------------------------------------------------- radiometry
def test_radiometry_defaults_are_todays_data_bit_for_bit(tmp_path):
    synthetic.generate(tmp_path / "plain", pairs=40, size=16, classes=3, seed=4)
    synthetic.main(["--out", str(tmp_path / "same"), "--pairs", "40", "--size", "16",
                    "--classes", "3", "--seed", "4", "--dtype", "uint8", "--value_range", "0,255",
                    "--date_shift", "1,0"])
    plain, same = _files(tmp_path / "plain"), _files(tmp_path / "same")
    assert plain and plain == same


@pytest.mark.parametrize("dtype, lo, hi", [("uint8", 6, 116), ("uint16", 0, 10000),
                                           ("uint16", 0, 4095)])
def test_value_range_is_filled_and_the_scenes_are_the_same(dtype, lo, hi):
    ref = synthetic.make_pairs(60, size=16, classes=4, seed=2)
    d = synthetic.make_pairs(60, size=16, classes=4, seed=2, dtype=dtype, value_range=(lo, hi))
    for key in ("label_t1", "label_t2", "row", "col"):
        np.testing.assert_array_equal(d[key], ref[key])
    for t in ("t1", "t2"):
        x = d[f"image_{t}"]
        assert x.dtype == np.dtype(dtype) and lo <= x.min() and x.max() <= hi
        assert x.max() - x.min() > 0.8 * (hi - lo)  # most of the range is used
        # the same intensities, stored in another range (rounding apart)
        unit = (x.astype(np.float64) - lo) / (hi - lo)
        np.testing.assert_allclose(unit, ref[f"image_{t}"] / 255.0, atol=1 / 255 + 1 / (hi - lo))


def test_date_shift_changes_date_2_only_and_degradation_follows_the_range():
    ref = synthetic.make_pairs(60, size=16, classes=4, seed=5, dtype="uint16", value_range=(0, 4095))
    d = synthetic.make_pairs(60, size=16, classes=4, seed=5, dtype="uint16", value_range=(0, 4095),
                             date_shift=(0.7, -0.05))
    np.testing.assert_array_equal(d["image_t1"], ref["image_t1"])
    ratio = (d["image_t2"].mean() + 0.05 * 4095) / ref["image_t2"].mean()
    assert abs(ratio - 0.7) < 0.02
    hazy = synthetic.degrade_pairs(d, seed=5, date="t2", haze=1.0, value_range=(0, 4095))
    assert hazy["image_t2"].max() <= 4095 and hazy["image_t2"].mean() > 0.6 * 4095  # bright veil


@pytest.mark.parametrize("argv, message", [
    (["--value_range", "0,300"], "--value_range 0,300: expected integers 0 <= LO < HI <= 255"),
    (["--value_range", "10,5"], "--value_range 10,5: expected integers 0 <= LO < HI <= 255"),
    (["--date_shift", "0,0.1"], "--date_shift 0.0,0.1: expected GAIN in (0, 10]"),
])
def test_bad_radiometry_arguments(tmp_path, capsys, argv, message):
    assert synthetic.main(["--out", str(tmp_path / "x"), "--pairs", "20", "--size", "16", *argv]) == 2
    assert capsys.readouterr().err.startswith(f"error: {message}")
    assert not (tmp_path / "x").exists()
