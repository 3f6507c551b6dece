"""Reading JSON and text files that come from outside the toolkit (annotations, results, logs, metrics, class
and image lists, submissions).

One loader for all of them, so that every way a file can be unusable is a :class:`~restransfer.errors.DataError`
naming the file (and the line where there is one): invalid JSON, bytes that are not UTF-8, and nesting so deep
that Python's parser runs out of recursion (a few kilobytes of ``[[[[...`` raise ``RecursionError``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

from ..errors import DataError

__all__ = ["read_json", "parse_json", "read_text"]


def parse_json(text: Union[str, bytes], path: Union[str, os.PathLike], line: Optional[int] = None) -> Any:
    """``json.loads(text)``; a problem is a :class:`DataError` naming ``path`` and the line (``line``: the
    line of a JSON-lines file that ``text`` is)."""
    where = f"{path}: line {line}" if line is not None else str(path)
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        where = f"{path}: line {line if line is not None else e.lineno}"
        raise DataError(f"{where}: not valid JSON: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise DataError(
            f"{where}: not UTF-8 text (byte 0x{e.object[e.start]:02x} at offset {e.start}); JSON files are UTF-8"
        ) from None
    except RecursionError:
        raise DataError(
            f"{where}: the JSON is nested too deeply to be read (arrays or objects inside one another "
            "about a thousand levels deep); this is not an annotation, results or log file"
        ) from None


def read_json(path: Union[str, os.PathLike], what: str = "JSON file") -> Any:
    """The parsed content of ``path``; a missing file is a ``FileNotFoundError`` naming ``what`` and the path,
    anything unreadable a :class:`DataError` naming the file (see :func:`parse_json`)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    with open(path, "rb") as f:
        data = f.read()
    return parse_json(data, path)


def read_text(path: Union[str, os.PathLike], newline: Optional[str] = None) -> str:
    """The text of a UTF-8 file (``newline`` as for :func:`open`: None turns ``\\r\\n`` and ``\\r`` into
    ``\\n``, ``""`` keeps them, as :mod:`csv` needs). Bytes that are not UTF-8 are a :class:`DataError` naming
    the file, line and column, where Python's decoder raises a ``UnicodeDecodeError`` naming neither."""
    data = Path(path).read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - data.rfind(b"\n", 0, e.start)
        raise DataError(
            f"{path}: line {line}: not UTF-8 text (byte 0x{data[e.start]:02x} at column {column}); "
            "give the text file itself, UTF-8 encoded"
        ) from None
    return text.replace("\r\n", "\n").replace("\r", "\n") if newline is None else text
