"""BoVW + HIK-SVM baseline model (model.bovw): kernel, descriptors, codebook."""


import numpy as np
import pytest

from model import bovw

FAST = {"patch": 8, "words": 50}  # 32x32 demo tiles -> 16 windows per image


def _hik_direct(a, b):
    return np.minimum(a[:, None, :], b[None, :, :]).sum(-1)


@pytest.mark.parametrize("density", [0.05, 0.9])  # sparse and dense code paths
def test_hik_gram_matches_numpy(density):
    rng = np.random.default_rng(0)
    a = rng.random((23, 40)) * (rng.random((23, 40)) < density)
    b = rng.random((17, 40)) * (rng.random((17, 40)) < density)
    np.testing.assert_allclose(bovw.hik_gram(a, b), _hik_direct(a, b), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bovw.hik_gram(a), _hik_direct(a, a), rtol=1e-5, atol=1e-6)
    # tiny blocks exercise the block loops
    np.testing.assert_allclose(bovw.hik_gram(a, b, max_elements=50), _hik_direct(a, b),
                               rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bovw.hik_gram(a, max_elements=50), _hik_direct(a, a),
                               rtol=1e-5, atol=1e-6)


def test_patch_descriptors_match_numpy():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (3, 21, 26, 3), dtype=np.uint8)
    d = bovw.patch_descriptors(x, patch=10, stride=10, descriptor="meanstd_grad")
    assert d.shape == (3, 2 * 2, bovw.descriptor_dim(3, "meanstd_grad")) == (3, 4, 15)
    win = x[2, 10:20, 0:10].astype(np.float64) / 255.0  # window (row 1, col 0) of image 2
    np.testing.assert_allclose(d[2, 2, :3], win.mean((0, 1)), atol=1e-5)
    np.testing.assert_allclose(d[2, 2, 3:6], win.std((0, 1)), atol=1e-4)
    np.testing.assert_allclose(d[..., 7:].sum(-1), 1.0, atol=1e-5)  # orientation histogram
    # overlapping windows: same values at the shared positions
    d5 = bovw.patch_descriptors(x, patch=10, stride=5)
    assert d5.shape[1] == 3 * 4
    np.testing.assert_allclose(d5[:, 2 * 4 + 0], d[:, 2], atol=1e-6)
    assert bovw.patch_descriptors(x, 10, descriptor="meanstd").shape == (3, 4, 6)


def test_codebook_sample_is_bounded(demo_data):
    cb = bovw.fit_codebook(demo_data / "trn", words=1000, patch=8, max_samples=300, seed=0)
    # 168 training images x ceil(300 / 168) = 2 windows -> 336 windows -> words capped at 33
    assert cb.words == 33
    h = cb.histograms(np.zeros((2, 32, 32, 3), np.uint8))
    np.testing.assert_allclose(h.sum(1), 1.0, atol=1e-6)
