"""Demo data: procedurally textured bi-temporal scene pairs in the §4 shard format.

Each class is a *structure* (water ripples, farmland strips, dense or sparse building blocks, roads,
tree crowns, bare soil grain, big industrial roofs, ...), drawn at a random orientation, scale and
position. Colour and brightness are drawn per tile from one distribution shared by all classes,
so the mean colour of a tile says next to nothing about its class; its texture does.

The second date repeats the first date's scene with another illumination (per-channel gain and
offset), fresh sensor noise and a misregistration of up to two pixels; a fraction ``change_rate``
of the pairs shows a scene of another class instead. Pairs are laid on a grid (``row``/``col``),
split 70/10/20 at random, and written as uint8, uncompressed (so that the loader reads them per
batch and holds no shard in memory; see ``data.shards.write_shard``). Everything follows from
``seed``.

Degradation (optional, off by default): one date of every pair, or both, or one chosen at random
per pair (``--degrade t1|t2|both|either``), is degraded with a controlled strength after the clean
pairs are made: haze (``--haze h``: a bright, slightly tinted veil of thickness about h, so
contrast falls by about 1 − h; 1 leaves an almost flat tile), opaque clouds (``--cloud_cover c``: the
fraction c of every degraded tile under smooth-edged cloud), extra Gaussian sensor noise
(``--noise σ``, in units of the full 0..1 intensity range) and a Gaussian blur (``--blur σ`` in
pixels). The degradation draws from its own random stream (seeded by ``seed``), so the clean scenes,
labels and splits are the same at every strength: data sets that differ only in strength differ
only by the degradation, and a larger strength degrades the same tiles with the same cloud shapes
and noise pattern more. With every strength 0 (the default) the output is the undegraded data set,
bit for bit. Misregistration beyond the built-in ±2 px is not offered.

Command line::

    python -m data.synthetic --out DIR [--pairs N] [--size S] [--classes K] [--change_rate P]
                             [--seed K] [--shard_size M]
                             [--degrade t1|t2|both|either] [--haze H] [--cloud_cover C]
                             [--noise SIGMA] [--blur SIGMA]
                             [--dtype uint8|uint16] [--value_range LO,HI] [--date_shift GAIN[,OFFSET]]

Radiometry (optional; the defaults give today's uint8 over 0..255, bit for bit): ``--dtype``,
``--value_range LO,HI`` (the stored values of intensity 0 and 1, so that images fill only part of
their dtype as real sensors do: 6,116 dark uint8, 0,10000 Sentinel-2 style uint16, 0,4095 12-bit)
and ``--date_shift GAIN[,OFFSET]`` (date 2's intensities are GAIN·x + OFFSET: a radiometric
difference between the dates). The scenes, labels and splits do not depend on them.
"""

from __future__ import annotations

import argparse
import logging
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from data import split_summary, splits
from utils.cli import configure_logging

log = logging.getLogger(__name__)

DEGRADE_DATES = ("t1", "t2", "both", "either")
#: strength options of the degradation (all 0: none); see :func:`degrade_pairs`
DEGRADATION_KEYS = ("haze", "cloud_cover", "noise", "blur")
_DEGRADE_STREAM = 0xDE6  # second entry of the degradation's seed: a stream apart from the scenes'
MARGIN = 2  # canvas margin in pixels: room for the date-2 misregistration
CHUNK = 512  # scenes generated per vectorised step (bounds the float32 temporaries)


# ----------------------------------------------------------------------------- building blocks


def _coords(rng, n, s, offset=True):
    """Per-tile rotated pixel coordinates u, v, each (n, s, s) float32.

    With ``offset`` the origin is moved by a random amount (grids start anywhere); without it the
    origin is the tile centre (lines through the tile).
    """
    y, x = np.mgrid[0:s, 0:s].astype(np.float32) - (s - 1) / 2
    theta = rng.uniform(0, np.pi, (n, 1, 1))
    c, sn = np.cos(theta).astype(np.float32), np.sin(theta).astype(np.float32)
    off = rng.uniform(0, 64, (n, 2, 1, 1)).astype(np.float32) * offset
    return x * c + y * sn + off[:, 0], -x * sn + y * c + off[:, 1]


