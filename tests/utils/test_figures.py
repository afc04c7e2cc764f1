"""utils.figures: the diagrams need no run; run figures come from history.csv + an eval result dir."""

import numpy as np
import pytest

from utils import figures as F
from utils.metrics import change_probability, compute_metrics

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes=5_000):
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > min_bytes, path


@pytest.fixture
def fake_run(tmp_path):
    """A run directory as train_cnn.py + eval.py leave it, with made-up predictions (no TensorFlow)."""
    import eval as E

    rng = np.random.default_rng(0)
    n, k = 30, 3
    names = ["water", "farmland", "urban"]
    y1 = rng.integers(0, k, n)
    y2 = np.where(rng.random(n) < 0.2, (y1 + 1) % k, y1)
    p1 = rng.dirichlet(np.ones(k), n) + np.eye(k)[y1]
    p2 = rng.dirichlet(np.ones(k), n) + np.eye(k)[y2]
    p1, p2 = p1 / p1.sum(1, keepdims=True), p2 / p2.sum(1, keepdims=True)
    row, col = np.divmod(np.arange(n), 6)
    preds = {
        "label_t1": y1, "label_t2": y2, "pred_t1": p1.argmax(1), "pred_t2": p2.argmax(1),
        "prob_t1": p1, "prob_t2": p2, "p_change": change_probability(p1, p2),
        "changed_true": y1 != y2, "changed_pred": p1.argmax(1) != p2.argmax(1),
        "changed_pred_threshold": change_probability(p1, p2) >= 0.5, "row": row, "col": col,
        "class_names": names,
    }  # fmt: skip
    run = tmp_path / "run"
    E.write_outputs(
        run / "results" / "tst", compute_metrics(y1, y2, p1, p2, class_names=names), preds
    )
    lines = ["epoch,loss,val_loss,oa_t1,val_oa_t1"] + [
        f"{e},{1 / (e + 1)},{1.1 / (e + 1)},{e / 4},{e / 5}" for e in range(4)
    ]
    (run / "history.csv").write_text("\n".join(lines) + "\n")
    return run


def test_diagrams_without_run(tmp_path):
    assert F.main(["--out", str(tmp_path)]) == 0
    for name in F.DIAGRAMS:
        assert_png(tmp_path / name, 30_000)


def test_run_figures(fake_run, tmp_path):
    assert F.find_result_dir(fake_run) == fake_run / "results" / "tst"
    assert F.main(["--run", str(fake_run), "--out", str(tmp_path), "--no-diagrams"]) == 0
    for name in F.RUN_FIGURES:
        assert_png(tmp_path / name)
    assert not (tmp_path / "network.png").exists()


def test_bad_run_dir(tmp_path):
    from utils.cli import UsageError

    with pytest.raises(UsageError, match="no such run directory"):
        F.main(["--run", str(tmp_path / "nope"), "--out", str(tmp_path)])
