"""The leaderboard's HTML page opens in headless Chromium (Debian's ``chromium``) and shows the table."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_leaderboard import SHA_A, SHA_B, write

from sslbench.tools.leaderboard import build_leaderboard, write_leaderboard

CHROMIUM = shutil.which("chromium")

pytestmark = [
    pytest.mark.chromium,
    pytest.mark.skipif(
        CHROMIUM is None, reason="needs Debian's chromium for a headless screenshot: apt-get install chromium"
    ),
]


def test_the_html_leaderboard_renders_its_table_in_headless_chromium(tmp_path: Path) -> None:
    for seed, value in enumerate([70.0, 72.0, 77.0]):
        write(tmp_path / "runs" / f"a{seed}", SHA_A, seed, {"top1": value})
    write(tmp_path / "runs" / "b", SHA_B, 0, {"top1": 80.0}, name="b.pth")
    page = write_leaderboard(build_leaderboard(tmp_path / "runs", with_published=True), tmp_path)["html"]
    screenshot = tmp_path / "leaderboard.png"
    subprocess.run(
        [
            str(CHROMIUM),
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--no-first-run",
            f"--user-data-dir={tmp_path / 'profile'}",
            "--hide-scrollbars",
            "--window-size=1600,700",
            f"--screenshot={screenshot}",
            page.resolve().as_uri(),
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )
    assert screenshot.is_file()
    with Image.open(screenshot) as png:
        pixels = np.asarray(png.convert("L"), dtype=np.float32)
    assert pixels.shape == (700, 1600)
    # not blank: dark text on a light page, and the table's grey header and green best cells
    assert (pixels < 100).mean() > 0.002
    assert pixels.std() > 10
    with Image.open(screenshot) as png:
        rgb = np.asarray(png.convert("RGB"), dtype=np.int16)
    green = (rgb[..., 1] - rgb[..., 0] > 8) & (rgb[..., 1] - rgb[..., 2] > 8)  # td.best background
    assert green.sum() > 500
