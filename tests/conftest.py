"""Shared fixtures of the test suite."""

import pytest


@pytest.fixture(scope="session")
def demo_data(tmp_path_factory):
    """A small generated data set: 120 pairs of 32x32 uint8, 4 classes, in trn/ val/ tst/.

    Returns the directory holding the three split directories (each one shard, with row/col and
    class_names; 84/12/24 pairs, about 5 % of pairs change class). Read-only: do not write into it.
    """
    from data import synthetic

    root = tmp_path_factory.mktemp("demo_data")
    synthetic.generate(root, pairs=120, size=32, classes=4, change_rate=0.05, seed=0)
    return root
