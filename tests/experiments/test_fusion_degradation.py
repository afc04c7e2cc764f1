"""experiments/fusion_degradation.py: the compare.py command of each setting, and a tiny end-to-end run."""

import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.experiments._scripts import load

ROOT = Path(__file__).resolve().parents[2]


def _module():
    return load("fusion_degradation")


def test_original_setting_keeps_the_small_backbone(tmp_path, demo_data):
    import compare

    fd = _module()
    args = fd.parse_args(["--out", str(tmp_path)])
    assert fd.degradation(0.8, "t2") == {"date": "t2", "haze": 0.8, "cloud_cover": 0.4,
                                         "noise": pytest.approx(0.032), "blur": 0.0}
    project = compare.parse_args(fd.compare_argv(args, "project", demo_data, 0.8, 3))
    original = compare.parse_args(fd.compare_argv(args, "original", demo_data, 0.8, 3))
    for parsed in (project, original):  # the explicit --backbone wins over the preset's resnet50
        assert parsed.backbone == "small" and parsed.train.backbone == "small"
        assert parsed.train.epochs == 5 and parsed.train.batch_size == 16
        assert parsed.train.optimizer == "adam" and parsed.train.hidden == 256
    assert original.train.preset == "original" and original.train.bn == "frozen"
    assert original.train.pooling == "flatten" and project.train.preset is None
    assert Path(original.workdir) == tmp_path / "runs" / "original" / "s0.8"


def compare_in_process(cmd, cwd=None, stdout=None, stderr=None):
    """``subprocess.call`` of ``python compare.py ...`` (the experiment's one command) run as
    compare.py's main through the CLI wrapper in this process: the same argv and exit status,
    without a Python + TensorFlow start-up per level."""
    import compare
    from utils.cli import run_main

    assert cmd[0] == sys.executable and Path(cmd[1]) == ROOT / "compare.py", cmd
    return run_main(compare.main, [str(a) for a in cmd[2:]])


@pytest.mark.slow
def test_tiny_experiment_end_to_end(tmp_path, monkeypatch):
    fd = _module()
    monkeypatch.setattr(fd, "subprocess", SimpleNamespace(call=compare_in_process,
                                                         STDOUT=subprocess.STDOUT))
    out = tmp_path / "exp"
    argv = ["--out", str(out), "--levels", "0,0.9", "--pairs", "40",
            "--size", "16", "--classes", "3", "--methods", "baseline,corrfusion", "--seeds", "1",
            "--settings", "project", "--epochs", "1"]
    assert fd.main(argv) == 0
    rows = (out / "results.csv").read_text().splitlines()
    assert rows[0].startswith("setting,strength,method,seed,OA_t1,OA_t2,change_f1")
    assert sorted(r.split(",")[1:3] for r in rows[1:]) == [
        ["0.0", "baseline"], ["0.0", "corrfusion"], ["0.9", "baseline"], ["0.9", "corrfusion"]]
    assert "| project | 0.9 | corrfusion | 1 |" in (out / "table.md").read_text()
    img = np.asarray(Image.open(out / "fusion_degradation.png").convert("L"), float)
    assert img.std() > 10 and (img < 128).mean() > 0.005  # axes, lines and text, not blank
    # resumable: a second call finds every run done and only redraws
    assert fd.main(argv) == 0
    assert (out / "results.csv").read_text().splitlines() == rows


def test_readme_table_is_the_committed_results():
    """docs/experiments.md's "Does fusion help?" table is the script's table.md, not typed by hand."""
    table = (ROOT / "experiments" / "fusion_degradation" / "table.md").read_text()
    readme = (ROOT / "docs" / "experiments.md").read_text()
    assert table.strip() and table in readme
    rows = (ROOT / "experiments" / "fusion_degradation" / "results.csv").read_text().splitlines()
    assert len(rows) > 1
