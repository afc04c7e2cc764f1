"""BoVW + KSFA (model.ksfa): slow-feature change intensity and Bayesian soft fusion."""

import itertools
from types import SimpleNamespace

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score

from model import ksfa


def _toy_split(rng, protos, n, change_rate, windows=60):
    """Word histograms of image pairs: multinomial draws of `windows` words from class prototypes."""
    k = len(protos)
    y1 = rng.integers(0, k, n)
    changed = rng.random(n) < change_rate
    y2 = np.where(changed, (y1 + rng.integers(1, k, n)) % k, y1)

    def hist(y):
        return np.stack([rng.multinomial(windows, protos[c]) for c in y]) / windows

    return SimpleNamespace(h1=hist(y1), h2=hist(y2), y1=y1, y2=y2)


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    protos = rng.dirichlet(np.full(30, 2.0), size=5)  # per-date accuracy ~0.9, not trivial
    return _toy_split(rng, protos, 400, 0.2, 20), _toy_split(rng, protos, 300, 0.2, 20)


def test_intensity_lower_for_unchanged_pairs(toy):
    trn, tst = toy
    model = ksfa.KSFA(n_basis=200, seed=0).fit(trn.h1, trn.h2, trn.y1 != trn.y2, num_classes=5)
    assert model.alpha_.shape == (200, 4)  # "auto": K - 1 slow features
    inten = model.intensity(tst.h1, tst.h2)
    changed = tst.y1 != tst.y2
    assert inten[~changed].mean() < inten[changed].mean()
    assert roc_auc_score(changed, inten) > 0.85
    # unit variance of the slow features on the training data (both dates, centred)
    f = np.concatenate([model.transform(trn.h1), model.transform(trn.h2)])
    np.testing.assert_allclose(f.var(0), 1.0, rtol=1e-3)


def test_joint_fusion_matches_brute_force():
    rng = np.random.default_rng(3)
    p1, p2 = rng.dirichlet(np.ones(3), 6), rng.dirichlet(np.ones(3), 6)
    pc = np.array([0.01, 0.99, 0.5, 0.2, 0.8, 0.05])
    out = ksfa.joint_fusion(p1, p2, pc)
    for i in range(6):
        score = {(a, b): p1[i, a] * p2[i, b] * (pc[i] if a != b else 1 - pc[i])
                 for a, b in itertools.product(range(3), repeat=2)}
        best = max(score, key=score.get)
        assert (out["pred_t1"][i], out["pred_t2"][i]) == best
        total = sum(score.values())
        assert out["p_change"][i] == pytest.approx(
            sum(v for (a, b), v in score.items() if a != b) / total)
    # the per-date outputs are distributions whose argmax is the joint MAP pair
    np.testing.assert_allclose(out["prob_t1"].sum(1), 1.0)
    np.testing.assert_array_equal(out["prob_t1"].argmax(1), out["pred_t1"])
    np.testing.assert_array_equal(out["prob_t2"].argmax(1), out["pred_t2"])


def test_fusion_change_f1_at_least_per_date_classifier(toy):
    """Holds when the intensity separates well (AUC ~0.9 here: F1 0.71 -> 0.76). With a weak
    intensity the MAP fusion trades recall for precision and F1 can drop (see model.ksfa)."""
    trn, tst = toy
    clf = LogisticRegression(C=0.3, max_iter=500).fit(
        np.concatenate([trn.h1, trn.h2]), np.concatenate([trn.y1, trn.y2]))
    p1, p2 = clf.predict_proba(tst.h1), clf.predict_proba(tst.h2)
    changed = tst.y1 != tst.y2
    f1_plain = f1_score(changed, p1.argmax(1) != p2.argmax(1))
    out = ksfa.ksfa_fusion(trn, tst, p1, p2, n_basis=200, seed=0)
    f1_fused = f1_score(changed, out["pred_t1"] != out["pred_t2"])
    assert f1_fused >= f1_plain, (f1_fused, f1_plain)
    assert out["info"]["calibration"].startswith("held-out")
    assert 0.0 <= out["p_change"].min() and out["p_change"].max() <= 1.0
    # a validation split with a single change state falls back to held-out training pairs
    one_state = SimpleNamespace(h1=tst.h1[~changed], h2=tst.h2[~changed], y1=tst.y1[~changed],
                                y2=tst.y2[~changed])
    out2 = ksfa.ksfa_fusion(trn, tst, p1, p2, cal=one_state, n_basis=200, seed=0)
    assert out2["info"]["calibration"].startswith("held-out")


def test_bad_arguments():
    with pytest.raises(ValueError, match="kernel"):
        ksfa.KSFA(kernel="linear")
    with pytest.raises(ValueError, match="unchanged"):
        ksfa.KSFA(n_basis=4).fit(np.eye(3), np.eye(3)[::-1], changed=np.ones(3, bool))
