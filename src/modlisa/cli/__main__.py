"""``python -m modlisa.cli COMMAND ...`` (what ``torchrun`` and ``accelerate launch -m`` run)."""

import sys

from modlisa.cli import main

sys.exit(main())
