"""evaluation.metrics against small hand-computed cases (docs/DESIGN.md §3)."""

import csv
import io
import json
import warnings

import numpy as np
import pytest
from sklearn.metrics import cohen_kappa_score

from evaluation import metrics as M


def onehot(idx, k):
    return np.eye(k)[np.asarray(idx)]


@pytest.fixture(autouse=True)
def no_warnings():
    """Degenerate cases are defined: none of them may warn."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


# Case A: K=3, 4 pairs. changed = [F, F, T, T]; t1 misses pair 3, t2 misses pair 1.
Y1 = np.array([0, 1, 2, 0])
Y2 = np.array([0, 1, 1, 2])
P1 = onehot([0, 1, 2, 1], 3)
P2 = onehot([0, 2, 1, 2], 3)


def test_change_probability_matches_definition():
    p1 = np.array([[0.9, 0.1], [0.5, 0.5], [1.0, 0.0]])
    p2 = np.array([[0.8, 0.2], [0.5, 0.5], [0.0, 1.0]])
    np.testing.assert_allclose(M.change_probability(p1, p2), [0.26, 0.5, 1.0])
    rng = np.random.default_rng(0)
    a, b = rng.dirichlet(np.ones(5), 7), rng.dirichlet(np.ones(5), 7)
    np.testing.assert_allclose(M.change_probability(a, b), 1 - np.einsum("nk,nk->n", a, b))
    with pytest.raises(ValueError, match="same shape"):
        M.change_probability(a, b[:, :4])


def test_hand_computed_case():
    m = M.compute_metrics(Y1, Y2, P1, P2, class_names=["a", "b", "c"])
    assert m["n_pairs"] == 4 and m["num_classes"] == 3 and m["n_changed"] == 2
    assert m["OA_t1"] == pytest.approx(0.75)
    assert m["OA_t2"] == pytest.approx(0.75)
    assert m["OA_tr"] == pytest.approx(0.5)
    # confusion t1: true sums [2,1,1], predicted sums [1,2,1] -> pe = 5/16, po = 12/16
    assert m["kappa_t1"] == pytest.approx(7 / 11)
    assert m["kappa_t2"] == pytest.approx(7 / 11)
    # predicted changed [F,T,T,T] vs true [F,F,T,T]: tp=2 fp=1 fn=0 tn=1
    assert m["OA_bi"] == pytest.approx(0.75)
    assert m["change_precision"] == pytest.approx(2 / 3)
    assert m["change_recall"] == pytest.approx(1.0)
    assert m["change_f1"] == pytest.approx(0.8)
    assert m["change_kappa"] == pytest.approx(0.5)  # po = 3/4, pe = 1/2
    assert {k: m["change"][k] for k in ("tp", "fp", "fn", "tn")} == {
        "tp": 2,
        "fp": 1,
        "fn": 0,
        "tn": 1,
    }
    # p_change = [0, 1, 1, 1]: positives {1, 1}, negatives {0, 1}
    assert m["p_change_roc_auc"] == pytest.approx(0.75)
    assert m["p_change_ap"] == pytest.approx(2 / 3)
    assert m["change_at_threshold"]["precision"] == pytest.approx(2 / 3)
    assert m["confusion_t1"] == [[1, 1, 0], [0, 1, 0], [0, 0, 1]]
    assert m["confusion_t2"] == [[1, 0, 0], [0, 1, 1], [0, 0, 1]]
    assert m["transition_true"] == [[1, 0, 1], [0, 1, 0], [0, 1, 0]]
    assert m["transition_pred"] == [[1, 0, 0], [0, 0, 2], [0, 1, 0]]
    pc = m["per_class"]["t1"]
    np.testing.assert_allclose(pc["precision"], [1, 0.5, 1])
    np.testing.assert_allclose(pc["recall"], [0.5, 1, 1])
    np.testing.assert_allclose(pc["f1"], [2 / 3, 2 / 3, 1])
    assert pc["support"] == [2, 1, 1]
    assert m["class_names"] == ["a", "b", "c"]
    json.loads(json.dumps(m))  # JSON-able, no NaN


def test_threshold_rule_differs_from_argmax():
    y1, y2 = np.array([0, 0, 1]), np.array([0, 1, 1])
    p1 = np.array([[0.9, 0.1], [0.6, 0.4], [0.2, 0.8]])
    p2 = np.array([[0.8, 0.2], [0.55, 0.45], [0.3, 0.7]])
    # p_change = [0.26, 0.49, 0.38]; argmax never predicts a change
    m = M.compute_metrics(y1, y2, p1, p2, threshold=0.4)
    assert m["change"]["n_pred_changed"] == 0
    assert m["OA_bi"] == pytest.approx(2 / 3)
    assert m["change_precision"] == 0.0 and m["change_recall"] == 0.0 and m["change_f1"] == 0.0
    assert m["change_kappa"] == pytest.approx(0.0)
    thr = m["change_at_threshold"]
    assert thr["threshold"] == 0.4
    assert thr["OA_bi"] == 1.0 and thr["precision"] == 1.0 and thr["recall"] == 1.0
    assert thr["f1"] == 1.0 and thr["kappa"] == 1.0
    assert m["p_change_roc_auc"] == pytest.approx(1.0)
    assert m["p_change_ap"] == pytest.approx(1.0)
    assert (
        M.compute_metrics(y1, y2, p1, p2, threshold=0.5)["change_at_threshold"]["n_pred_changed"]
        == 0
    )


def test_threshold_is_inclusive():
    p = np.array([[0.5, 0.5]])
    m = M.compute_metrics(np.array([0]), np.array([1]), p, p, threshold=0.5)
    assert m["change_at_threshold"]["n_pred_changed"] == 1


def test_no_changed_pairs():
    y = np.array([0, 1, 2])
    m = M.compute_metrics(y, y, onehot(y, 3), onehot(y, 3))
    assert m["n_changed"] == 0
    assert m["OA_bi"] == 1.0 and m["OA_tr"] == 1.0
    # empty denominators -> 0; both labelings the same constant -> kappa 1
    assert (m["change_precision"], m["change_recall"], m["change_f1"]) == (0.0, 0.0, 0.0)
    assert m["change_kappa"] == 1.0
    assert m["p_change_roc_auc"] is None and m["p_change_ap"] is None
    assert m["transition_true"] == [[1, 0, 0], [0, 1, 0], [0, 0, 1]]
    # one false alarm
    m = M.compute_metrics(y, y, onehot(y, 3), onehot([1, 1, 2], 3))
    assert m["change"]["fp"] == 1 and m["change_precision"] == 0.0 and m["change_recall"] == 0.0
    assert m["change_kappa"] == pytest.approx(0.0)
    assert m["OA_bi"] == pytest.approx(2 / 3)
    json.loads(json.dumps(m))


def test_all_changed_pairs():
    y1, y2 = np.array([0, 1, 2]), np.array([1, 2, 0])
    m = M.compute_metrics(y1, y2, onehot(y1, 3), onehot(y2, 3))
    assert m["n_changed"] == 3
    assert (m["change_precision"], m["change_recall"], m["change_f1"], m["change_kappa"]) == (
        1.0,
        1.0,
        1.0,
        1.0,
    )
    assert m["p_change_roc_auc"] is None and m["p_change_ap"] is None
    # one change missed: t2 predicted as t1's class on pair 2
    m = M.compute_metrics(y1, y2, onehot(y1, 3), onehot([1, 2, 2], 3))
    assert m["change_precision"] == 1.0
    assert m["change_recall"] == pytest.approx(2 / 3)
    assert m["change_f1"] == pytest.approx(0.8)
    assert m["change_kappa"] == pytest.approx(0.0)
    assert m["OA_t2"] == pytest.approx(2 / 3) and m["OA_tr"] == pytest.approx(2 / 3)


def test_kappa_matches_sklearn_where_defined():
    rng = np.random.default_rng(1)
    for _ in range(5):
        a, b = rng.integers(0, 4, 30), rng.integers(0, 4, 30)
        assert M.cohen_kappa(a, b, labels=range(4)) == pytest.approx(cohen_kappa_score(a, b))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"p2": np.ones((4, 2)) / 2}, "same shape"),
        ({"y1": np.array([0, 1, 3, 0])}, r"\[0, 2\]"),
        ({"y2": np.array([0, 1])}, r"shape \(4,\)"),
        ({"y1": np.array([0.0, 1, 2, 0])}, "integer"),
        ({"class_names": ["a"]}, "3 names"),
        ({"threshold": 1.5}, "threshold"),
    ],
)
def test_bad_inputs(kwargs, match):
    args = {"y1": Y1, "y2": Y2, "p1": P1, "p2": P2, **kwargs}
    with pytest.raises(ValueError, match=match):
        M.compute_metrics(**args)


def test_table_and_per_class_csv():
    m = M.compute_metrics(Y1, Y2, P1, P2, class_names=["a", "b", "c"])
    y = np.array([0, 1, 2])
    m0 = M.compute_metrics(y, y, onehot(y, 3), onehot(y, 3), class_names=["a", "b", "c"])
    table = M.format_table({"tst": m, "val": m0}, per_class=True)
    for key in M.HEADLINE_KEYS:
        assert key in table
    assert "n/a" in table and "tst" in table and "0.7500" in table
    assert M.format_table(m).count("\n") > 10
    rows = list(csv.DictReader(io.StringIO(M.per_class_csv({"tst": m, "val": m0}))))
    assert len(rows) == 2 * 2 * 3
    assert tuple(rows[0]) == M.PER_CLASS_FIELDS
    assert (
        rows[0]["class_name"] == "a" and rows[0]["date"] == "t1" and float(rows[0]["recall"]) == 0.5
    )
    h = M.headline(m)
    assert h["OA_t1"] == 0.75 and "thr_change_f1" in h


def test_mean_std_over_runs_is_the_sample_standard_deviation():
    from evaluation.metrics import mean_std

    mean, std = mean_std([0.9, 0.92, 0.97])
    assert mean == pytest.approx(np.mean([0.9, 0.92, 0.97]))
    assert std == pytest.approx(np.std([0.9, 0.92, 0.97], ddof=1))
    assert mean_std([0.9]) == (0.9, None) and mean_std([]) == (None, None)
