#!/usr/bin/env python
"""``peftlab plot`` (:mod:`peftlab.lab.commands.plots`), under the name the paper's one-liners use:
Figures from the collected CSV (matplotlib); each is written as PNG, PDF and SVG beside each other.
"""

import sys

from peftlab.lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["plot", *sys.argv[1:]]))
