"""``sslbench quickstart --quick``: every stage for real, a few iterations, on the built-in digits."""

from __future__ import annotations

import csv
from pathlib import Path

from PIL import Image

from sslbench.cli import main
from sslbench.tools.quickstart import FT_LABEL, PLAIN_LABEL, RANDOM_LABEL, WHY_RANDOM_WINS


def test_quick_quickstart_writes_the_leaderboard_files_and_the_score_plot(tmp_path: Path, capsys) -> None:
    out = tmp_path / "qs"
    assert main(["quickstart", "--quick", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    for name in ("leaderboard.md", "leaderboard.csv", "leaderboard.html", "scores.png"):
        assert (out / name).is_file() and str(out / name) in printed
    rows = list(csv.DictReader((out / "leaderboard.csv").open()))
    assert [r["checkpoint"] for r in rows] == [RANDOM_LABEL, PLAIN_LABEL, FT_LABEL]
    # the random init is marked as a baseline in every format, and the screen says why it may win
    assert [r["baseline"] for r in rows] == ["True", "False", "False"]
    assert f"| {RANDOM_LABEL} (baseline) |" in (out / "leaderboard.md").read_text()
    html = (out / "leaderboard.html").read_text()
    assert f'<tr class="baseline"><td>{RANDOM_LABEL} (baseline)</td>' in html
    table_end = printed.index(f"| {FT_LABEL} |")
    assert printed.index(WHY_RANDOM_WINS) > table_end
    for row in rows:
        for column in ("digits knn top1 mean", "digits linear-lbfgs top1 mean"):
            assert 10.0 <= float(row[column]) <= 100.0  # chance on 10 classes is 10%
            assert row[column.replace("mean", "n")] == "1"
    with Image.open(out / "scores.png") as png:
        assert png.format == "PNG" and png.size[0] > 500
        assert len(png.convert("L").getcolors(maxcolors=1 << 16) or []) > 10  # curves, not a blank page
    # both pretraining runs left a score table; the FT one was trained with FT on the negatives
    ft_config = (out / "pretrain" / "mocov2_ft_neg" / "config.yaml").read_text()
    assert "target: neg" in ft_config and "dim_mask: neg" in ft_config
    assert (out / "pretrain" / "mocov2" / "scores.csv").is_file()
    # plot-scores RUN_DIR alone writes RUN_DIR/scores.png
    assert main(["plot-scores", str(out / "pretrain" / "mocov2")]) == 0
    assert (out / "pretrain" / "mocov2" / "scores.png").is_file()


def test_fashion_mnist_needs_a_root(tmp_path: Path, capsys) -> None:
    assert main(["quickstart", "--dataset", "fashion-mnist", "--out", str(tmp_path)]) == 2
    assert "--root" in capsys.readouterr().err
