"""``python -m rlvr``: the command line (torchrun starts trainer ranks this way)."""

import sys

from rlvr.cli import main

sys.exit(main())