def _smooth(rng, n, s, cells):
    """Smooth random field in [0, 1]: a (cells+1)^2 random grid upsampled bilinearly, (n, s, s)."""
    g = rng.random((n, cells + 1, cells + 1), dtype=np.float32)
    p = np.linspace(0, cells, s, dtype=np.float32)
    i0 = np.minimum(p.astype(np.int64), cells - 1)
    f = p - i0
    a = g[:, i0[:, None], i0[None, :]]
    b = g[:, i0[:, None], i0[None, :] + 1]
    c = g[:, i0[:, None] + 1, i0[None, :]]
    d = g[:, i0[:, None] + 1, i0[None, :] + 1]
    fy, fx = f[:, None], f[None, :]
    return (a * (1 - fx) + b * fx) * (1 - fy) + (c * (1 - fx) + d * fx) * fy


def _cell_table(rng, n, size=64):
    """Random value per grid cell, looked up with :func:`_lookup`."""
    return rng.random((n, size, size), dtype=np.float32)


def _lookup(table, iu, iv):
    size = table.shape[1]
    n = table.shape[0]
    return table[np.arange(n)[:, None, None], np.mod(iv, size), np.mod(iu, size)]


def _blocks(rng, n, s, period, fill, occupancy, u=None, v=None):
    """Rectangular blocks on a (rotated) grid: returns (inside mask, per-block random level)."""
    if u is None:
        u, v = _coords(rng, n, s)
    p = period.reshape(n, 1, 1)
    iu, iv = np.floor(u / p).astype(np.int64), np.floor(v / p).astype(np.int64)
    fu, fv = u / p - iu, v / p - iv
    margin = (1 - fill.reshape(n, 1, 1)) / 2
    inside = (fu > margin) & (fu < 1 - margin) & (fv > margin) & (fv < 1 - margin)
    occ = _lookup(_cell_table(rng, n), iu, iv) < occupancy.reshape(n, 1, 1)
    level = _lookup(_cell_table(rng, n), iu, iv)
    return inside & occ, level, (fu, fv)


def _u(rng, lo, hi, n):
    return rng.uniform(lo, hi, n).astype(np.float32)


# ----------------------------------------------------------------------------- class patterns
# Each returns (n, s, s) float32, roughly in [0, 1].


def water(rng, n, s):
    u, v = _coords(rng, n, s)
    ripple = np.sin(2 * np.pi * u / _u(rng, 6, 12, n)[:, None, None] + 3 * _smooth(rng, n, s, 2))
    return 0.5 + 0.25 * (_smooth(rng, n, s, 2) - 0.5) + 0.012 * ripple


def farmland(rng, n, s):
    u, v = _coords(rng, n, s)
    period = _u(rng, 5, 11, n)[:, None, None]
    strip = np.floor(u / period).astype(np.int64)
    level = _lookup(_cell_table(rng, n), strip, np.zeros_like(strip))
    edge = (u / period - strip) < 0.15
    return 0.2 + 0.7 * level - 0.25 * edge + 0.05 * rng.random((n, s, s), dtype=np.float32)


def dense_residential(rng, n, s):
    inside, level, _ = _blocks(rng, n, s, _u(rng, 5, 8, n), _u(rng, 0.6, 0.75, n), _u(rng, 0.85, 1, n))
    return np.where(inside, 0.6 + 0.4 * level, 0.1)


def sparse_residential(rng, n, s):
    inside, level, _ = _blocks(rng, n, s, _u(rng, 11, 17, n), _u(rng, 0.3, 0.45, n), _u(rng, 0.35, 0.6, n))
    return np.where(inside, 0.7 + 0.3 * level, 0.35 + 0.3 * _smooth(rng, n, s, 4))


