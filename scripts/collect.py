#!/usr/bin/env python
"""``peftlab collect`` (:mod:`peftlab.lab.commands.collect`), under the name the paper's one-liners use:
Collect every sweep run's results into one CSV:
"""

import sys

from peftlab.lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["collect", *sys.argv[1:]]))
