#!/usr/bin/env python
"""The analysis entry point under the original training script's name, kept as a thin wrapper: same
options as `modlisa analyze`.

    python scripts/analyze_metrics.py RUN_DIR [RUN_DIR ...] [--out DIR]
"""

import sys

from modlisa.cli.analyze import main as main_analyze

if __name__ == "__main__":
    try:
        sys.exit(main_analyze(sys.argv[1:], prog="analyze_metrics.py"))
    except (FileNotFoundError, NotADirectoryError) as exc:  # user errors: one line, exit 2 (like `modlisa`)
        print(f"analyze_metrics.py: error: {exc}", file=sys.stderr)
        sys.exit(2)
