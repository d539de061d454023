"""The README's "Does growth pay?" tables and figures, from an `esper compare` folder.

    PYTHONPATH=src .venv/bin/python scripts/compare_markdown.py runs/compare-mnist5k-tiny \\
        --figures docs/compare-mnist5k-tiny

prints compare.json's tables (the same rows `esper compare` prints and `esper report`
shows) as Markdown, and copies the compare's figures to FIGURES-flops.png and
FIGURES-params.png.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from esper.jobs.compare import CompareFolder
from esper.jobs.compare_report import arm_rows, difference_rows, target_rows
from esper.nissa.run_folder import read_json


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("compare_dir", type=Path)
    parser.add_argument("--figures", type=Path, help="copy the figures to FIGURES-flops.png, FIGURES-params.png")
    args = parser.parse_args(argv)
    folder = CompareFolder(args.compare_dir)
    results = read_json(folder.results_path)
    if results["status"] != "complete":
        print(f"{folder.path}: the compare is not finished (esper compare --resume {folder.path})")
        return 2
    for rows in (arm_rows(results), difference_rows(results), target_rows(results)):
        print(markdown(*rows) + "\n")
    print(f"{results['wall_seconds'] / 60:.1f} minutes in all; seeds {results['seeds']}")
    if args.figures is not None:
        for name, suffix in (("metric_vs_flops.png", "flops"), ("metric_vs_params.png", "params")):
            shutil.copyfile(folder.path / name, f"{args.figures}-{suffix}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
