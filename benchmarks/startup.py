"""Start-up time of the command-line entry points: ``python train_cnn.py -h`` and ``python eval.py -h``.

    python -m benchmarks.startup --reps 7

Each repetition runs both commands (alternating which goes first) as fresh processes and times the
wall clock from spawn to exit; the figure is the median. ``python -c pass`` is timed alongside as
the interpreter's own floor. Target: < 1 s.
"""

from __future__ import annotations

import argparse
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.common import ROOT, load_average, median_spread, versions, write_json

log = logging.getLogger("benchmarks.startup")
TARGET_S = 1.0
COMMANDS = {"train_cnn.py -h": ["train_cnn.py", "-h"], "eval.py -h": ["eval.py", "-h"],
            "python -c pass": ["-c", "pass"]}


def time_command(args) -> float:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=dict(os.environ, PYTHONDONTWRITEBYTECODE="1"))
    dt = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{args}: exit {proc.returncode}: {proc.stderr.decode()[-500:]}")
    return dt


def imported_heavy_modules(script: str) -> list[str]:
    """Heavy packages that ``script -h`` imports (should be none: -h is answered before them)."""
    code = (f"import runpy, sys; sys.argv = [{script!r}, '-h']\n"
            f"try:\n    runpy.run_path({script!r}, run_name='__main__')\n"
            "except SystemExit:\n    pass\n"
            "heavy = ('tensorflow', 'keras', 'jax', 'torch', 'numpy', 'scipy', 'sklearn', 'matplotlib')\n"
            "sys.stderr.write(','.join(m for m in heavy if m in sys.modules))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    last = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else ""
    return [m for m in last.split(",") if m]


def run(reps: int) -> dict:
    for args in COMMANDS.values():  # warm the page cache and the byte-code cache once
        time_command(args)
    times = {k: [] for k in COMMANDS}
    names = list(COMMANDS)
    for rep in range(reps):
        for name in (names if rep % 2 == 0 else names[::-1]):
            times[name].append(time_command(COMMANDS[name]))
    out = {"benchmark": "startup", "reps": reps, "target_s": TARGET_S, "versions": versions(),
           "load_average_end": load_average(), "seconds": {}, "heavy_imports": {}}
    for name, vals in times.items():
        stats = median_spread(vals)
        if name != "python -c pass":
            stats["pass"] = stats["median"] < TARGET_S
            stats["ratio_to_target"] = stats["median"] / TARGET_S
        out["seconds"][name] = stats
    for script in ("train_cnn.py", "eval.py"):
        out["heavy_imports"][script] = imported_heavy_modules(script)
    return out


def main(argv=None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s",
                        datefmt="%H:%M:%S")
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=7, help="repetitions (median reported)")
    p.add_argument("--json", default=None, help="write the figures as JSON here")
    a = p.parse_args(argv)
    out = run(a.reps)
    write_json(a.json, out)
    for name, s in out["seconds"].items():
        verdict = "" if "pass" not in s else f"  {'PASS' if s['pass'] else 'FAIL'} (< {TARGET_S:.0f} s)"
        sys.stdout.write(f"{name:16s} median {s['median']:.3f} s (min {s['min']:.3f}, "
                         f"max {s['max']:.3f}){verdict}\n")
    sys.stdout.write(f"heavy imports under -h: {out['heavy_imports']}\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
