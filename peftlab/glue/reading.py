"""The text of a data file: decoded with its encoding found (UTF-8, with or without a BOM, or UTF-16), split into
rows by the csv module, every row with the line it starts on (for errors that name the line)."""

from __future__ import annotations

import codecs
import csv
import io
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from peftlab.errors import DataError

logger = logging.getLogger(__name__)

# GLUE rows can be long (MNLI parse trees); the csv module refuses fields over 128 KiB by default.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


NEWLINE = re.compile(r"\r\n|\r|\n")
INDEX = re.compile(r"[0-9]{1,18}")


def line_at(text: str, index: int) -> int:
    """The line (from 1) holding ``text[index]``, counting ``\\n``, ``\\r\\n`` and ``\\r`` as line ends, as the
    csv module reads them (``newline=""``)."""
    return 1 + len(NEWLINE.findall(text, 0, index))


def read_text(path: str | os.PathLike) -> str:
    """The text of a data file, UTF-8 with or without a BOM. A byte that is not UTF-8, or a NUL byte (a binary or
    UTF-16 file), is a :class:`DataError` naming the file and the line, never a traceback."""
    data = Path(path).read_bytes()
    for bom, encoding in ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),
                          (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16")):  # fmt: skip
        if data.startswith(bom):
            raise DataError(f"{path}, line 1: the file is {encoding} (it starts with a {encoding} byte-order mark); "
                            "save it as UTF-8.")  # fmt: skip
    if data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8) :]
    nul = data.find(b"\0")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        if not 0 <= nul < err.start:
            raise DataError(
                f"{path}, line {_byte_line(data, err.start)}: byte 0x{data[err.start]:02x} is not UTF-8; save the "
                "file as UTF-8 (e.g. iconv -f latin1 -t utf-8)."
            ) from None
    if nul >= 0:
        raise DataError(
            f"{path}, line {_byte_line(data, nul)}: a NUL byte, which no text file holds (UTF-16 or binary?); save "
            "the file as UTF-8 text."
        )
    return text


def _byte_line(data: bytes, index: int) -> int:
    """:func:`line_at` for the bytes of a file (line ends are single bytes in UTF-8)."""
    return 1 + len(re.findall(rb"\r\n|\r|\n", data[:index]))


def read_rows(path: str | os.PathLike, text: str, **dialect: Any) -> list[tuple[int, list[str]]]:
    """Parse delimited ``text`` into ``(line, fields)`` pairs, ``line`` being where the row starts; malformed quoting
    (a quote never closed, text after a closing quote) is a :class:`DataError` naming the file and line."""
    reader = csv.reader(io.StringIO(text, newline=""), strict=True, **dialect)
    rows: list[tuple[int, list[str]]] = []
    start = 1
    try:
        for row in reader:
            rows.append((start, row))
            start = reader.line_num + 1
    except csv.Error as err:
        raise DataError(f"{path}, line {start}: malformed row ({err}); close every quote that opens a field.") from None
    return rows
