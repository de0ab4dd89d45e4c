#!/usr/bin/env python
"""Fine-tune and evaluate a pretrained encoder on a GLUE task (or your own csv/tsv/json data).

    python run_glue.py --task_name rte --glue_dir ../shared/glue --output_dir runs/rte --do_train --do_eval

All arguments: ``python run_glue.py --help``; a JSON file with the same names may replace them, and several JSON
files run one after another in this process, sharing data, model and frozen-prefix caches (sweeps do this).
The work is done by :mod:`peftlab.lab.run`, where every stage is an importable, tested function.
"""

from __future__ import annotations

import sys

from peftlab.errors import PeftlabError
from peftlab.lab.run import cli

if __name__ == "__main__":
    try:
        sys.exit(cli())
    except PeftlabError as err:
        sys.exit(f"error: {err}")
