"""Map a whole scene: two co-registered rasters in, georeferenced class and change maps out.

    python predict.py -m runs/cf_small --t1 2002.tif --t2 2009.tif --out maps/
    python predict.py -m best.keras --t1 A.tif --t2 B.tif --out maps/ --tile 150 --stride 50 \\
        --bands 1,2,3 --threshold 0.3 --align

Reads like a table of contents: parse -> checkpoint -> rasters -> model -> map -> report. The
work is done by ``data.rasters`` (alignment, tiling grid, windowed reads) and ``evaluation.scene_map``
(prediction, GeoTIFFs, quick-look, summary). Everything that can be checked is checked before the
model is loaded; bad input leaves one ``error:`` line on stderr, exit status 2 and nothing written.
"""

from __future__ import annotations

import argparse
import logging
import pathlib
import sys

from data import rasters
from data.make_shards import parse_class_names
from evaluation import scene_map
from model import checkpoints
from parser import gpu_spec, positive_int, probability
from utils.cli import HelpFormatter, UsageError, configure_logging, run_main
from utils.devices import select_devices, setup_backend
from utils.rundir import run_args

log = logging.getLogger("corrfusion.predict")


# --------------------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="predict.py",
        description="Map a scene with a trained CorrFusionNet: class maps per date, change "
                    "probability, change and from-to maps as GeoTIFFs, a quick-look and a summary.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("-m", "--model", required=True,
                   help="a .keras checkpoint, or a run directory (its checkpoints/best.keras), or "
                        "the http(s) URL of a .keras checkpoint (downloaded once into Keras' cache)")
    p.add_argument("--sha256", default=None,
                   help="with -m URL: the checkpoint's SHA-256; the download is refused when it "
                        "differs")
    inp = p.add_argument_group("input")
    inp.add_argument("--t1", required=True, help="raster of date 1 (GeoTIFF)")
    inp.add_argument("--t2", required=True, help="raster of date 2, on the grid of --t1")
    inp.add_argument("--bands", default=None,
                     help="1-based bands to use, e.g. 1,2,3 (default: all bands)")
    inp.add_argument("--align", action="store_true",
                     help="resample date 2 onto date 1's grid (bilinear) instead of refusing a pair "
                          "whose CRS, transform or size differ")
    inp.add_argument("--min_valid", type=probability, default=0.5,
                     help="fraction of a tile's pixels that must hold data (not nodata, not all "
                          "bands 0) for the tile to be mapped at that date")
    tiles = p.add_argument_group("tiling")
    tiles.add_argument("--tile", type=positive_int, default=None,
                       help="tile size in pixels (default: the model's input size)")
    tiles.add_argument("--stride", type=positive_int, default=None,
                       help="pixels between tiles (default: the tile); smaller than the tile "
                            "gives maps at pixel resolution, overlapping tiles averaged")
    rule = p.add_argument_group("classes and change")
    rule.add_argument("--threshold", type=probability, default=None,
                      help="change.tif from p_change >= THRESHOLD (default: the argmax rule, "
                           "class at date 1 != class at date 2)")
    rule.add_argument("--class_names", default=None,
                      help="names of classes 1..K, comma-separated or a file with one per line "
                           "(default: the run's args.json, else 'class 1'..)")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True,
                     help="output directory: new or empty (nothing is replaced)")
    dev = p.add_argument_group("devices")
    dev.add_argument("-b", "--batch_size", type=positive_int, default=32, help="tiles per batch")
    dev.add_argument("-g", "--gpu", type=gpu_spec, default=None,
                     help="GPU ids (0 or 0,1) or 'cpu'; default: what CUDA_VISIBLE_DEVICES allows")
    dev.add_argument("-v", "--verbose", action="store_true",
                     help="debug log, and TensorFlow's start-up lines (CUDA, CPU instructions)")
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


