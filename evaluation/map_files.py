"""The files of a scene map (evaluation.scene_map): the GeoTIFFs class_t1, class_t2, p_change, change
and from_to written in blocks of whole output rows (:class:`MapWriter`; :func:`write_grid_maps` for
predictions at tile grid positions), their colour maps and legend, and the quick-look PNG
(:func:`write_quicklook`)."""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np

from data.rasters import RasterPair
from utils.rundir import atomic_write_json

CLASS_FILES = ("class_t1.tif", "class_t2.tif")
MAP_FILES = (*CLASS_FILES, "p_change.tif", "change.tif", "from_to.tif")
OTHER_FILES = ("from_to.json", "quicklook.png", "summary.json")
P_NODATA = -1.0  # p_change where either date has no data
CHANGE_NODATA = 255  # change.tif: 0 unchanged, 1 changed, 255 no data
BLOCK = 256  # GeoTIFF block size; output rows are written in whole blocks of rows
QUICKLOOK_SIZE = 1024  # longest side of quicklook.png in pixels
# tab20, reordered so that the first classes get distinct hues (RGB)
PALETTE = [
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
]
CHANGE_COLOURS = {0: (210, 210, 210, 255), 1: (220, 20, 60, 255), CHANGE_NODATA: (0, 0, 0, 0)}


@dataclasses.dataclass
class Block:
    """Finished output rows ``row_off .. row_off + h``: mean class probabilities (h, w, K) per date
    and where each date holds data (h, w)."""

    row_off: int
    p1: np.ndarray
    p2: np.ndarray
    v1: np.ndarray
    v2: np.ndarray


# ----------------------------------------------------------------------------- writing


def class_colormap(k) -> dict:
    cmap = {0: (0, 0, 0, 0)}
    for i in range(k):
        cmap[i + 1] = (*PALETTE[i % len(PALETTE)], 255)
    return cmap


def from_to_legend(names) -> dict:
    """``{code: {"from", "to", "changed"}}`` with code = (from - 1) * K + to, classes 1-based."""
    k = len(names)
    return {str(a * k + b + 1): {"from": names[a], "to": names[b], "from_id": a + 1,
                                 "to_id": b + 1, "changed": a != b}
            for a in range(k) for b in range(k)}


def from_to_colormap(k) -> dict:
    cmap = {0: (0, 0, 0, 0)}
    for a in range(k):
        for b in range(k):
            cmap[a * k + b + 1] = (215, 215, 215, 255) if a == b else (
                *PALETTE[b % len(PALETTE)], 255)
    return cmap


