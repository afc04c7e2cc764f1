"""The most classes a run may have (``data.shards.MAX_CLASSES``, issue 24): a split's results with
K = MAX_CLASSES (metrics, K x K matrices, their figures, predictions) are written within a bounded
memory and time; one class more is refused before training (tests/scripts/test_hostile_inputs.py)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.evaluation._images import assert_png

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """
import json, sys, time
import numpy as np
from data.shards import MAX_CLASSES
from evaluation.evaluate import make_predictions, write_outputs
from evaluation.metrics import compute_metrics

k, n = MAX_CLASSES, 240
rng = np.random.default_rng(0)
y1 = rng.integers(0, k, n)
y2 = y1.copy()
y2[:12] = (y2[:12] + 1) % k
p1 = rng.random((n, k)).astype(np.float32)
p1 /= p1.sum(1, keepdims=True)
p2 = p1[::-1].copy()
names = [f"class {i + 1}" for i in range(k)]
t = time.time()
metrics = compute_metrics(y1, y2, p1, p2, 0.5, names)
write_outputs(sys.argv[1], metrics, make_predictions(y1, y2, p1, p2, 0.5, names, {}))
# VmHWM: this process's own peak (ru_maxrss would carry the pytest worker's peak over fork + exec)
hwm = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps({"k": k, "seconds": time.time() - t, "peak_mib": hwm / 1024}))
"""

#: what writing the results of K = MAX_CLASSES may take (measured 2026-12-06: 550 MiB since the
#: heat maps have a canvas of their own (evaluation.plots._heatmap_figure); 3.9 GiB before, when
#: seaborn's tick-label measures made a renderer of the whole figure each)
BUDGET_MIB = 1024


@pytest.mark.slow
def test_results_of_the_most_classes_are_written_within_the_budget(tmp_path):
    env = {**os.environ, "MPLBACKEND": "Agg", "CUDA_VISIBLE_DEVICES": "-1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "out")], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["k"] == 1000 and report["peak_mib"] < BUDGET_MIB, report
    out = tmp_path / "out"
    for name in ("results.json", "confusion_t1.png", "confusion_t2.png", "transitions.png",
                 "per_class.csv", "predictions.npz"):
        assert (out / name).stat().st_size > 0, name
    for name in ("confusion_t1.png", "confusion_t2.png", "transitions.png"):  # drawn, not blank
        assert_png(out / name)
    saved = json.loads((out / "results.json").read_text())["metrics"]
    assert len(saved["confusion_t1"]) == 1000 and len(saved["transition_true"][0]) == 1000
