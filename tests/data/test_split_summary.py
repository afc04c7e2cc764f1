"""data.split_summary.input_size: the one rule "no --image_size means the data's own size", and the
loader and checkpoint check that follow it (a size equal to the data's own means no resize)."""

import numpy as np
import pytest

from data.split_summary import SplitSummary, input_size


def _summary(shape):
    return SplitSummary("trn", [], 4, 0, shape, np.uint8, 3, None, np.ones(3), np.ones(3), 0,
                        False, [])


@pytest.mark.parametrize("given,expected", [(None, (48, 40)), ((), (48, 40)), ((32, 32), (32, 32)),
                                            ([64, 80], (64, 80)), ((48, 40), (48, 40))])
def test_input_size_is_the_given_size_or_the_datas(given, expected):
    got = input_size(_summary((48, 40, 3)), given)
    assert got == expected and all(type(v) is int for v in got)


def test_the_loader_resizes_only_to_another_size(demo_data):
    from data.loader import keeps_raw
    from data.split_summary import inspect_split

    summary = inspect_split(demo_data / "trn", check_values=False)
    own = input_size(summary)
    assert keeps_raw(summary, None, raw_integers=True)
    assert keeps_raw(summary, own, raw_integers=True)  # the resolved size: no resize
    assert not keeps_raw(summary, (own[0] + 8, own[1]), raw_integers=True)


def test_the_resolved_size_gives_the_same_batches_as_none(demo_data):
    """training passes the resolved DataPlan.image_size where it passed None before: same batches."""
    from data.loader import make_dataset

    def first(size):
        ds, summary = make_dataset(demo_data / "val", 8, training=False, image_size=size,
                                   raw_integers=True)
        (x1, x2), (y1, y2) = next(iter(ds))
        return summary, [np.asarray(a) for a in (x1, x2, y1, y2)]

    summary, ref = first(None)
    _, got = first(input_size(summary))
    assert ref[0].dtype == got[0].dtype == summary.dtype
    for a, b in zip(ref, got, strict=True):
        np.testing.assert_array_equal(a, b)
