"""python -m data.make_shards: class folders and rasters round-trip through inspect_split."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
import rasterio
import scipy.io
from PIL import Image

from data import make_shards, shards, split_summary, splits

T = 8  # tile size


def _all_pairs(out):
    """All pairs of trn/val/tst keyed by (row, col): (x1, x2, y1, y2) with 1-based labels."""
    pairs = {}
    for split in ("trn", "val", "tst"):
        for path in shards.list_shards(out / split):
            with np.load(path, allow_pickle=False) as z:
                for i in range(len(z["row"])):
                    pairs[(int(z["row"][i]), int(z["col"][i]))] = (
                        z["image_t1"][i], z["image_t2"][i], int(z["label_t1"][i]), int(z["label_t2"][i]))
    return pairs


# ----------------------------------------------------------------------------- (a) class folders


@pytest.fixture
def folders(tmp_path):
    """3x4 grid of 8x8 RGB tiles, classes by column; tile (row 1, col 2) changes class at date 2."""
    rng = np.random.default_rng(0)
    classes = ["water", "farm", "road", "bare"]
    truth = {}
    for row in range(3):
        for col in range(4):
            names = [classes[col], classes[col] if (row, col) != (1, 2) else "water"]
            tiles = []
            for date, name in zip(("d1", "d2"), names, strict=True):
                tile = rng.integers(0, 256, (T, T, 3), dtype=np.uint8)
                (tmp_path / date / name).mkdir(parents=True, exist_ok=True)
                Image.fromarray(tile).save(tmp_path / date / name / f"{col}_{row}.png")
                tiles.append(tile)
            truth[(row, col)] = (*tiles, *names)
    return tmp_path, truth


def _member_compression(out):
    """{compress_type of every image member} of every shard written under out."""
    import zipfile

    types = set()
    for path in out.glob("*/*.npz"):
        with zipfile.ZipFile(path) as zf:
            types |= {zf.getinfo(k + ".npy").compress_type for k in shards.IMAGE_KEYS}
    return types


@pytest.mark.parametrize("flag,expected", [(None, "stored"), ("--no_compress", "stored"),
                                           ("--compress", "deflated")])
def test_uncompressed_by_default(folders, flag, expected):
    """Default: stored members (read per batch by the loader); --compress opts in to deflate;
    --no_compress (the old switch) is accepted and changes nothing."""
    import zipfile

    root, _ = folders
    out = root / "shards"
    argv = ["folders", "--t1", str(root / "d1"), "--t2", str(root / "d2"), "--out", str(out)]
    assert make_shards.main(argv + ([flag] if flag else [])) == 0
    want = zipfile.ZIP_STORED if expected == "stored" else zipfile.ZIP_DEFLATED
    assert _member_compression(out) == {want}


def test_folders_round_trip(folders):
    root, truth = folders
    out = root / "shards"
    argv = ["folders", "--t1", str(root / "d1"), "--t2", str(root / "d2"), "--out", str(out),
            "--shard_size", "3", "--seed", "1"]
    assert make_shards.main(argv) == 0
    names = sorted({"water", "farm", "road", "bare"})
    sizes = []
    for split in ("trn", "val", "tst"):
        s = split_summary.inspect_split(out / split)
        assert s.class_names == names and s.image_shape == (T, T, 3) and s.dtype == np.uint8
        assert max(s.pairs_per_file) <= 3
        sizes.append(s.n_pairs)
    assert sizes == [9, 1, 2]  # 70/10/20 of 12, rounded
    pairs = _all_pairs(out)
    assert set(pairs) == set(truth)
    for key, (x1, x2, y1, y2) in pairs.items():
        t1, t2, n1, n2 = truth[key]
        np.testing.assert_array_equal(x1, t1)
        np.testing.assert_array_equal(x2, t2)
        assert (names[y1 - 1], names[y2 - 1]) == (n1, n2)
    assert sum(y1 != y2 for _, _, y1, y2 in pairs.values()) == 1


def test_folders_class_names_option(folders, tmp_path):
    root, _ = folders
    names = "road,water,farm,bare,extra"
    out = tmp_path / "o"
    assert make_shards.main(["folders", "--t1", str(root / "d1"), "--t2", str(root / "d2"),
                             "--out", str(out), "--class_names", names]) == 0
    assert split_summary.inspect_split(out / "trn").class_names == names.split(",")
    assert all(y1 == 1 for (r, c), (_, _, y1, _) in _all_pairs(out).items() if c == 2)


def test_folders_unpaired_tile(folders, capsys):
    root, _ = folders
    (root / "d2" / "water" / "2_1.png").unlink()  # tile (row 1, col 2) only at date 1
    argv = ["folders", "--t1", str(root / "d1"), "--t2", str(root / "d2"), "--out", str(root / "o")]
    assert make_shards.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "2_1.png: pair: no tile '2_1'" in err
    assert not (root / "o").exists()
    assert make_shards.main(argv + ["--skip_unpaired"]) == 0
    assert len(_all_pairs(root / "o")) == 11


def test_folders_tile_of_other_size_writes_nothing(folders, capsys):
    root, _ = folders
    Image.fromarray(np.zeros((T + 1, T, 3), np.uint8)).save(root / "d2" / "bare" / "3_2.png")
    out = root / "o"
    argv = ["folders", "--t1", str(root / "d1"), "--t2", str(root / "d2"), "--out", str(out),
            "--shard_size", "2"]
    assert make_shards.main(argv) == 2
    assert "3_2.png: image: (9, 8, 3) uint8; expected (8, 8, 3) uint8" in capsys.readouterr().err
    assert not out.exists()


def test_refuses_non_empty_output(folders, capsys):
    root, _ = folders
    (root / "o" / "trn").mkdir(parents=True)
    (root / "o" / "trn" / "old.npz").write_bytes(b"x")
    assert make_shards.main(["folders", "--t1", str(root / "d1"), "--t2", str(root / "d2"),
                             "--out", str(root / "o")]) == 2
    assert "trn: --out: exists and is not empty" in capsys.readouterr().err
    assert sorted(p.name for p in (root / "o").iterdir()) == ["trn"]
    assert (root / "o" / "trn" / "old.npz").read_bytes() == b"x"


# ----------------------------------------------------------------------------- (b) rasters


def _geotiff(path, array):
    """(H, W, B) array -> GeoTIFF with B bands."""
    h, w, b = array.shape
    transform = rasterio.Affine(1.2, 0.0, 500000.0, 0.0, -1.2, 3400000.0)  # 1.2 m pixels
    with rasterio.open(path, "w", driver="GTiff", height=h, width=w, count=b, dtype=array.dtype,
                       crs="EPSG:32650", transform=transform) as dst:
        dst.write(np.moveaxis(array, -1, 0))


def test_geotiff_uint16_with_mat_grid_and_bands(tmp_path):
    rng = np.random.default_rng(1)
    rows, cols = 4, 5
    x1 = rng.integers(0, 65535, (rows * T, cols * T, 4), dtype=np.uint16)
    x2 = rng.integers(0, 65535, (rows * T, cols * T, 4), dtype=np.uint16)
    _geotiff(tmp_path / "t1.tif", x1)
    _geotiff(tmp_path / "t2.tif", x2)
    y1 = rng.integers(1, 4, (rows, cols)).astype(np.float64)  # .mat files usually hold doubles
    y2 = y1.copy()
    y2[0, 0] = y1[0, 0] % 3 + 1
    scipy.io.savemat(tmp_path / "l1.mat", {"label": y1})
    scipy.io.savemat(tmp_path / "l2.mat", {"label": y2})
    out = tmp_path / "o"
    assert make_shards.main([
        "raster", "--t1", str(tmp_path / "t1.tif"), "--t2", str(tmp_path / "t2.tif"),
        "--labels1", str(tmp_path / "l1.mat"), "--labels2", str(tmp_path / "l2.mat"),
        "--tile", str(T), "--bands", "3,2,1", "--out", str(out), "--class_names", "a,b,c"]) == 0
    s = split_summary.inspect_split(out / "trn")
    assert s.dtype == np.uint16 and s.image_shape == (T, T, 3) and s.class_names == ["a", "b", "c"]
    pairs = _all_pairs(out)
    assert len(pairs) == rows * cols
    for (r, c), (a1, a2, l1, l2) in pairs.items():
        np.testing.assert_array_equal(a1, x1[r * T:(r + 1) * T, c * T:(c + 1) * T, [2, 1, 0]])
        np.testing.assert_array_equal(a2, x2[r * T:(r + 1) * T, c * T:(c + 1) * T, [2, 1, 0]])
        assert (l1, l2) == (y1[r, c], y2[r, c])


def test_png_with_npy_grid_and_label_raster(tmp_path):
    rng = np.random.default_rng(2)
    image = rng.integers(0, 256, (2 * T + 3, 3 * T, 3), dtype=np.uint8)  # 3 extra rows left out
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image[:, ::-1]).save(tmp_path / "b.png")
    grid = np.array([[1, 2, 0], [2, 2, 1]], np.int16)  # 0: undefined, kept and skipped on reading
    np.save(tmp_path / "g.npy", grid)
    raster = np.kron(grid[:, ::-1], np.ones((T, T), np.uint8)).astype(np.uint8)
    raster = np.pad(raster, ((0, 3), (0, 0)))
    raster[0, -1] = 3  # a minority pixel does not change the tile's class
    Image.fromarray(raster).save(tmp_path / "r.png")
    out = tmp_path / "o"
    assert make_shards.main([
        "raster", "--t1", str(tmp_path / "a.png"), "--t2", str(tmp_path / "b.png"),
        "--labels1", str(tmp_path / "g.npy"), "--labels2", str(tmp_path / "r.png"),
        "--tile", str(T), "--out", str(out), "--no_compress", "--split", "0.5,0.5,0"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["trn", "val"]
    pairs = {}
    for split in ("trn", "val"):
        for path in shards.list_shards(out / split):
            with np.load(path) as z:
                for i in range(len(z["row"])):
                    pairs[(int(z["row"][i]), int(z["col"][i]))] = (int(z["label_t1"][i]), int(z["label_t2"][i]))
    assert pairs == {(r, c): (int(grid[r, c]), int(grid[r, ::-1][c])) for r in range(2) for c in range(3)}
    total = sum(split_summary.inspect_split(out / s).n_pairs for s in ("trn", "val"))
    assert total == 4  # two pairs have label 0 at a date


def test_mat_needs_key_when_ambiguous(tmp_path, capsys):
    image = np.zeros((2 * T, 2 * T, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    scipy.io.savemat(tmp_path / "l.mat", {"y14": np.ones((2, 2)), "y16": np.ones((2, 2)) * 2})
    base = ["raster", "--t1", str(tmp_path / "a.png"), "--t2", str(tmp_path / "a.png"),
            "--labels1", str(tmp_path / "l.mat"), "--labels2", str(tmp_path / "l.mat"),
            "--tile", str(T), "--out", str(tmp_path / "o"), "--split", "0.5,0.25,0.25"]
    assert make_shards.main(base) == 2
    assert "l.mat: --mat_key: 2 2-D numeric variables" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert make_shards.main(base + ["--mat_key", "y16"]) == 0
    assert split_summary.inspect_split(tmp_path / "o" / "trn").hist_t1.tolist() == [0, 2]


@pytest.mark.parametrize("case", ["grid shape", "bands", "t2 size", "labels above names"])
def test_raster_bad_input(tmp_path, capsys, case):
    image = np.zeros((2 * T, 3 * T, 3), np.uint8)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image[:, :-1] if case == "t2 size" else image).save(tmp_path / "b.png")
    np.save(tmp_path / "g.npy", np.ones((3, 2) if case == "grid shape" else (2, 3), np.int64) *
            (4 if case == "labels above names" else 1))
    argv = ["raster", "--t1", str(tmp_path / "a.png"), "--t2", str(tmp_path / "b.png"),
            "--labels1", str(tmp_path / "g.npy"), "--labels2", str(tmp_path / "g.npy"),
            "--tile", str(T), "--out", str(tmp_path / "o"), "--class_names", "x,y,z"]
    if case == "bands":
        argv += ["--bands", "1,4"]
    expected = {"grid shape": "g.npy: labels: shape (3, 2); expected the tile grid (2, 3)",
                "bands": "a.png: --bands: [1, 4]; the image has 3 band(s)",
                "t2 size": "b.png: image: (16, 23, 3) uint8; expected (16, 24, 3) uint8",
                "labels above names": f"{tmp_path / 'g.npy'}: labels: class id 4 but "
                                      "--class_names gives 3 name(s); expected class ids 1..3"}[case]
    assert make_shards.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and expected in err, err
    assert ".incomplete" not in err  # never the name of a temporary file
    assert not (tmp_path / "o").exists()


# ----------------------------------------------------------------------------- bad input: one line


@pytest.mark.parametrize("value", ["names.txt", "lists/names", "NAMES.TXT"])
def test_class_names_file_that_does_not_exist(folders, capsys, value, monkeypatch):
    """A --class_names value that looks like a file is not taken as a single class name."""
    root, _ = folders
    monkeypatch.chdir(root)
    argv = ["folders", "--t1", "d1", "--t2", "d2", "--out", "o", "--class_names", value]
    assert make_shards.main(argv) == 2
    err = capsys.readouterr().err
    assert err == f"error: {value}: --class_names: no such file; expected a file with one class " \
                  "name per line (or a comma-separated list of names)\n", err
    assert not (root / "o").exists()


def test_class_names_file(folders, tmp_path):
    root, _ = folders
    (tmp_path / "names.txt").write_text("road\nwater\n\nfarm\nbare\n")
    out = tmp_path / "o"
    assert make_shards.main(["folders", "--t1", str(root / "d1"), "--t2", str(root / "d2"),
                             "--out", str(out), "--class_names", str(tmp_path / "names.txt")]) == 0
    assert split_summary.inspect_split(out / "trn").class_names == ["road", "water", "farm", "bare"]


def test_date_dir_that_is_a_file(folders, capsys):
    root, _ = folders
    (root / "afile").write_text("x")
    argv = ["folders", "--t1", str(root / "afile"), "--t2", str(root / "d2"), "--out", str(root / "o")]
    assert make_shards.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {root / 'afile'}: directory: not a directory; expected ")
    assert err.count("\n") == 1 and not (root / "o").exists()


def _late_failure(root):
    """Give the t2 tile of the first test pair another size: the error comes after trn is written."""
    k = int(splits.split_indices(12, splits.DEFAULT_FRACTIONS, 0)["tst"][0])
    row, col = divmod(k, 4)  # stems sorted by (row, col) on the 3x4 grid
    (tile,) = (root / "d2").glob(f"*/{col}_{row}.png")
    Image.fromarray(np.zeros((T + 1, T, 3), np.uint8)).save(tile)
    return tile


def test_failure_removes_the_parents_it_created(folders, capsys):
    root, _ = folders
    tile = _late_failure(root)
    argv = ["folders", "--t1", str(root / "d1"), "--t2", str(root / "d2"),
            "--out", str(root / "deep" / "a" / "b")]
    assert make_shards.main(argv) == 2
    assert f"{tile}: image: " in capsys.readouterr().err
    assert not (root / "deep").exists()


ROOT = pathlib.Path(__file__).resolve().parents[2]


def _run(argv, cwd):
    return subprocess.run([sys.executable, "-m", "data.make_shards", *argv], capture_output=True,
                          text=True, timeout=120, cwd=cwd, env={**os.environ, "PYTHONPATH": str(ROOT)})


@pytest.mark.parametrize("case", ["fake tif", "text labels", "after trn written"])
def test_command_line_prints_exactly_one_line(folders, case):
    """No GDAL/rasterio INFO line, no warning and no 'pairs in shard(s)' line before the error."""
    root, _ = folders
    image = np.zeros((2 * T, 2 * T, 3), np.uint8)
    Image.fromarray(image).save(root / "a.png")
    np.save(root / "g.npy", np.ones((2, 2), np.int64))
    (root / "fake.tif").write_text("not a tiff")
    (root / "lab.txt").write_text("1 2\n2 1\n")
    raster = ["raster", "--t2", "a.png", "--labels2", "g.npy", "--tile", str(T), "--out", "deep/o"]
    if case == "fake tif":
        argv, bad = raster + ["--t1", "fake.tif", "--labels1", "g.npy"], "fake.tif: file: unreadable"
    elif case == "text labels":
        argv, bad = raster + ["--t1", "a.png", "--labels1", "lab.txt"], "lab.txt: file: unreadable"
    else:
        (root / "d1" / "bare" / "9_9.png").write_bytes((root / "a.png").read_bytes())  # unpaired
        tile = _late_failure(root)
        argv = ["folders", "--t1", "d1", "--t2", "d2", "--out", "deep/o", "--skip_unpaired"]
        bad = f"{tile.relative_to(root)}: image: "
    proc = _run(argv, root)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: "), proc.stderr
    assert bad in proc.stderr and proc.stdout == ""
    assert not (root / "deep").exists()


# ----------------------------------------------------------------------------- georeferencing, edges,
# unlabelled shards, block split (issue 12)


def _scene(tmp_path, height=5 * T, width=6 * T, tf2=None, crs2="EPSG:32650"):
    from tests.data import _scenes as scenes

    y = scenes.class_grid(-(-height // T), -(-width // T))
    x1 = scenes.render(y, T, height=height, width=width, seed=1)
    x2 = scenes.render(y, T, height=height, width=width, seed=2)
    t1 = scenes.write_tif(tmp_path / "t1.tif", x1)
    t2 = scenes.write_tif(tmp_path / "t2.tif", x2, crs=crs2, tf=tf2)
    return t1, t2, x1, x2, y


def test_raster_shards_carry_crs_tile_transform_and_tile_size(tmp_path, capsys):
    from data import inspect
    from tests.data import _scenes as scenes

    t1, t2, *_ = _scene(tmp_path)
    np.save(tmp_path / "y.npy", scenes.class_grid(5, 6))
    out = tmp_path / "o"
    assert make_shards.main(["raster", "--t1", str(t1), "--t2", str(t2), "--labels1",
                             str(tmp_path / "y.npy"), "--labels2", str(tmp_path / "y.npy"),
                             "--tile", str(T), "--out", str(out)]) == 0
    with np.load(next((out / "trn").glob("*.npz"))) as z:
        assert rasterio.crs.CRS.from_wkt(str(z["crs"])).to_epsg() == 32650
        tf = rasterio.Affine(*z["transform"])
        assert tf == scenes.transform() @ rasterio.Affine.scale(T)
        assert int(z["tile_size"]) == T
        # the transform maps a tile's (col, row) to its upper-left corner on the map
        r, c = int(z["row"][0]), int(z["col"][0])
        assert tf @ (c, r) == scenes.transform() @ (c * T, r * T)
    summary = split_summary.inspect_split(out / "trn")
    assert summary.geo["tile_size"] == T and summary.to_dict()["georeferencing"]["crs_name"] == \
        "WGS 84 / UTM zone 50N"
    assert inspect.main([str(out / "trn")]) == 0
    assert f"georeferenced: WGS 84 / UTM zone 50N; tiles of {T} px; tile grid origin " \
           "(500000, 3400000), cell 80 x -80 map units" in capsys.readouterr().out


@pytest.mark.parametrize("case, words", [
    ("shifted", ["transform: origin", "shifted by (5000, 0) map units"]),
    ("crs", ["CRS EPSG:32650 vs EPSG:32651"]),
])
def test_raster_dates_are_checked_against_each_other(tmp_path, capsys, case, words):
    from tests.data import _scenes as scenes

    kw = {"tf2": scenes.transform((scenes.ORIGIN[0] + 5000, scenes.ORIGIN[1]))} \
        if case == "shifted" else {"crs2": "EPSG:32651"}
    t1, t2, *_ = _scene(tmp_path, **kw)
    assert make_shards.main(["raster", "--t1", str(t1), "--t2", str(t2), "--tile", str(T),
                             "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {t1}, {t2}: "), err
    for w in words:
        assert w in err
    assert not (tmp_path / "o").exists()


def test_unlabelled_raster_shards_pad_the_edges(tmp_path):
    t1, t2, x1, x2, _ = _scene(tmp_path, height=5 * T - 3, width=6 * T + 2)
    out = tmp_path / "o"
    assert make_shards.main(["raster", "--t1", str(t1), "--t2", str(t2), "--tile", str(T),
                             "--out", str(out)]) == 0
    pairs = _all_pairs(out)
    assert sorted(pairs) == [(r, c) for r in range(5) for c in range(7)]  # edges kept
    assert {(l1, l2) for *_, l1, l2 in pairs.values()} == {(0, 0)}  # unlabelled
    edge = pairs[(4, 6)][0]  # 5 rows x 2 columns of image, mirrored to T x T
    np.testing.assert_array_equal(edge[:5, :2], x1[4 * T:, 6 * T:])
    np.testing.assert_array_equal(edge[:5, 2:4], x1[4 * T:, 6 * T:][:, ::-1])
    np.testing.assert_array_equal(edge[5:8, :2], x1[4 * T:, 6 * T:][::-1][:3])
    np.testing.assert_array_equal(pairs[(1, 2)][1], x2[T:2 * T, 2 * T:3 * T])
    summary = split_summary.inspect_split(out / "trn")  # readable; every pair undefined for training
    assert summary.n_pairs == 0 and summary.n_skipped == sum(
        len(np.load(p)["row"]) for p in shards.list_shards(out / "trn"))


def test_one_label_file_without_the_other_is_refused(tmp_path, capsys):
    t1, t2, *_ = _scene(tmp_path)
    np.save(tmp_path / "y.npy", np.ones((5, 6), np.int64))
    assert make_shards.main(["raster", "--t1", str(t1), "--t2", str(t2), "--tile", str(T),
                             "--labels1", str(tmp_path / "y.npy"), "--out",
                             str(tmp_path / "o")]) == 2
    assert "--labels1 without --labels2" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_full_size_label_raster_on_padded_edges(tmp_path):
    """Majority of the in-image pixels of an edge tile; a grid of the padded shape works too."""
    t1, t2, *_ = _scene(tmp_path, height=2 * T + 3, width=3 * T)
    labels = np.ones((2 * T + 3, 3 * T), np.uint8)
    labels[2 * T:, :T] = 2  # the 3 in-image rows of edge tile (2, 0)
    Image.fromarray(labels).save(tmp_path / "l.png")
    out = tmp_path / "o"
    assert make_shards.main(["raster", "--t1", str(t1), "--t2", str(t2), "--tile", str(T),
                             "--labels1", str(tmp_path / "l.png"), "--labels2",
                             str(tmp_path / "l.png"), "--out", str(out)]) == 0
    pairs = _all_pairs(out)
    assert len(pairs) == 9 and pairs[(2, 0)][2] == 2 and pairs[(2, 1)][2] == 1


def test_choose_grid_keeps_an_old_style_grid_and_says_width_x_height(caplog):
    with caplog.at_level("WARNING"):
        assert make_shards.choose_grid((855, 1141), 150, [np.zeros((5, 7))]) == (5, 7)
    assert "image 1141x855 (width x height) is not a multiple of --tile 150" in caplog.text
    assert "the last 91 column(s) and 105 row(s) of pixels are left out" in caplog.text
    assert make_shards.choose_grid((855, 1141), 150, []) == (6, 8)


def test_block_split_keeps_blocks_together():
    row, col = np.divmod(np.arange(20 * 30), 30)
    parts = splits.split_blocks(row, col, 5, (0.6, 0.2, 0.2), seed=3)
    assert sorted(np.concatenate(list(parts.values())).tolist()) == list(range(600))
    home = {}
    for name, idx in parts.items():
        for i in idx:
            assert home.setdefault((row[i] // 5, col[i] // 5), name) == name
    sizes = {k: len(v) for k, v in parts.items()}
    assert abs(sizes["trn"] - 360) <= 25 and sizes["val"] > 0 and sizes["tst"] > 0


def test_block_split_mode_on_the_command_line(tmp_path):
    t1, t2, *_ = _scene(tmp_path, height=8 * T, width=8 * T)
    out = tmp_path / "o"
    assert make_shards.main(["raster", "--t1", str(t1), "--t2", str(t2), "--tile", str(T),
                             "--out", str(out), "--split_mode", "block", "--block_size", "2",
                             "--split", "0.5,0.25,0.25"]) == 0
    where = {}
    for split in ("trn", "val", "tst"):
        for path in shards.list_shards(out / split):
            with np.load(path) as z:
                for r, c in zip(z["row"], z["col"], strict=True):
                    assert where.setdefault((r // 2, c // 2), split) == split
    assert len(where) == 16


def test_block_split_needs_grid_positions(tmp_path, capsys):
    root = tmp_path
    for d in ("d1", "d2"):
        (root / d / "a").mkdir(parents=True)
        for name in ("x", "y", "z"):
            Image.fromarray(np.zeros((T, T, 3), np.uint8)).save(root / d / "a" / f"{name}.png")
    assert make_shards.main(["folders", "--t1", str(root / "d1"), "--t2", str(root / "d2"),
                             "--out", str(root / "o"), "--split_mode", "block"]) == 2
    assert "--split_mode block: the tiles have no grid position" in capsys.readouterr().err


@pytest.mark.parametrize("dtype, bands", [(np.uint16, None), (np.uint8, [3, 1]),
                                          (np.float32, None)])
def test_windowed_reads_give_the_shards_of_the_whole_image(tmp_path, dtype, bands):
    """Issue 24: rasters are read tile by tile (memory flat in the scene size); the tiles, the
    edge padding included (a raster of 250 x 333 px, tile 64), equal those cut from the whole
    image in memory, byte for byte."""
    rng = np.random.default_rng(0)
    top = 1.0 if dtype == np.float32 else np.iinfo(dtype).max
    images = [(rng.random((250, 333, 4)) * top).astype(dtype) for _ in range(2)]
    t1, t2 = tmp_path / "t1.tif", tmp_path / "t2.tif"
    for path, x in zip((t1, t2), images, strict=True):
        _geotiff(path, x)
    labels = rng.integers(1, 4, size=(4, 6)).astype(np.int32)
    np.save(tmp_path / "y1.npy", labels)
    np.save(tmp_path / "y2.npy", labels[::-1])
    kw = dict(t1=t1, t2=t2, labels1=tmp_path / "y1.npy", labels2=tmp_path / "y2.npy", tile=64,
              bands=bands)
    streamed = make_shards.raster_pairs(**kw, stream=True)
    whole = make_shards.raster_pairs(**kw, stream=False)
    idx = rng.permutation(streamed.n)
    a, b = streamed.get_pairs(idx), whole.get_pairs(idx)
    assert sorted(a) == sorted(b)
    for key in a:
        assert np.asarray(a[key]).dtype == np.asarray(b[key]).dtype, key
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)
    assert a["image_t1"].shape == (24, 64, 64, 4 if bands is None else 2)


def test_a_float_raster_out_of_range_is_refused_before_writing(tmp_path, capsys):
    x = np.full((70, 70, 3), 0.5, np.float32)
    x[69, 69, 2] = 1.5
    t1 = tmp_path / "a.tif"
    _geotiff(t1, x)
    rc = make_shards.main(["raster", "--t1", str(t1), "--t2", str(t1), "--tile", "32",
                           "--out", str(tmp_path / "out")])
    assert rc == 2 and "float values outside [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
