"""data.splits: where commands find their splits; the random split; safe writing of split dirs."""

import numpy as np
import pytest

from data import shards, split_summary
from data.splits import (
    check_output_dir,
    parse_fractions,
    resolve_split_dirs,
    split_indices,
    write_splits,
)
from tests.data._helpers import shard_arrays


def test_explicit_splits_win_and_data_dir_fills_the_rest(tmp_path):
    dirs = resolve_split_dirs(tmp_path, {"trn": "mine/trn", "val": None})
    assert dirs == {"trn": "mine/trn", "val": str(tmp_path / "val"), "tst": str(tmp_path / "tst")}
    assert resolve_split_dirs(None, {"tst": "t"}) == {"trn": None, "val": None, "tst": "t"}


def test_optional_splits_only_where_the_directory_exists(tmp_path):
    (tmp_path / "tst").mkdir()
    dirs = resolve_split_dirs(tmp_path, {}, fill=("val", "tst"), optional=("val", "tst"))
    assert dirs == {"trn": None, "val": None, "tst": str(tmp_path / "tst")}


@pytest.mark.parametrize("text,expected", [("0.7,0.1,0.2", (0.7, 0.1, 0.2)), ("1,0,0", (1, 0, 0))])
def test_parse_fractions(text, expected):
    assert parse_fractions(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["0.7,0.1", "a,b,c", "0.5,0.5,0.5", "-0.1,0.6,0.5"])
def test_bad_fractions_name_the_value(text):
    with pytest.raises(ValueError, match="--split"):
        parse_fractions(text)


def test_split_indices_partition_reproducibly():
    parts = split_indices(100, (0.7, 0.1, 0.2), seed=3)
    assert [len(parts[s]) for s in ("trn", "val", "tst")] == [70, 10, 20]
    joined = np.sort(np.concatenate(list(parts.values())))
    np.testing.assert_array_equal(joined, np.arange(100))
    again = split_indices(100, (0.7, 0.1, 0.2), seed=3)
    assert all(np.array_equal(parts[s], again[s]) for s in parts)
    assert not np.array_equal(parts["tst"], split_indices(100, (0.7, 0.1, 0.2), seed=4)["tst"])


def test_small_sets_keep_one_pair_in_each_nonempty_split_or_refuse():
    parts = split_indices(3, (0.8, 0.1, 0.1))
    assert [len(parts[s]) for s in ("trn", "val", "tst")] == [1, 1, 1]
    with pytest.raises(ValueError, match="too few"):
        split_indices(3, (0.0, 0.5, 0.5))


def test_non_empty_output_split_directories_are_refused(tmp_path):
    (tmp_path / "out" / "val").mkdir(parents=True)
    check_output_dir(tmp_path / "out")  # an empty split directory is fine
    (tmp_path / "out" / "val" / "x").write_text("")
    with pytest.raises(shards.ShardError, match="val: --out: exists and is not empty"):
        check_output_dir(tmp_path / "out")
    (tmp_path / "file").write_text("")
    with pytest.raises(shards.ShardError, match="not a directory"):
        check_output_dir(tmp_path / "file")


def test_write_splits_writes_valid_shards_in_place(tmp_path):
    data = shard_arrays(10)
    names = list(data.pop("class_names"))
    written = write_splits(tmp_path / "out", {"trn": np.arange(6), "tst": np.arange(6, 10)},
                           lambda idx: {k: v[idx] for k, v in data.items()}, shard_size=4,
                           class_names=names)
    assert [len(written["trn"]), len(written["tst"])] == [2, 1]
    summary = split_summary.inspect_split(tmp_path / "out" / "trn")
    assert summary.n_pairs == 6 and list(summary.class_names) == names
    assert not [p for p in (tmp_path / "out").iterdir() if p.name.startswith(".")]