class MapWriter:
    """The five GeoTIFFs of a scene map, written in blocks of whole output rows, and their counts.

    Args:
        out_dir: directory to write into.
        crs, transform: georeferencing of the output grid.
        shape: (rows, cols) of the output grid.
        names: the K class names.
        threshold: change.tif from p_change >= threshold; None: argmax t1 != argmax t2.
    """

    def __init__(self, out_dir, crs, transform, shape, names, threshold=None):
        import rasterio  # deferred: rasterio loads on first use

        self.out_dir = pathlib.Path(out_dir)
        self.shape, self.names, self.threshold = shape, list(names), threshold
        k = self.k = len(self.names)
        self.code_dtype = np.uint8 if k * k < 256 else np.uint16
        h, w = shape
        base = {"driver": "GTiff", "height": h, "width": w, "count": 1, "crs": crs,
                "transform": transform, "compress": "deflate", "BIGTIFF": "IF_SAFER"}
        if h >= BLOCK and w >= BLOCK:
            base.update(tiled=True, blockxsize=BLOCK, blockysize=BLOCK)
        specs = {
            "class_t1.tif": ("uint8", 0), "class_t2.tif": ("uint8", 0),
            "p_change.tif": ("float32", P_NODATA), "change.tif": ("uint8", CHANGE_NODATA),
            "from_to.tif": (np.dtype(self.code_dtype).name, 0),
        }
        self.dst = {}
        try:
            for name, (dtype, nodata) in specs.items():
                self.dst[name] = rasterio.open(self.out_dir / name, "w", dtype=dtype,
                                               nodata=nodata, **base)
        except BaseException:
            self.close()
            raise
        self._describe()
        self.pending: list[dict] = []
        self.pending_rows = 0
        self.next_row = 0
        self.hist1 = np.zeros(k, np.int64)
        self.hist2 = np.zeros(k, np.int64)
        self.transitions = np.zeros((k, k), np.int64)
        self.changed_argmax = 0
        self.changed_threshold = 0
        self.cells_nodata = 0

    def _describe(self):
        legend = ", ".join(f"{i + 1}={n}" for i, n in enumerate(self.names))
        tags = {f"CLASS_{i + 1}": n for i, n in enumerate(self.names)}
        for t in (1, 2):
            d = self.dst[f"class_t{t}.tif"]
            d.set_band_description(1, f"scene class at date {t}: {legend}; 0 = nodata")
            d.update_tags(1, **tags)
            d.write_colormap(1, class_colormap(self.k))
        self.dst["p_change.tif"].set_band_description(
            1, f"p_change = 1 - sum_k p1_k p2_k; {P_NODATA:g} = nodata")
        rule = (f"p_change >= {self.threshold:g}" if self.threshold is not None
                else "argmax t1 != argmax t2")
        self.dst["change.tif"].set_band_description(
            1, f"change ({rule}): 0 = unchanged, 1 = changed, {CHANGE_NODATA} = nodata")
        self.dst["change.tif"].write_colormap(1, CHANGE_COLOURS)
        self.dst["from_to.tif"].set_band_description(
            1, f"from-to transition code (from - 1) * {self.k} + to, legend in from_to.json; "
               "0 = nodata")
        if self.code_dtype == np.uint8:
            self.dst["from_to.tif"].write_colormap(1, from_to_colormap(self.k))

    def maps(self, block: Block) -> dict:
        """The five arrays of a block, and the counts updated."""
        k = self.k
        c1 = np.where(block.v1, block.p1.argmax(-1) + 1, 0).astype(np.uint8)
        c2 = np.where(block.v2, block.p2.argmax(-1) + 1, 0).astype(np.uint8)
        both = block.v1 & block.v2
        pc = np.where(both, 1.0 - (block.p1 * block.p2).sum(-1), P_NODATA).astype(np.float32)
        argmax = both & (c1 != c2)
        thresh = both & (pc >= self.threshold) if self.threshold is not None else argmax
        change = np.where(both, (thresh if self.threshold is not None else argmax), 0)
        change = np.where(both, change, CHANGE_NODATA).astype(np.uint8)
        codes = np.where(both, (c1.astype(np.int64) - 1) * k + c2, 0).astype(self.code_dtype)
        self.hist1 += np.bincount(c1[block.v1].ravel() - 1, minlength=k)[:k]
        self.hist2 += np.bincount(c2[block.v2].ravel() - 1, minlength=k)[:k]
        if both.any():
            self.transitions += np.bincount(codes[both].ravel().astype(np.int64) - 1,
                                            minlength=k * k)[:k * k].reshape(k, k)
        self.changed_argmax += int(argmax.sum())
        self.changed_threshold += int(thresh.sum())
        self.cells_nodata += int((~both).sum())
        return {"class_t1.tif": c1, "class_t2.tif": c2, "p_change.tif": pc,
                "change.tif": change, "from_to.tif": codes}

    def write(self, block: Block) -> None:
        """Add finished rows (in order); whole blocks of BLOCK rows are written as they fill."""
        if block.row_off != self.next_row:
            raise RuntimeError(f"rows out of order: got {block.row_off}, expected {self.next_row}")
        self.next_row += block.v1.shape[0]
        self.pending.append(self.maps(block))
        self.pending_rows += block.v1.shape[0]
        if self.pending_rows >= BLOCK or self.next_row >= self.shape[0]:
            self.flush()

    def flush(self) -> None:
        from rasterio.windows import Window  # deferred: rasterio loads on first use

        if not self.pending:
            return
        h, top = self.pending_rows, self.next_row - self.pending_rows
        for name, dst in self.dst.items():
            data = np.concatenate([p[name] for p in self.pending])
            dst.write(data, 1, window=Window(0, top, self.shape[1], h))
        self.pending, self.pending_rows = [], 0

    def close(self) -> None:
        for d in self.dst.values():
            d.close()


def write_from_to_legend(out_dir, names) -> pathlib.Path:
    """from_to.json: the legend of from_to.tif's codes."""

    path = pathlib.Path(out_dir) / "from_to.json"
    atomic_write_json(path, {"code": f"(from - 1) * {len(names)} + to; 0 = nodata",
                             "legend": from_to_legend(names)})
    return path