# ------------------------------------------------------------------------------------------ steps
def read_model_card(path, sha256=None) -> tuple[pathlib.Path, tuple, int, list | None]:
    """Checkpoint, its input (H, W, C), K and the run's class names, without starting TensorFlow
    (but for a URL: downloaded once, checked against ``sha256``)."""
    if checkpoints.is_url(path):
        ckpt, run_root = checkpoints.download_checkpoint(path, sha256), None
    elif sha256:
        raise UsageError(f"--sha256: given with -m {path}; it checks a download (-m URL)")
    else:
        ckpt, run_root = checkpoints.resolve_checkpoint(path)
    config = checkpoints.read_checkpoint_config(ckpt)
    checkpoints.check_two_date_model(config, ckpt)
    shape, k = checkpoints.config_signature(config)
    if shape is None or k is None:
        raise UsageError(f"{ckpt}: config.json: no image_size/channels/num_classes; expected a "
                         "CorrFusionNet checkpoint")
    return ckpt, shape, k, run_args(run_root).get("class_names")


def class_names(given, saved, k, ckpt) -> list[str]:

    try:
        names = parse_class_names(given) if given else saved
    except ValueError as e:  # a list or file of names that cannot be used
        raise UsageError(str(e)) from None
    names = list(names) if names else [f"class {i + 1}" for i in range(k)]
    if given and saved and list(names) != list(saved):
        if sorted(names) == sorted(saved):  # the run's classes in another order: maps mislabelled
            i = next(i for i, (a, b) in enumerate(zip(names, saved, strict=True)) if a != b)
            raise UsageError(f"{ckpt}: --class_names: class {i + 1} is {names[i]!r}, the run "
                             f"(args.json) trained it as {saved[i]!r}; expected the run's order "
                             f"{list(saved)}")
        log.warning("--class_names %s rename the run's classes %s", names, list(saved))
    if len(names) != k:
        raise UsageError(f"{ckpt}: --class_names: {len(names)} names; expected {k}, the number "
                         "of classes of the model")
    return names


def default_tile(shape, ckpt) -> int:
    if shape[0] != shape[1]:
        raise UsageError(f"{ckpt}: model input {shape[1]}x{shape[0]} is not square; pass --tile")
    return int(shape[0])


def make_config(args, ckpt, shape) -> scene_map.MapConfig:
    tile = args.tile or default_tile(shape, ckpt)
    stride = args.stride or tile
    if stride > tile:
        raise UsageError(f"--stride {stride}: expected at most the tile ({tile})")
    try:
        bands = rasters.parse_bands(args.bands)
    except ValueError as e:
        raise UsageError(str(e)) from None
    return scene_map.MapConfig(
        t1=pathlib.Path(args.t1), t2=pathlib.Path(args.t2), out=pathlib.Path(args.out),
        checkpoint=ckpt, tile=tile, stride=stride, bands=bands,
        batch_size=args.batch_size, threshold=args.threshold, align=args.align,
        min_valid=args.min_valid,
    )


def load_model(ckpt):

    setup_backend()
    return checkpoints.load_checkpoint(ckpt)


def report(summary) -> None:
    ch = summary["changed"]
    log.info("%d tile pairs mapped (%d tiles without data); changed: %d cells, %.6g %s², "
             "%.1f %% (%s)", summary["pairs"], summary["tiles_nodata"], ch["cells"], ch["area"],
             summary["map_units"], 100 * ch["fraction"], summary["change_rule"])
    log.info("maps written to %s", summary["config"]["out"])


# ------------------------------------------------------------------------------------------- main
def main(argv=None) -> int:
    args = parse_args(argv)
    configure_logging(args.verbose)
    select_devices(args.gpu)
    if checkpoints.is_url(args.model):  # the cheap checks before the download
        checkpoints.check_download(args.model, args.sha256)
        scene_map.check_output_dir(args.out)
    ckpt, shape, k, saved_names = read_model_card(args.model, args.sha256)
    names = class_names(args.class_names, saved_names, k, ckpt)
    config = make_config(args, ckpt, shape)
    scene_map.check_output_dir(config.out)
    with rasters.open_pair(config.t1, config.t2, config.bands, channels=shape[2],
                           align=config.align,
                           hint="; pass --align to resample date 2 onto date 1's grid") as pair:
        net = load_model(ckpt)
        summary = scene_map.map_scene(net, config, pair, names, image_size=shape[:2])
    report(summary)
    return 0


if __name__ == "__main__":
    sys.exit(run_main(main))
