"""Kernels shared by the BoVW baselines (``model.bovw``) and KSFA (``model.ksfa``): NumPy only."""

from __future__ import annotations

import math

import numpy as np

__all__ = ["hik_gram"]

_GRAM_ELEMENTS = 2**24  # elements of the (rows, cols, words) block in hik_gram


def hik_gram(a, b=None, max_elements=_GRAM_ELEMENTS):
    """Histogram-intersection kernel K[i, j] = Σ_d min(a[i, d], b[j, d]), computed blockwise.

    Two exact algorithms, picked by the sparsity of the inputs (word histograms of images with
    fewer windows than words are mostly zeros):

    * sparse (fraction of non-zeros below 1/4): per word d, only the rows where both a[:, d] and
      b[:, d] are non-zero contribute, K[ia, ib] += min(a[ia, d], b[ib, d]); work Σ_d |ia_d|·|ib_d|;
    * dense: blocks of rows x cols, np.minimum over a (rows, cols, D) temporary and a sum;
      for b None only the upper block triangle is computed and mirrored.

    Args:
        a: (n, D) array; b: (m, D) array or None (``a`` against itself).
        max_elements: bound on the elements of one temporary block.

    Returns:
        float64 array (n, m).
    """
    a = np.asarray(a, dtype=np.float32)
    sym = b is None
    b = a if sym else np.asarray(b, dtype=np.float32)
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[1]:
        raise ValueError(f"hik_gram: expected (n, D) and (m, D) arrays, got {a.shape}, {b.shape}")
    n, m, d = len(a), len(b), a.shape[1]
    out = np.zeros((n, m), np.float64)
    if n == 0 or m == 0 or d == 0:
        return out
    density = max(np.count_nonzero(a) / a.size, np.count_nonzero(b) / b.size)
    if density < 0.25:
        cols_a, rows_a = np.nonzero(a.T)  # sorted by word
        cols_b, rows_b = (cols_a, rows_a) if sym else np.nonzero(b.T)
        split_a = np.searchsorted(cols_a, np.arange(d + 1))
        split_b = split_a if sym else np.searchsorted(cols_b, np.arange(d + 1))
        for w in range(d):
            ia = rows_a[split_a[w]:split_a[w + 1]]
            ib = rows_b[split_b[w]:split_b[w + 1]]
            if len(ia) == 0 or len(ib) == 0:
                continue
            va, vb = a[ia, w], b[ib, w]
            step = max(1, max_elements // len(ib))
            for s in range(0, len(ia), step):
                out[np.ix_(ia[s:s + step], ib)] += np.minimum(va[s:s + step, None], vb[None, :])
        return out
    block = max(1, int(math.sqrt(max_elements / max(1, d))))
    for i in range(0, n, block):
        ai = a[i:i + block, None, :]
        for j in range(i if sym else 0, m, block):
            k = np.minimum(ai, b[None, j:j + block, :]).sum(axis=-1, dtype=np.float64)
            out[i:i + block, j:j + block] = k
            if sym and j != i:
                out[j:j + block, i:i + block] = k.T
    return out
