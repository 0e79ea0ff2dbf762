"""Start-up cost of the pytest plugin: `pytest --co` with and without it, side by side.

    python benchmarks/plugin_startup.py [--runs 10]

Runs are interleaved (with, without, with, ...) on an empty test folder; prints the
median wall time of each and their ratio, plus the plugin module's own import time.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _time(command: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    subprocess.run(command, cwd=cwd, capture_output=True, check=False)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        cwd = Path(folder)
        (cwd / "test_nothing.py").write_text("def test_nothing():\n    pass\n")
        base = [sys.executable, "-m", "pytest", "--co", "-q", "-p", "no:cacheprovider"]
        with_plugin, without_plugin = [], []
        for _ in range(args.runs):
            with_plugin.append(_time(base, cwd))
            without_plugin.append(_time([*base, "-p", "no:gradcheckup"], cwd))
    code = (
        "import time, pytest; t = time.perf_counter(); import pytest_gradcheckup.plugin; "
        "print(time.perf_counter() - t)"
    )
    imports = [
        float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout)
        for _ in range(5)
    ]
    a, b = statistics.median(with_plugin), statistics.median(without_plugin)
    print(
        f"pytest --co, median of {args.runs}: with plugin {a * 1e3:.0f} ms, "
        f"without {b * 1e3:.0f} ms, ratio {a / b:.3f}"
    )
    print(
        f"import pytest_gradcheckup.plugin after pytest: {statistics.median(imports) * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