def write_grid_maps(out_dir, crs, transform, row, col, p1, p2, names,
                    threshold=None) -> list[pathlib.Path]:
    """The GeoTIFFs of :class:`MapWriter` (and from_to.json) for tile pairs predicted at tile grid
    positions ``row``, ``col`` (eval.py on georeferenced shards): one cell per tile, the grid's
    rows 0..max(row) and columns 0..max(col), so that ``transform`` (the shards' tile grid
    transform, 6 floats or an ``Affine``) is the files' transform; cells without a pair are nodata.
    ``p1``, ``p2``: (N, K) class probabilities. Written in blocks of rows (bounded memory).
    """
    from affine import Affine  # deferred: rasterio's affine loads on first use

    row, col = np.asarray(row, np.int64), np.asarray(col, np.int64)
    p1, p2 = np.asarray(p1, np.float32), np.asarray(p2, np.float32)
    shape = (int(row.max()) + 1, int(col.max()) + 1) if row.size else (1, 1)
    k = p1.shape[1]
    order = np.argsort(row, kind="stable")
    row, col, p1, p2 = row[order], col[order], p1[order], p2[order]
    out_dir = pathlib.Path(out_dir)
    writer = MapWriter(out_dir, crs, Affine(*list(transform)[:6]), shape, names, threshold)
    try:
        for top in range(0, shape[0], BLOCK):
            h = min(BLOCK, shape[0] - top)
            a, b = np.searchsorted(row, (top, top + h))
            q1 = np.zeros((h, shape[1], k), np.float32)
            q2 = np.zeros((h, shape[1], k), np.float32)
            valid = np.zeros((h, shape[1]), bool)
            q1[row[a:b] - top, col[a:b]] = p1[a:b]
            q2[row[a:b] - top, col[a:b]] = p2[a:b]
            valid[row[a:b] - top, col[a:b]] = True
            writer.write(Block(top, q1, q2, valid, valid))
    finally:
        writer.close()
    return [*(out_dir / name for name in MAP_FILES), write_from_to_legend(out_dir, names)]


# ----------------------------------------------------------------------------- quick-look


def stretch(image, mask) -> np.ndarray:
    """(h, w, C) to uint8 RGB with a 2-98 % stretch per band over the pixels holding data."""
    rgb = image[..., :3] if image.shape[-1] >= 3 else np.repeat(image[..., :1], 3, axis=-1)
    out = np.zeros(rgb.shape, np.uint8)
    for b in range(3):
        band = rgb[..., b].astype(np.float32)
        vals = band[mask] if mask.any() else band.ravel()
        lo, hi = np.percentile(vals, (2, 98)) if vals.size else (0.0, 1.0)
        out[..., b] = np.clip((band - lo) / max(hi - lo, 1e-6) * 255, 0, 255).astype(np.uint8)
    return out


def write_quicklook(path, pair: RasterPair, change_path, cell, size=QUICKLOOK_SIZE) -> pathlib.Path:
    """quicklook.png: the date-2 image (decimated, stretched), changed cells in red, nodata dimmed.

    ``cell``: raster pixels per cell of change.tif (the tile for tile-resolution maps, else 1).
    """
    import rasterio  # deferred: rasterio loads on first use
    from PIL import Image, ImageDraw
    from rasterio.enums import Resampling
    from rasterio.windows import Window

    h, w = pair.height, pair.width
    f = max(1.0, max(h, w) / size)
    qh, qw = max(1, round(h / f)), max(1, round(w / f))
    bands = pair.bands[:3]
    image = pair.src2.read(bands, out_shape=(len(bands), qh, qw), resampling=Resampling.average)
    image = np.moveaxis(image, 0, -1)
    with rasterio.open(change_path) as src:
        change = src.read(1, window=Window(0, 0, w / cell, h / cell), out_shape=(qh, qw),
                          resampling=Resampling.nearest)
    rgb = stretch(image, change != CHANGE_NODATA).astype(np.float32)
    red = np.array([230, 20, 40], np.float32)
    changed = change == 1
    rgb[changed] = 0.45 * rgb[changed] + 0.55 * red
    rgb[change == CHANGE_NODATA] *= 0.35
    img = Image.fromarray(rgb.astype(np.uint8))
    legend = Image.new("RGB", (qw, 18), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    draw.rectangle((4, 4, 14, 14), fill=(230, 20, 40))
    draw.text((18, 3), "changed", fill=(0, 0, 0))
    draw.rectangle((84, 4, 94, 14), fill=(60, 60, 60))
    draw.text((98, 3), "no data", fill=(0, 0, 0))
    canvas = Image.new("RGB", (qw, qh + 18), (255, 255, 255))
    canvas.paste(img, (0, 0))
    canvas.paste(legend, (0, qh))
    canvas.save(path, compress_level=3)
    return pathlib.Path(path)
