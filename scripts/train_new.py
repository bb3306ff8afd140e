#!/usr/bin/env python
"""The original training entry point, kept as a thin wrapper: same options as `modlisa train`.

    python scripts/train_new.py --config configs/demo.yaml
    accelerate launch scripts/train_new.py --config configs/demo.yaml
"""

import sys

from modlisa.cli import main

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
