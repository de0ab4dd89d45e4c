#!/usr/bin/env python
"""Put generated tables into a Markdown document: python scripts/splice_tables.py docs/results.md docs/results

Every block ``<!-- table: NAME -->`` ... ``<!-- /table -->`` in the document is replaced by the file
``<folder>/NAME.md`` (written by scripts/tables.py), so the document always shows the tables as generated.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from peftlab.io import atomic_write_text

BLOCK = re.compile(r"(<!-- table: (?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /table -->)", re.S)


def splice(text: str, folder: Path) -> tuple[str, list[str]]:
    names = []

    def replace(match: re.Match) -> str:
        path = folder / f"{match['name']}.md"
        if not path.is_file():
            raise SystemExit(f"{path} does not exist: make it with scripts/tables.py (or scripts/results.sh)")
        names.append(match["name"])
        return match.group(1) + path.read_text() + match.group(4)

    return BLOCK.sub(replace, text), names


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("document")
    parser.add_argument("folder")
    args = parser.parse_args()
    text, names = splice(Path(args.document).read_text(), Path(args.folder))
    atomic_write_text(args.document, text)
    print(f"{args.document}: {len(names)} tables ({', '.join(names)})")
