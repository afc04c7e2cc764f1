"""python -m data.inspect: summaries, and bad input as one line with exit status 2."""

import json
import subprocess
import sys

from data import inspect


def test_summary_of_a_data_dir(demo_data, capsys):
    assert inspect.main([str(demo_data)]) == 0
    out = capsys.readouterr().out
    for split, n in (("trn", 84), ("val", 12), ("tst", 24)):
        assert f"{demo_data / split}: 1 shard(s), {n} pairs" in out
    assert "32x32x3 uint8" in out and "changed pairs" in out and "dense_residential" in out


def test_json_of_one_split(demo_data, capsys):
    assert inspect.main([str(demo_data / "val"), "--json", "--num_classes", "4"]) == 0
    (summary,) = json.loads(capsys.readouterr().out)
    assert summary["n_pairs"] == 12 and summary["num_classes"] == 4
    assert sum(summary["hist_t1"]) == 12 and summary["has_rowcol"]


def test_bad_input_one_line_exit_2(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert inspect.main([str(tmp_path / "empty")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {tmp_path / 'empty'}: split: ")


def test_labels_above_num_classes(demo_data, capsys):
    assert inspect.main([str(demo_data / "trn"), "--num_classes", "2"]) == 2
    assert "label_t1: label" in capsys.readouterr().err


def test_command_line_no_traceback(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "a.npz").write_bytes(b"PK\x03\x04 truncated")
    proc = subprocess.run([sys.executable, "-m", "data.inspect", str(tmp_path / "s")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"error: {tmp_path / 's' / 'a.npz'}: file: ")
    assert proc.stdout == ""


def _flip_bytes_in(path, key, n=40):
    """Damage ``n`` bytes inside the data of an uncompressed member (zip directory intact)."""
    import zipfile

    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(key + ".npy")
    data = bytearray(path.read_bytes())
    start = info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size // 2
    data[start:start + n] = bytes(255 - b for b in data[start:start + n])
    path.write_bytes(bytes(data))


def test_corrupt_bytes_in_uncompressed_shard(tmp_path, capsys):
    """data.inspect reads every image byte: a damaged one fails the CRC-32, named by file and key."""
    from tests.data._helpers import make_split

    split = make_split(tmp_path / "trn", sizes=(5, 6), size=16)
    _flip_bytes_in(split / "shard_001.npz", "image_t1")
    assert inspect.main([str(tmp_path)]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err.count("\n") == 1, captured.err
    assert captured.err.startswith(f"error: {split / 'shard_001.npz'}: image_t1: damaged data "
                                   "(Bad CRC-32"), captured.err


def test_dangling_link_in_a_split(tmp_path, capsys):
    from tests.data._helpers import make_split

    split = make_split(tmp_path / "trn", sizes=(5,))
    (split / "shard_005.npz").symlink_to(tmp_path / "gone.npz")
    assert inspect.main([str(split)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: {split / 'shard_005.npz'}: file: dangling")
