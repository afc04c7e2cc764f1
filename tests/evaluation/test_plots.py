"""evaluation.plots: every figure is written as a real PNG of reasonable size that shows something:
its pixels vary and a fair part of it is not background (a blank figure fails)."""

import numpy as np
import pytest

from evaluation import metrics as M
from evaluation import plots as P
from tests.evaluation._images import assert_png, count_colors

NAMES = ["water", "farmland", "residential", "industrial"]


def test_a_blank_figure_fails_the_check(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100)
    fig.add_subplot().set_axis_off()
    fig.text(0.01, 0.01, ".", fontsize=1)
    fig.savefig(tmp_path / "blank.png")
    with pytest.raises(AssertionError):
        assert_png(tmp_path / "blank.png", min_bytes=0)


@pytest.fixture(scope="module")
def case():
    rng = np.random.default_rng(0)
    n, k = 36, len(NAMES)
    y1 = rng.integers(0, k, n)
    y2 = y1.copy()
    y2[:6] = (y2[:6] + 1) % k
    p1 = rng.dirichlet(np.ones(k), n) + 2 * np.eye(k)[y1]
    p2 = rng.dirichlet(np.ones(k), n) + 2 * np.eye(k)[y2]
    p1 /= p1.sum(1, keepdims=True)
    p2 /= p2.sum(1, keepdims=True)
    row, col = np.divmod(np.arange(n), 6)
    return dict(
        y1=y1,
        y2=y2,
        p1=p1,
        p2=p2,
        row=row,
        col=col,
        m=M.compute_metrics(y1, y2, p1, p2, class_names=NAMES),
    )


def test_matrices(case, tmp_path):
    m = case["m"]
    assert_png(P.plot_confusion_matrix(m["confusion_t1"], NAMES, tmp_path / "cm.png", title="t1"))
    assert_png(
        P.plot_confusion_matrix(m["confusion_t2"], NAMES, tmp_path / "cm_raw.png", normalize=False)
    )
    # an empty row (class never present) must not produce NaN warnings or fail
    cm = np.array(m["confusion_t1"])
    cm[0] = 0
    assert_png(P.plot_confusion_matrix(cm, NAMES, tmp_path / "cm0.png"))
    assert_png(
        P.plot_transition_matrices(
            m["transition_true"], m["transition_pred"], NAMES, tmp_path / "tr.png"
        )
    )


def test_pr_curve(case, tmp_path):
    changed = case["y1"] != case["y2"]
    pc = M.change_probability(case["p1"], case["p2"])
    m = case["m"]
    path = P.plot_pr_curve(
        changed, pc, tmp_path / "pr.png", 0.5, (m["change_recall"], m["change_precision"])
    )
    assert_png(path)
    assert_png(P.plot_pr_curve(np.zeros(5, bool), np.linspace(0, 1, 5), tmp_path / "pr_none.png"))


def test_change_maps(case, tmp_path):
    c = case
    pred1, pred2 = c["p1"].argmax(1), c["p2"].argmax(1)
    assert_png(
        P.plot_class_maps(
            c["row"], c["col"], c["y1"], c["y2"], pred1, pred2, NAMES, tmp_path / "cls.png"
        )
    )
    assert_png(
        P.plot_change_map(
            c["row"], c["col"], c["y1"] != c["y2"], pred1 != pred2, tmp_path / "chg.png"
        )
    )


def test_grid_from_rowcol():
    grid, origin = P.grid_from_rowcol([5, 5, 7], [2, 3, 2], [1, 2, 3])
    assert origin == (5, 2)
    np.testing.assert_array_equal(grid, [[1, 2], [-1, -1], [3, -1]])
    with pytest.raises(ValueError, match="equal lengths"):
        P.grid_from_rowcol([1, 2], [1], [1, 2])


def test_grid_of_map_coordinates_is_refused_not_allocated():
    """row/col in metres (one tile at 200000, 200000) would make a 298 GiB grid: a ValueError."""
    row = col = np.array([0, 1, 200_000])
    problem = P.grid_problem(row, col)
    assert "200001 x 200001" in problem and "tile grid indices" in problem
    with pytest.raises(ValueError, match="tile grid indices"):
        P.grid_from_rowcol(row, col, [0, 1, 2])
    assert P.grid_problem(*np.divmod(np.arange(36), 6)) is None
    # a dense grid past the bound: refused without the map-coordinates hint
    r, c = np.divmod(np.arange(50), 10)
    assert "tile grid indices" not in P.grid_problem(r, c, max_cells=20)
    assert P.grid_problem(r, c, max_cells=50) is None


def test_history(tmp_path):
    csv_path = tmp_path / "history.csv"
    lines = ["epoch,loss,val_loss,oa_t1,val_oa_t1,oa_t2,val_oa_t2,corr_loss,lr,note"]
    for e in range(5):
        lines.append(
            f"{e},{1 / (e + 1)},{1.2 / (e + 1)},{0.2 * e},{0.18 * e},{0.2 * e},{0.1 * e},{0.01},{1e-3},x"
        )
    csv_path.write_text("\n".join(lines) + "\n")
    h = P.read_history(csv_path)
    assert h["loss"][0] == 1.0 and np.isnan(h["note"]).all()
    assert_png(P.plot_history(csv_path, tmp_path / "curves.png"))
    # only a few columns, no epoch column
    (tmp_path / "h2.csv").write_text("loss\n1.0\n0.5\n")
    assert_png(P.plot_history(tmp_path / "h2.csv", tmp_path / "curves2.png"), min_bytes=1_000)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="header"):
        P.read_history(tmp_path / "empty.csv")


