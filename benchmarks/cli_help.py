"""How long ``sslbench --help`` takes, against a bare Python and ``import torch`` on the same machine.

Each command runs in a fresh process, ``--repeat`` times; the median wall time is reported with its
ratio to the bare interpreter (``python -c pass``). Goal (issue 16): ``sslbench --help`` and
``sslbench knn --help`` well under 1 s on 2 cores, i.e. far below the cost of importing torch, which
building the parser used to pay.

    python benchmarks/cli_help.py [--repeat N]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "python -c pass": [sys.executable, "-c", "pass"],
    "python -c 'import torch'": [sys.executable, "-c", "import torch"],
    "sslbench --help": [sys.executable, "-m", "sslbench", "--help"],
    "sslbench knn --help": [sys.executable, "-m", "sslbench", "knn", "--help"],
    "sslbench suite --help": [sys.executable, "-m", "sslbench", "suite", "--help"],
}


def _median_seconds(command: list[str], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5, help="runs per command (default: 5)")
    args = parser.parse_args()
    results = {name: _median_seconds(command, args.repeat) for name, command in COMMANDS.items()}
    bare = results["python -c pass"]
    for name, seconds in results.items():
        print(f"{name:28s} {seconds:6.3f} s  {seconds / bare:5.1f}x bare python")


if __name__ == "__main__":
    main()