def road(rng, n, s):
    u, v = _coords(rng, n, s, offset=False)
    ground = 0.35 + 0.3 * _smooth(rng, n, s, 4) + 0.1 * rng.random((n, s, s), dtype=np.float32)
    c1 = v - rng.uniform(-s / 4, s / 4, (n, 1, 1))
    c2 = u - rng.uniform(-s / 4, s / 4, (n, 1, 1))
    w = _u(rng, 1.5, 3.5, n)[:, None, None]
    cross = rng.random((n, 1, 1)) < 0.5
    on = (np.abs(c1) < w) | (cross & (np.abs(c2) < w))
    return np.where(on, 0.95, ground)


def forest(rng, n, s):
    crowns = _smooth(rng, n, s, max(4, s // 4))
    return np.clip(1.6 * (crowns - 0.5), -0.5, 0.5) + 0.5


def bare_land(rng, n, s):
    grain = rng.random((n, s, s), dtype=np.float32)
    grain = (grain + np.roll(grain, 1, axis=1) + np.roll(grain, 1, axis=2)) / 3
    return 0.3 * _smooth(rng, n, s, 1) + 0.5 * grain


def industrial(rng, n, s):
    inside, level, _ = _blocks(rng, n, s, _u(rng, s / 3, s / 2, n), _u(rng, 0.55, 0.85, n), _u(rng, 0.7, 1, n))
    roof = 0.65 + 0.3 * level
    return np.where(inside, roof, 0.25 + 0.05 * rng.random((n, s, s), dtype=np.float32))


def commercial(rng, n, s):
    u, v = _coords(rng, n, s)
    period, fill, occ = _u(rng, 10, 15, n), _u(rng, 0.5, 0.65, n), _u(rng, 0.8, 1, n)
    inside, level, _ = _blocks(rng, n, s, period, fill, occ, u, v)
    shadow, _, _ = _blocks(rng, n, s, period, fill, occ, u - 2.5, v - 2.5)
    out = np.where(shadow & ~inside, 0.0, 0.45)
    return np.where(inside, 0.55 + 0.45 * level, out)


def parking(rng, n, s):
    u, v = _coords(rng, n, s)
    row = np.floor(v / 7).astype(np.int64)
    car = np.floor(u / 3).astype(np.int64)
    in_row = (v / 7 - row) < 0.55
    in_car = (u / 3 - car) < 0.7
    table = _cell_table(rng, n)
    occupied = _lookup(table, car, row) < 0.75
    colour = _lookup(_cell_table(rng, n), car, row)
    return np.where(in_row & in_car & occupied, colour, 0.45)


def playground(rng, n, s):
    y, x = np.mgrid[0:s, 0:s].astype(np.float32)
    cy = s / 2 + rng.uniform(-s / 10, s / 10, (n, 1, 1))
    cx = s / 2 + rng.uniform(-s / 10, s / 10, (n, 1, 1))
    ry, rx = rng.uniform(0.22, 0.32, (n, 1, 1)) * s, rng.uniform(0.3, 0.42, (n, 1, 1)) * s
    r = np.sqrt(((y - cy) / ry) ** 2 + ((x - cx) / rx) ** 2)
    width = rng.uniform(0.15, 0.25, (n, 1, 1))
    ring = np.abs(r - 1) < width
    field = np.where(r < 1 - width, 0.55, 0.3 + 0.3 * _smooth(rng, n, s, 3))
    return np.where(ring, 0.9, field).astype(np.float32)


def greenspace(rng, n, s):
    _, level, (fu, fv) = _blocks(rng, n, s, _u(rng, 7, 10, n), np.ones(n, np.float32), np.ones(n, np.float32))
    tree = ((fu - 0.5) ** 2 + (fv - 0.5) ** 2 < 0.09) & (level < 0.4)
    lawn = 0.55 + 0.15 * _smooth(rng, n, s, 2)
    return np.where(tree, 0.15, lawn)


def railway(rng, n, s):
    u, v = _coords(rng, n, s)
    gravel = 0.4 + 0.2 * rng.random((n, s, s), dtype=np.float32)
    track = np.mod(v, 12.0)
    rails = (np.abs(track - 4) < 0.7) | (np.abs(track - 8) < 0.7)
    ties = (track > 3) & (track < 9) & (np.mod(u, 3.0) < 1.0)
    return np.where(rails, 0.95, np.where(ties, 0.15, gravel))


def river(rng, n, s):
    u, v = _coords(rng, n, s, offset=False)
    amplitude = _u(rng, 2, s / 10, n)[:, None, None]
    centre = amplitude * np.sin(u / _u(rng, 4, 8, n)[:, None, None] + _u(rng, 0, 6, n)[:, None, None])
    width = _u(rng, s / 10, s / 6, n)[:, None, None]
    land = 0.4 + 0.4 * _smooth(rng, n, s, 6)
    return np.where(np.abs(v - centre) < width, 0.1 + 0.05 * _smooth(rng, n, s, 2), land)


CLASSES = {  # name -> pattern builder; the first K are used
    "water": water, "farmland": farmland, "dense_residential": dense_residential,
    "sparse_residential": sparse_residential, "road": road, "forest": forest,
    "bare_land": bare_land, "industrial": industrial, "commercial": commercial,
    "parking": parking, "playground": playground, "greenspace": greenspace,
    "railway": railway, "river": river,
}
CLASS_NAMES = tuple(CLASSES)


# ----------------------------------------------------------------------------- scenes


def render_patterns(rng, classes, s) -> np.ndarray:
    """Zero-mean structure of each scene (0-based class ids), (n, s, s) float32."""
    out = np.empty((len(classes), s, s), np.float32)
    builders = list(CLASSES.values())
    for k in np.unique(classes):
        idx = np.flatnonzero(classes == k)
        p = builders[k](rng, len(idx), s).astype(np.float32)
        p -= p.mean(axis=(1, 2), keepdims=True)
        p /= p.std(axis=(1, 2), keepdims=True) + 0.05
        out[idx] = p
    return out


def colourise(rng, patterns) -> np.ndarray:
    """Per-tile random base colour (same law for every class) plus tinted structure, (n, s, s, 3)."""
    n = len(patterns)
    base = rng.uniform(0.3, 0.7, (n, 1, 1, 1)) + rng.uniform(-0.12, 0.12, (n, 1, 1, 3))
    contrast = rng.uniform(0.08, 0.16, (n, 1, 1, 1)) * rng.uniform(0.8, 1.2, (n, 1, 1, 3))
    return (base + contrast * patterns[..., None]).astype(np.float32)


def second_date(rng, canvas1, canvas2_new, changed, s):
    """Date 2: new scene where changed, new illumination, misregistration and noise."""
    n = len(canvas1)
    canvas = np.where(changed[:, None, None, None], canvas2_new, canvas1)
    gain = rng.uniform(0.8, 1.2, (n, 1, 1, 3)) * rng.uniform(0.9, 1.1, (n, 1, 1, 1))
    offset = rng.uniform(-0.08, 0.08, (n, 1, 1, 3))
    canvas = canvas * gain + offset
    shift = rng.integers(-MARGIN, MARGIN + 1, (n, 2))
    rows = MARGIN + shift[:, 0, None] + np.arange(s)[None, :]
    cols = MARGIN + shift[:, 1, None] + np.arange(s)[None, :]
    return canvas[np.arange(n)[:, None, None], rows[:, :, None], cols[:, None, :]]


def value_range_of(dtype="uint8", value_range=None) -> tuple[int, int]:
    """``(lo, hi)``: the stored values that intensity 0 and 1 map to (default: the dtype's range)."""
    if value_range is None:
        return 0, int(np.iinfo(np.dtype(dtype)).max)
    return int(value_range[0]), int(value_range[1])


def _quantize(x, dtype, lo, hi):
    """Intensities ``x`` (0..1) to stored values ``lo + x·(hi − lo)``, rounded and clipped."""
    x = x * (hi - lo)
    if lo:
        x = x + lo
    return np.clip(np.rint(x), lo, hi).astype(dtype)


def _to_unit(x, lo, hi):
    """Stored values back to float32 intensities (the inverse of :func:`_quantize`)."""
    x = x.astype(np.float32)
    if lo:
        x = x - np.float32(lo)
    return x / (hi - lo)


def _to_stored(x, rng, noise, dtype, lo, hi):
    x = x + rng.normal(0, 1, x.shape).astype(np.float32) * noise
    return _quantize(x, dtype, lo, hi)


def make_pairs(n, size=64, classes=8, change_rate=0.05, seed=0, dtype="uint8", value_range=None,
               date_shift=(1.0, 0.0)):
    """All pairs in memory: dict of image_t1/t2 (n, size, size, 3), labels 1..K, row, col.

    Radiometry (the defaults give uint8 over 0..255, the same bytes as before these options):
    ``dtype`` uint8 or uint16; ``value_range`` ``(lo, hi)``: the stored values of intensity 0 and 1,
    so that the images fill only that part of the dtype as real sensors do (e.g. ``(6, 116)`` for
    dark uint8 imagery, ``(0, 10000)`` for Sentinel-2 L2A style uint16, ``(0, 4095)`` for 12-bit
    data); ``date_shift`` ``(gain, offset)``: date 2's intensities are ``gain·x + offset`` (a
    radiometric difference between the dates on top of the per-pair illumination), before the
    noise and the rounding. The random draws do not depend on these options: the same scenes.
    """
    rng = np.random.default_rng(seed)
    label_t1 = rng.permutation(np.arange(n) % classes)
    n_change = int(round(change_rate * n))
    changed = np.zeros(n, bool)
    changed[rng.choice(n, n_change, replace=False)] = True
    label_t2 = label_t1.copy()
    label_t2[changed] = (label_t1[changed] + rng.integers(1, classes, n_change)) % classes
    lo, hi = value_range_of(dtype, value_range)
    gain, offset = (float(v) for v in date_shift)
    x1 = np.empty((n, size, size, 3), np.dtype(dtype))
    x2 = np.empty_like(x1)
    c = size + 2 * MARGIN
    for start in range(0, n, CHUNK):
        sl = slice(start, min(n, start + CHUNK))
        r = np.random.default_rng([seed, start // CHUNK + 1])
        canvas1 = colourise(r, render_patterns(r, label_t1[sl], c))
        canvas2 = colourise(r, render_patterns(r, label_t2[sl], c))  # used where changed
        noise = r.uniform(0.01, 0.03, (sl.stop - sl.start, 1, 1, 1)).astype(np.float32)
        x1[sl] = _to_stored(canvas1[:, MARGIN:MARGIN + size, MARGIN:MARGIN + size], r, noise,
                            dtype, lo, hi)
        date2 = second_date(r, canvas1, canvas2, changed[sl], size)
        if (gain, offset) != (1.0, 0.0):
            date2 = date2 * np.float32(gain) + np.float32(offset)
        x2[sl] = _to_stored(date2, r, noise, dtype, lo, hi)
    ncols = math.ceil(math.sqrt(n))
    pos = np.arange(n)
    return {"image_t1": x1, "image_t2": x2, "label_t1": (label_t1 + 1).astype(np.int32),
            "label_t2": (label_t2 + 1).astype(np.int32), "row": pos // ncols, "col": pos % ncols}


# ----------------------------------------------------------------------------- degradation


def _degrade(rng, x, haze, cloud_cover, noise, blur):
    """One date's degradation of float tiles ``x`` (m, s, s, 3) in [0, 1]; draws a fixed set of
    random numbers whatever the strengths, so that every strength sees the same fields."""
    from scipy.ndimage import gaussian_filter  # deferred: SciPy loads on first use

    m, s = x.shape[:2]
    airlight = (rng.uniform(0.7, 0.9, (m, 1, 1, 1)) + rng.uniform(-0.03, 0.03, (m, 1, 1, 3)))
    thickness = 0.8 + 0.4 * _smooth(rng, m, s, 2)[..., None]  # haze varies a little over a tile
    field = _smooth(rng, m, s, 3) + 0.35 * _smooth(rng, m, s, 7)  # cloud shapes
    cloud = rng.uniform(0.85, 1.0, (m, 1, 1, 1))
    grain = rng.normal(0, 1, x.shape).astype(np.float32)
    if blur > 0:
        x = gaussian_filter(x, sigma=(0, blur, blur, 0), mode="reflect")
    t = np.clip(haze * thickness, 0, 1)
    x = (1 - t) * x + t * airlight
    if cloud_cover > 0:
        flat = field.reshape(m, -1)
        q = np.quantile(flat, 1 - cloud_cover, axis=1)[:, None, None]  # c of the tile above q
        alpha = np.clip((field - q) / 0.04 + 0.5, 0, 1)[..., None] if cloud_cover < 1 else 1.0
        x = (1 - alpha) * x + alpha * cloud
    return x + noise * grain


def degrade_pairs(data, seed=0, date="t2", haze=0.0, cloud_cover=0.0, noise=0.0, blur=0.0,
                  value_range=None):
    """``data`` (from :func:`make_pairs`) with ``date``'s images degraded; the input is not changed.

    ``value_range``: the ``(lo, hi)`` that ``make_pairs`` mapped intensities 0..1 to (default: the
    images' dtype range); the degradation works on intensities, so its strengths mean the same
    whatever the dtype and range.

    ``date``: t1, t2, both, or either (one date per pair, each with probability 1/2). With every
    strength 0 the same dict comes back. The random stream is ``(seed, 0xDE6, chunk)``, apart from
    the scenes', and the draws do not depend on the strengths.
    """
    if date not in DEGRADE_DATES:
        raise ValueError(f"--degrade {date}: expected one of {', '.join(DEGRADE_DATES)}")
    if not any((haze, cloud_cover, noise, blur)):
        return data
    out = dict(data)
    x1, x2 = data["image_t1"].copy(), data["image_t2"].copy()
    n = len(x1)
    lo, hi = value_range_of(x1.dtype, value_range)
    for start in range(0, n, CHUNK):
        sl = slice(start, min(n, start + CHUNK))
        r = np.random.default_rng([seed, _DEGRADE_STREAM, start // CHUNK])
        pick_t1 = r.random(sl.stop - sl.start) < 0.5  # "either": the date degraded in each pair
        mask = {"t1": {"t1": True, "t2": False, "both": True, "either": pick_t1}[date],
                "t2": {"t1": False, "t2": True, "both": True, "either": ~pick_t1}[date]}
        for name, x in (("t1", x1), ("t2", x2)):
            d = _degrade(r, _to_unit(x[sl], lo, hi), haze, cloud_cover, noise, blur)
            d = _quantize(d, x.dtype, lo, hi)
            x[sl] = np.where(np.reshape(mask[name], (-1, 1, 1, 1)), d, x[sl])
    out["image_t1"], out["image_t2"] = x1, x2
    return out


#: the radiometry options of :func:`make_pairs` / :func:`generate` and their defaults (today's uint8)
RADIOMETRY = {"dtype": "uint8", "value_range": None, "date_shift": (1.0, 0.0)}
DTYPES = ("uint8", "uint16")


def check_radiometry(dtype="uint8", value_range=None, date_shift=(1.0, 0.0)):
    """ValueError (one line naming the option) for a dtype, value range or date shift outside
    what the generator supports."""
    if dtype not in DTYPES:
        raise ValueError(f"--dtype {dtype}: expected one of {', '.join(DTYPES)}")
    top = int(np.iinfo(np.dtype(dtype)).max)
    if value_range is not None:
        lo, hi = value_range
        if not (float(lo).is_integer() and float(hi).is_integer() and 0 <= lo < hi <= top):
            raise ValueError(f"--value_range {lo},{hi}: expected integers 0 <= LO < HI <= {top} "
                             f"(the {dtype} range)")
    gain, offset = date_shift
    if not (math.isfinite(gain) and 0 < gain <= 10 and math.isfinite(offset) and -1 <= offset <= 1):
        raise ValueError(f"--date_shift {gain},{offset}: expected GAIN in (0, 10] and OFFSET in "
                         "[-1, 1] (intensity units)")


def check_args(pairs, size, classes, change_rate, shard_size, degradation=None, radiometry=None):
    """ValueError (one line) for arguments outside what the generator supports."""
    check_radiometry(**(radiometry or {}))
    if pairs < 10:
        raise ValueError(f"--pairs {pairs}: expected at least 10")
    if not 8 <= size <= 1024:
        raise ValueError(f"--size {size}: expected 8..1024 pixels")
    if not 2 <= classes <= len(CLASSES):
        raise ValueError(f"--classes {classes}: expected 2..{len(CLASSES)}")
    if not 0 <= change_rate <= 1:
        raise ValueError(f"--change_rate {change_rate}: expected a fraction in [0, 1]")
    if shard_size is not None and shard_size < 1:
        raise ValueError(f"--shard_size {shard_size}: expected >= 1")
    d = degradation or {}
    if d.get("date", "t2") not in DEGRADE_DATES:
        raise ValueError(f"--degrade {d['date']}: expected one of {', '.join(DEGRADE_DATES)}")
    for key in ("haze", "cloud_cover"):
        if not 0 <= d.get(key, 0) <= 1:
            raise ValueError(f"--{key} {d[key]}: expected a strength in [0, 1]")
    for key in ("noise", "blur"):
        if not 0 <= d.get(key, 0) <= 100:
            raise ValueError(f"--{key} {d[key]}: expected a sigma in [0, 100]")


def generate(out_dir, pairs=1000, size=64, classes=8, change_rate=0.05, seed=0, shard_size=None,
             degradation=None, radiometry=None):
    """Write ``out_dir/{trn,val,tst}`` (70/10/20) of demo pairs; returns ``{split: [paths]}``.

    ``degradation``: keyword arguments of :func:`degrade_pairs` (``date``, ``haze``, ...), or None.
    ``radiometry``: keyword arguments of :func:`make_pairs` (``dtype``, ``value_range``,
    ``date_shift``; ``RADIOMETRY`` has the defaults), or None.
    Refuses (ShardError) output split directories that exist and are not empty.
    """
    radiometry = {**RADIOMETRY, **(radiometry or {})}
    check_args(pairs, size, classes, change_rate, shard_size, degradation, radiometry)
    splits.check_output_dir(out_dir)
    data = degrade_pairs(make_pairs(pairs, size, classes, change_rate, seed, **radiometry), seed,
                         **(degradation or {}), value_range=radiometry["value_range"])
    parts = splits.split_indices(pairs, splits.DEFAULT_FRACTIONS, seed)
    return splits.write_splits(out_dir, parts, lambda idx: {k: v[idx] for k, v in data.items()},
                               shard_size, list(CLASS_NAMES[:classes]))


# ----------------------------------------------------------------------------- command line


# ----------------------------------------------------------------------------- train_cnn.py --demo
#: the demo's data set (train_cnn.py --demo), generated once into the cache directory
DEMO = {"pairs": 1200, "size": 48, "classes": 6, "change_rate": 0.05, "seed": 0}


def demo_data_dir() -> Path:
    """``$CORRFUSION_CACHE`` (default ``~/.cache/corrfusionnet``) / a name for ``DEMO``."""
    base = Path(os.environ.get("CORRFUSION_CACHE", Path.home() / ".cache" / "corrfusionnet"))
    return base / "demo-{pairs}p-{size}px-{classes}c-s{seed}".format(**DEMO)


def ensure_demo_data() -> Path:
    """Generate the demo shards once into the cache directory (atomically: temp dir, then rename)."""
    target = demo_data_dir()
    if (target / "tst").is_dir():
        log.info("demo data: %s (cached)", target)
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".demo-"))
    try:
        generate(tmp / "data", **DEMO)
        (tmp / "data").rename(target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    log.info("demo data generated: %s", target)
    return target


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog="python -m data.synthetic", description=__doc__.split("\n")[0])
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="output directory; trn/, val/, tst/ are created")
    out.add_argument("--shard_size", type=int, default=None,
                     help="at most this many pairs per shard (default: one shard per split)")
    gen = p.add_argument_group("data")
    gen.add_argument("--pairs", type=int, default=1000, help="number of pairs (default 1000)")
    gen.add_argument("--size", type=int, default=64, help="tile size in pixels (default 64)")
    gen.add_argument("--classes", type=int, default=8,
                     help=f"number of classes, 2..{len(CLASSES)} (default 8)")
    gen.add_argument("--change_rate", type=float, default=0.05,
                     help="fraction of pairs whose class changes (default 0.05)")
    gen.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    rad = p.add_argument_group("radiometry (the defaults: uint8 over 0..255, no shift between dates)")
    rad.add_argument("--dtype", choices=DTYPES, default="uint8", help="stored dtype (default uint8)")
    rad.add_argument("--value_range", type=_int_pair, default=None, metavar="LO,HI",
                     help="stored values of intensity 0 and 1: the images fill only this part of "
                          "the dtype, as real sensors do (e.g. 6,116 dark uint8; 0,10000 "
                          "Sentinel-2 style uint16; 0,4095 12-bit; default: the whole dtype)")
    rad.add_argument("--date_shift", type=_shift, default=(1.0, 0.0), metavar="GAIN[,OFFSET]",
                     help="date 2 intensities = GAIN * x + OFFSET (a radiometric difference "
                          "between the dates; intensities in 0..1; default 1,0)")
    deg = p.add_argument_group("degradation of one date (all strengths 0 = none, the default)")
    deg.add_argument("--degrade", choices=DEGRADE_DATES, default="t2",
                     help="the date degraded: t1, t2 (default), both, or either (one at random "
                          "per pair)")
    deg.add_argument("--haze", type=float, default=0.0,
                     help="haze thickness 0..1 (contrast falls by about 1 - h)")
    deg.add_argument("--cloud_cover", type=float, default=0.0,
                     help="fraction 0..1 of each degraded tile under opaque cloud")
    deg.add_argument("--noise", type=float, default=0.0,
                     help="sigma of extra Gaussian noise, in units of the 0..1 intensity range")
    deg.add_argument("--blur", type=float, default=0.0, help="sigma of a Gaussian blur in pixels")
    return p.parse_args(argv)


def _int_pair(value):
    try:
        lo, hi = (int(v) for v in value.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected LO,HI (two integers), got {value!r}") from None
    return lo, hi


def _shift(value):
    try:
        parts = [float(v) for v in value.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (1, 2):
        raise argparse.ArgumentTypeError(f"expected GAIN or GAIN,OFFSET (numbers), got {value!r}")
    return parts[0], (parts[1] if len(parts) == 2 else 0.0)


def radiometry_of(args) -> dict:
    """The ``radiometry`` argument of :func:`generate` from parsed arguments."""
    return {k: getattr(args, k) for k in RADIOMETRY}


def degradation_of(args) -> dict:
    """The ``degradation`` argument of :func:`generate` from parsed arguments."""
    return {"date": args.degrade, **{k: getattr(args, k) for k in DEGRADATION_KEYS}}


def main(argv=None):
    configure_logging()
    args = parse_args(argv)
    try:
        written = generate(args.out, args.pairs, args.size, args.classes, args.change_rate,
                           args.seed, args.shard_size, degradation_of(args), radiometry_of(args))
    except (ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    for name in written:
        log.info("%s", split_summary.inspect_split(f"{args.out}/{name}").format())
    return 0


if __name__ == "__main__":
    sys.exit(main())
