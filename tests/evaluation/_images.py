"""Checks that a written figure shows something (shared by the figure tests)."""

import matplotlib.image as mpimg
import numpy as np

PNG = b"\x89PNG\r\n\x1a\n"


def assert_png(path, min_bytes=3_000, max_bytes=3_000_000, min_drawn=0.02, min_colors=3):
    """A real PNG of reasonable size whose pixels vary, with a fair part not background and more
    than a couple of colours: a blank or single-colour image fails."""
    data = path.read_bytes()
    assert data[:8] == PNG, path
    assert min_bytes < len(data) < max_bytes, (path, len(data))
    pixels = mpimg.imread(path)[..., :3]
    assert pixels.std() > 0.05, (path, "nearly uniform image")
    drawn = (np.abs(pixels - pixels[0, 0]).sum(axis=-1) > 0.1).mean()  # not the background
    assert drawn > min_drawn, (path, f"only {drawn:.1%} of the pixels drawn")
    colors = count_colors(pixels)
    assert colors >= min_colors, (path, f"{colors} colour(s)")


def count_colors(pixels) -> int:
    """Distinct RGB colours of an image (floats in 0-1 or uint8), as ``len(np.unique(rgb, axis=0))``
    would count them, in a tenth of its time: each colour is one index into a 2**24 table."""
    rgb = np.asarray(pixels)[..., :3].reshape(-1, 3)
    if rgb.dtype != np.uint8:
        rgb = (rgb * 255).round().astype(np.uint8)
    rgb = rgb.astype(np.uint32)
    seen = np.zeros(1 << 24, dtype=bool)
    seen[(rgb[:, 0] << 16) | (rgb[:, 1] << 8) | rgb[:, 2]] = True
    return int(seen.sum())
