"""Checks shared by the tests of pictures: a PNG that is neither empty nor bloated, and whose
pixel size is what matplotlib's tight bounding box at ``plots.DPI`` must give."""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from aiayn.evaluation.plots import DPI

MAX_PNG_BYTES = 300_000


def png_size(path: Path) -> tuple[int, int]:
    assert path.stat().st_size > 1000, f"{path} is (nearly) empty"
    assert path.stat().st_size < MAX_PNG_BYTES, f"{path} is {path.stat().st_size} bytes"
    with Image.open(path) as image:
        image.load()
        return image.size


def expected_pixels(fig) -> tuple[int, int]:
    """What ``bbox_inches="tight"`` at ``DPI`` must give: the drawn extent plus the padding."""
    fig.set_dpi(DPI)  # text extents depend a little on the resolution they are measured at
    box = fig.get_tightbbox()
    return round((box.width + 0.3) * DPI), round((box.height + 0.3) * DPI)


def assert_png_matches(fig, path: Path) -> None:
    w, h = png_size(path)
    ew, eh = expected_pixels(fig)
    # Constrained layout is solved again at each draw, so allow a pixel per hundred.
    assert abs(w - ew) <= 2 + ew / 100 and abs(h - eh) <= 2 + eh / 100, f"{path}: {w}×{h} px, expected {ew}×{eh}"