def test_a_single_colour_figure_fails_the_check(tmp_path):
    from matplotlib.figure import Figure

    fig = Figure(figsize=(6, 4), dpi=100, facecolor="#336699")
    fig.savefig(tmp_path / "flat.png", facecolor="#336699")
    with pytest.raises(AssertionError):
        assert_png(tmp_path / "flat.png", min_bytes=0)


def test_colours_are_counted_as_np_unique_counts_them():
    rng = np.random.default_rng(0)
    img = (rng.integers(0, 5, (120, 90, 3)) * 63).astype(np.uint8)
    img[:40] = 255
    expected = len(np.unique(img.reshape(-1, 3), axis=0))
    assert count_colors(img) == expected and expected > 50
    assert count_colors(img / 255.0) == expected  # floats as matplotlib reads a PNG
    assert count_colors(np.full((4, 4, 3), 0.2)) == 1


def test_change_colours_are_distinct_and_unchanged_is_not_white():
    from matplotlib.colors import to_rgb

    rgb = {name: np.array(to_rgb(c)) for name, c in P.CHANGE_COLORS.items()}
    assert len({tuple(v) for v in rgb.values()}) == 4
    tn = rgb["TN (unchanged, correct)"]
    assert np.abs(tn - np.array(to_rgb(P._NO_DATA))).max() > 0.2  # far from "no tile" white
    # Okabe-Ito: no red/green pair
    assert "#1a9850" not in P.CHANGE_COLORS.values() and "#d73027" not in P.CHANGE_COLORS.values()


def test_class_colours_follow_known_names_and_stay_stable():
    names = ["water", "Dense_Residential", "forest", "unknown_a", "farmland", "unknown_b"]
    colors = P.class_colors(names)
    assert colors[0] == "#1f78b4" and colors[2] == "#1b7837" and colors[4] == "#e6c229"
    assert len(set(colors)) == len(names)
    assert P.class_colors(names) == colors  # same names, same colours
    assert P.class_colors(["x", "y"])[0] == P.class_colors(["x", "z"])[0]  # by class id
    assert P.class_colors(names, {"water": "#000000"})[0] == "#000000"
    assert P.class_colors(["lake", "river"])[0] != P.class_colors(["lake", "river"])[1]


def test_history_keeps_every_column_under_its_run():
    h = {"epoch": np.arange(1.0, 4.0), "loss": np.ones(3), "oa_t1": np.ones(3),
         "val_oa_t1": np.ones(3), "tst_oa_t1": np.ones(3), "trn_oa_t1": np.ones(3),
         "trn_loss": np.ones(3), "cancorr": np.ones(3), "learning_rate": np.ones(3),
         **{f"extra_{i}": np.ones(3) for i in range(12)}}
    groups = P.history_groups(h)
    assert set(groups["oa_t1"]) == {"trn", "val", "tst", "trn (full)"}
    assert set(groups["loss"]) == {"trn", "trn (full)"}
    assert len(groups) == 4 + 12


def test_vector_formats_and_dpi(tmp_path):
    cm = np.array([[5, 2], [1, 7]])
    path = P.plot_confusion_matrix(cm, ["bare_soil", "water"], tmp_path / "cm.png",
                                   formats=("png", "pdf", "svg"), dpi=50)
    assert path == tmp_path / "cm.png" and path.is_file()
    assert (tmp_path / "cm.pdf").read_bytes()[:4] == b"%PDF"
    svg = (tmp_path / "cm.svg").read_text()
    assert "bare soil" in svg and "bare_soil" not in svg  # underscores shown as spaces
    assert "71%" in svg and "29%" in svg  # counts and row per cent: 5 and 2 of 7
    small = P.plot_confusion_matrix(cm, ["a", "b"], tmp_path / "small.png", dpi=50)
    big = P.plot_confusion_matrix(cm, ["a", "b"], tmp_path / "big.png", dpi=200)
    import matplotlib.image as mpimg

    assert mpimg.imread(big).shape[0] > 3 * mpimg.imread(small).shape[0]


def test_change_map_over_the_date2_image(tmp_path):
    import matplotlib.image as mpimg

    row, col = np.divmod(np.arange(12), 4)
    rng = np.random.default_rng(0)
    tiles = np.zeros((12, 8, 8, 3), np.float32)
    tiles[..., 1] = rng.random((12, 8, 8))  # green noise: only the image can put it there
    mosaic = P.tile_mosaic(row, col, tiles, cell=8)
    assert mosaic.shape == (3 * 8, 4 * 8, 3)
    np.testing.assert_array_equal(mosaic[:8, 8:16], tiles[1])
    t = np.zeros(12, bool)
    t[:3] = True
    p = t.copy()
    p[5] = True
    plain = P.plot_change_map(row, col, t, p, tmp_path / "plain.png")
    over = P.plot_change_map(row, col, t, p, tmp_path / "over.png", background=mosaic)
    assert_png(over)

    def greenish(path):
        px = mpimg.imread(path)[..., :3]
        return ((px[..., 1] - px[..., [0, 2]].max(-1)) > 0.3).mean()

    assert greenish(over) > 0.05 and greenish(plain) < 0.01


@pytest.mark.parametrize("n_changed", [5, 0])
def test_fusion_weights(tmp_path, n_changed):
    rng = np.random.default_rng(0)
    dist = np.concatenate([rng.gamma(2, 0.3, 60), rng.gamma(6, 0.6, n_changed)])
    changed = np.arange(len(dist)) >= 60
    path = P.plot_fusion_weights(1 - np.tanh(dist), dist, changed, tmp_path / "w.png")
    assert_png(path)
