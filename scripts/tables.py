#!/usr/bin/env python
"""``peftlab table`` (:mod:`peftlab.lab.commands.tables`), under the name the paper's one-liners use:
Tables from the collected CSV, as <out>.md, <out>.csv and <out>.tex.
"""

import sys

from peftlab.lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["table", *sys.argv[1:]]))
