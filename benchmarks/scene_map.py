"""Mapping whole scenes with evaluation.scene_map (predict.py's library): peak memory and tiles/s.

    python -m benchmarks.scene_map --sizes 2048,8192,16384 --tile 64 --batch 32 \\
        --json benchmarks/results/scene_map.json

For each size S, two synthetic uint8 3-band GeoTIFFs of S x S pixels (UTM, 10 m) are written strip
by strip to a temporary directory, then two child processes run, each reporting its own peak
resident set (``ru_maxrss``, and ``VmHWM`` as a cross-check):

* ``map``: load a random-weight small-backbone CorrFusionNet (input ``--tile``), one warm-up
  ``predict_on_batch`` (compiles the predict function, as any later scene would find it), then
  ``evaluation.scene_map.map_scene`` over the whole scene: windowed reads one row of tiles at a time,
  prediction, the five GeoTIFFs, the quick-look and summary.json. Tiles/s over the wall time of
  ``map_scene``.
* ``bare``: the same model, the first ``--bare_tiles`` tiles of the same scene read into memory
  (through the same reader), one warm-up batch, then ``net.predict((x1, x2), batch_size)`` on them:
  tiles/s of the model alone.

The peak of ``map`` should not grow with the scene (memory bounded by one row of tiles); its
tiles/s should be close to ``bare``'s.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pathlib
import resource
import subprocess
import sys
import tempfile
import time

import numpy as np

from benchmarks import common

log = logging.getLogger("benchmarks.scene_map")
CLASSES = 6


def write_scene(path, size, tile, seed):
    """A size x size uint8 RGB GeoTIFF: cells of ``tile`` pixels with one of 6 colours, noise;
    written in strips of 512 rows (never the whole scene in memory)."""
    import rasterio
    from rasterio.transform import from_origin

    rng = np.random.default_rng(seed)
    colours = rng.integers(20, 235, (CLASSES, 3)).astype(np.int16)
    cells = -(-size // tile)
    classes = rng.integers(0, CLASSES, (cells, cells))
    profile = {"driver": "GTiff", "height": size, "width": size, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32650", "transform": from_origin(500000, 3400000, 10, 10),
               "tiled": True, "blockxsize": 256, "blockysize": 256, "BIGTIFF": "IF_SAFER"}
    strip = 512
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, size, strip):
            h = min(strip, size - top)
            rows = (np.arange(top, top + h) // tile)[:, None]
            cols = (np.arange(size) // tile)[None, :]
            image = colours[classes[rows, cols]]
            image = image + rng.integers(-12, 13, image.shape, dtype=np.int16)
            data = np.clip(image, 0, 255).astype(np.uint8)
            dst.write(np.moveaxis(data, -1, 0), window=rasterio.windows.Window(0, top, size, h))
    return path


def peak_mib() -> dict:
    return {"ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "vm_hwm_mib": common.vm_hwm_mib()}


def child(args) -> dict:
    """One measurement (``--child map|bare``) in this process; prints its JSON line."""
    common.ensure_repo_on_path()
    import model as cfn
    from data import rasters
    from evaluation import scene_map

    net = cfn.load_model(args.model)
    t1, t2 = pathlib.Path(args.scene) / "t1.tif", pathlib.Path(args.scene) / "t2.tif"
    warm = np.zeros((args.batch, args.tile, args.tile, 3), np.uint8)
    net.predict_on_batch((warm, warm))
    out = {"mode": args.child, "size": args.size}
    with rasters.open_pair(t1, t2) as pair:
        grid = pair.grid(args.tile)
        out["tiles"] = grid.n_tiles
        if args.child == "map":
            config = scene_map.MapConfig(t1=t1, t2=t2, out=pathlib.Path(args.out),
                                         tile=args.tile, batch_size=args.batch, progress=False)
            names = [f"class {k + 1}" for k in range(CLASSES)]
            start = time.perf_counter()
            summary = scene_map.map_scene(net, config, pair, names, image_size=(args.tile,) * 2)
            wall = time.perf_counter() - start
            out.update(seconds=wall, tiles_per_s=grid.n_tiles / wall,
                       model_seconds=summary["model_seconds"],
                       model_tiles_per_s=grid.n_tiles / summary["model_seconds"])
        else:
            x1, x2 = [], []
            for row in rasters.iter_tile_rows(pair, grid):
                x1.append(row.x1)
                x2.append(row.x2)
                if sum(len(x) for x in x1) >= args.bare_tiles:
                    break
            x1 = np.concatenate(x1)[:args.bare_tiles]
            x2 = np.concatenate(x2)[:args.bare_tiles]
            net.predict((x1[:args.batch], x2[:args.batch]), batch_size=args.batch, verbose=0)
            start = time.perf_counter()
            net.predict((x1, x2), batch_size=args.batch, verbose=0)
            wall = time.perf_counter() - start
            out.update(tiles_measured=len(x1), seconds=wall, tiles_per_s=len(x1) / wall)
    out.update(peak_mib())
    out["load_average"] = common.load_average()
    return out


def run_child(mode, size, scene, model_path, args, out_dir) -> dict:
    cmd = [sys.executable, "-m", "benchmarks.scene_map", "--child", mode, "--size", str(size),
           "--scene", str(scene), "--model", str(model_path), "--tile", str(args.tile),
           "--batch", str(args.batch), "--bare_tiles", str(args.bare_tiles), "--out", str(out_dir)]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": "-1"}
    proc = subprocess.run(cmd, cwd=common.ROOT, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} {size}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    g = p.add_argument_group("benchmark")
    g.add_argument("--sizes", default="2048,8192,16384", help="scene sizes in pixels (square)")
    g.add_argument("--tile", type=int, default=64, help="tile = model input size")
    g.add_argument("--batch", type=int, default=32)
    g.add_argument("--bare_tiles", type=int, default=4096,
                   help="tiles of each scene held in memory for bare predict")
    g.add_argument("--reps", type=int, default=1,
                   help="bare/map child pairs per size, alternating which goes first")
    g.add_argument("--json", default=None, help="write the results here")
    g.add_argument("--workdir", default=None, help="scenes and maps (default a temporary dir)")
    c = p.add_argument_group("child process (internal)")
    c.add_argument("--child", choices=("map", "bare"), default=None)
    c.add_argument("--size", type=int, default=None)
    c.add_argument("--scene", default=None)
    c.add_argument("--model", default=None)
    c.add_argument("--out", default=None)
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        sys.stdout.write(json.dumps(child(args)) + "\n")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    common.ensure_repo_on_path()
    import model as cfn

    sizes = [int(s) for s in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(dir=args.workdir) as tmp:
        tmp = pathlib.Path(tmp)
        model_path = tmp / "small.keras"
        cfn.build_model(CLASSES, image_size=(args.tile, args.tile), backbone="small",
                        method="corrfusion", hidden=64, seed=0).save(model_path)
        results = []
        for size in sizes:
            scene = tmp / f"scene{size}"
            scene.mkdir()
            start = time.perf_counter()
            write_scene(scene / "t1.tif", size, args.tile, 1)
            write_scene(scene / "t2.tif", size, args.tile, 2)
            log.info("%d px scene written in %.0f s", size, time.perf_counter() - start)
            for rep in range(args.reps):
                for mode in (("bare", "map") if rep % 2 == 0 else ("map", "bare")):
                    r = run_child(mode, size, scene, model_path, args, scene / f"maps{rep}")
                    r["rep"] = rep
                    log.info("%s", json.dumps(r))
                    results.append(r)
            for f in scene.glob("*.tif"):
                f.unlink()
    report = {"config": vars(args), "versions": common.versions(), "results": results,
              "date": time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime())}
    for size in sizes:
        m = [r for r in results if r["size"] == size and r["mode"] == "map"]
        b = [r for r in results if r["size"] == size and r["mode"] == "bare"]
        ms = float(np.median([r["tiles_per_s"] for r in m]))
        bs = float(np.median([r["tiles_per_s"] for r in b]))
        ratios = [x["tiles_per_s"] / y["tiles_per_s"] for x, y in zip(m, b, strict=True)]
        log.info("%6d px: %6d tiles, map %.1f tiles/s vs bare %.1f (medians; per-rep ratios %s), "
                 "map peak %.0f MiB", size, m[0]["tiles"], ms, bs,
                 " ".join(f"{x:.3f}" for x in ratios), max(r["ru_maxrss_mib"] for r in m))
    if args.json:
        common.write_json(args.json, report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
