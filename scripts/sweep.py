#!/usr/bin/env python
"""``peftlab sweep`` (:mod:`peftlab.lab.commands.sweep`), under the name the paper's one-liners use:
Run a sweep: python scripts/sweep.py scripts/sweeps/layer_sweep_mrpc.json [--root runs/sweeps] [--workers N]
"""

import sys

from peftlab.lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["sweep", *sys.argv[1:]]))
