#!/usr/bin/env python
"""``peftlab report`` (:mod:`peftlab.lab.commands.report`), under the name the paper's one-liners use:
Markdown table of finished runs: python scripts/report.py runs/full/* [--commands]
"""

import sys

from peftlab.lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["report", *sys.argv[1:]]))
