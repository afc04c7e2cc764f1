"""``python -m data.make_shards raster`` on scenes of growing size: peak memory (issue 24).

    python -m benchmarks.make_shards_memory --sizes 2048,4096,8192,16384 --tile 200 \\
        --json benchmarks/results/make_shards_memory.json

For each size S, two synthetic uint8 3-band GeoTIFFs of S x S pixels (``benchmarks.scene_map.
write_scene``, written by strips) are cut into shards by ``data.make_shards raster`` in a child
process, which reports its own peak resident set (``VmHWM``; ``ru_maxrss`` too, which on Linux
starts from the forking parent's resident set, so it reads high) and wall time. The rasters are read tile by tile (``data.image_files.WindowedRaster``), so the
peak should not grow with the scene: the goal is within ±10 % of the 2048² peak.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

from benchmarks import common
from benchmarks.scene_map import write_scene

CHILD = """
import json, resource, sys, time
from benchmarks import common
from data import make_shards
t = time.time()
rc = make_shards.main(sys.argv[1:])
print(json.dumps({"rc": rc, "seconds": time.time() - t,
                  "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "vm_hwm_mib": common.vm_hwm_mib()}))
"""


def run_size(size: int, tile: int, shard_size: int, work: pathlib.Path) -> dict:
    t1 = write_scene(work / "t1.tif", size, tile, seed=1)
    t2 = write_scene(work / "t2.tif", size, tile, seed=2)
    out = work / "shards"
    argv = ["raster", "--t1", str(t1), "--t2", str(t2), "--tile", str(tile), "--out", str(out),
            "--shard_size", str(shard_size)]
    root = pathlib.Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", CHILD, *argv], cwd=root, capture_output=True,
                          text=True, env={**os.environ, "PYTHONPATH": str(root)})
    if proc.returncode:
        raise SystemExit(proc.stderr[-3000:])
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result.update(size=size, tiles=(-(-size // tile)) ** 2,
                  shard_mib=sum(f.stat().st_size for f in out.rglob("*.npz")) / 2**20)
    for p in (t1, t2):
        p.unlink()
    shutil.rmtree(out)
    return result


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="2048,4096,8192,16384")
    p.add_argument("--tile", type=int, default=200)
    p.add_argument("--shard_size", type=int, default=256)
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory(prefix="make_shards_bench-") as tmp:
        for size in (int(s) for s in args.sizes.split(",")):
            row = run_size(size, args.tile, args.shard_size, pathlib.Path(tmp))
            print(json.dumps(row), flush=True)
            rows.append(row)
    base = rows[0]["vm_hwm_mib"]
    for row in rows:  # VmHWM: the child's own peak (ru_maxrss starts from the forking parent's)
        row["peak_vs_first"] = row["vm_hwm_mib"] / base - 1
    report = {"command": "python -m benchmarks.make_shards_memory " + " ".join(argv or sys.argv[1:]),
              "tile": args.tile, "shard_size": args.shard_size, "rows": rows,
              "versions": common.versions(), "load_average": common.load_average()}
    if args.json:
        common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
