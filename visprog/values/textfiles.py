"""Text files as editors save them: UTF-8 with or without a byte-order mark, lines ending in
LF, CRLF or a lone CR. Program files, JSONL items, data sets and TOML configs are read
through here, so each accepts the same files and refuses the same ones with the same
message."""
from __future__ import annotations

import os
from pathlib import Path

BOM = "\ufeff"


def normalize_newlines(text: str) -> str:
    """`text` with a leading byte-order mark dropped and CRLF / lone CR line ends as LF."""
    if text.startswith(BOM):
        text = text[1:]
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


def decode_text(data: bytes, name: str = "<text>") -> str:
    """UTF-8 bytes (a BOM allowed) as text with LF line ends.

    Raises:
        ValueError: the bytes are not UTF-8; the message names the file, the line and the
            column of the first bad byte, and the byte itself.
    """
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        before = data[:e.start]
        line = before.count(b"\n") + before.count(b"\r") - before.count(b"\r\n") + 1
        start = max(before.rfind(b"\n"), before.rfind(b"\r")) + 1
        column = len(before[start:].decode("utf-8", errors="replace")) + 1
        raise ValueError(f"{name} is not UTF-8 text: line {line}, column {column} has the byte "
                         f"0x{data[e.start]:02x}; save it as UTF-8") from None
    return normalize_newlines(text)


def read_text(path: str | os.PathLike) -> str:
    """A text file's contents (see `decode_text`).

    Raises:
        FileNotFoundError, IsADirectoryError, PermissionError, OSError: as `open` does.
        ValueError: the file is not UTF-8 (names the line).
    """
    p = Path(path)
    return decode_text(p.read_bytes(), str(p))
