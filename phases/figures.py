"""`make figures`: every figure and table of the runs under paths.outputs, and one page showing them.

    python -m phases.figures --outputs outputs     # what `make figures` runs

Reads every run folder under `<outputs>/runs/` (no torch, no Hydra imported), lists the runs and files
left out and why, and writes `<outputs>/tables/` (runs.csv, metrics.parquet and each sweep's phase and
transfer tables), `<outputs>/figures/` (each sweep's figures, PNG and PDF) and `<outputs>/report.html`.
An outputs folder that cannot be read or written is said in one line, with exit status 1.
"""

from __future__ import annotations

import argparse
import sys

from phases.analysis.report import build


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--outputs", default="outputs", help="paths.outputs of the runs")
    arguments = parser.parse_args()
    try:
        return build(arguments.outputs)
    except OSError as error:  # a read-only or full outputs folder: what and where, not a traceback
        where = f": {error.filename}" if error.filename else ""
        print(f"error: cannot read or write the figures and tables of {arguments.outputs}: "
              f"{error.strerror or error}{where}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
