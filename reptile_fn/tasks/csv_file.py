"""Reading a CSV file of labelled sentences safely: the path checked, records with their line numbers, and every way
the bytes can be wrong (not UTF-8, a zip or image instead, an unclosed quote, an endless field) as one DataError."""

from __future__ import annotations

import codecs
import csv
import os
from pathlib import Path
from typing import Iterator

from reptile_fn.errors import DataError

MAX_FIELD = 100_000
MAX_BYTES = 1 << 30  # a CSV of few-shot sentences larger than this is a mistake (the whole file is read into memory)


def _existing(path: str | os.PathLike) -> Path:
    file = Path(path).expanduser()
    if not file.exists():
        raise DataError(f"{file} not found; give the path of a CSV file of labelled sentences (tasks.path, "
                        "tasks.test_path)")
    if file.is_dir():
        raise DataError(f"{file} is a directory; give the path of the CSV file inside it")
    if not file.is_file():  # a pipe would block, a device (/dev/zero) never end
        raise DataError(f"{file} is not a regular file (a device, a pipe or a socket); give a CSV file")
    if file.stat().st_size > MAX_BYTES:
        raise DataError(f"{file} is {file.stat().st_size / 2**30:.1f} GiB, above the {MAX_BYTES // 2**30} GiB a CSV of "
                        "few-shot sentences may have (CLINC150 is 4 MB); give a smaller file")
    return file


def _rows(file: Path) -> Iterator[tuple[int, list[str]]]:
    """``(line, fields)`` of each non-blank record, the header first; ``line`` is where the record starts."""
    line = 1
    try:
        with open(file, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f, strict=True)
            for row in reader:
                start, line = line, reader.line_num + 1
                if not any(field.strip() for field in row):
                    continue
                if any("\0" in field for field in row):
                    raise DataError(f"{file} line {start} contains a NUL character: it is binary or UTF-16, not UTF-8 "
                                    "text; save it as CSV UTF-8")
                if any(len(field) > MAX_FIELD for field in row):
                    raise _too_long(file, start)
                yield start, row
    except UnicodeDecodeError:
        raise _not_utf8(file) from None
    except csv.Error as e:
        if "field limit" in str(e):
            with open(file, "rb") as f:
                if b"\0" in f.read(1 << 16):  # binary, not an unclosed quote
                    raise DataError(f"{file} contains a NUL character: it is binary or UTF-16, not UTF-8 text; save "
                                    "it as CSV UTF-8") from None
            raise _too_long(file, line) from None
        raise DataError(f"{file}: the record starting on line {line} is not valid CSV ({e}); a quoted field must "
                        'end with its closing quote right before a comma or the line end, with "" for a quote '
                        "inside it") from None
    except OSError as e:
        raise DataError(f"cannot read {file} ({type(e).__name__}: {e}); check the path and its permissions") from e


def _too_long(file: Path, line: int) -> DataError:
    return DataError(f"{file}: the record starting on line {line} has a field longer than {MAX_FIELD:,} characters, the "
                     "limit: if a quote (\") is never closed, close it or write \"\" for a quote inside a field; if the "
                     "text really is that long, shorten it (the encoder reads only its first 64 tokens, 128 in adapt)")


BINARY = ((b"PK\x03\x04", "a zip file"), (b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"),
          (b"GIF8", "a GIF image"), (b"RIFF", "a RIFF file (a WebP image?)"),
          (b"\xff\xfe", "UTF-16 text"), (b"\xfe\xff", "UTF-16 text"))


def _not_utf8(file: Path) -> DataError:
    """Where the first byte that is not UTF-8 is (offset and line), found by reading the file again; or what the file
    is instead, from its first bytes (a zip or an image given to a text run: iconv's advice would not help)."""
    with open(file, "rb") as f:
        head = f.read(8)
    kind = next((what for magic, what in BINARY if head.startswith(magic)), None)
    if kind == "UTF-16 text":
        return DataError(f"{file} is UTF-16 text, not UTF-8; save it as UTF-8 (e.g. iconv -f utf-16 -t utf-8)")
    if kind is not None:
        return DataError(f"{file} is {kind}, not a CSV of text; this is a text run: pass a CSV with text,label columns")
    decoder = codecs.getincrementaldecoder("utf-8")()
    offset, lines, where = 0, 1, ""
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            pending = len(decoder.getstate()[0])
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as e:
                bad = offset - pending + e.start
                lines += chunk[:max(0, e.start - pending)].count(b"\n")
                where = f" (byte 0x{(e.object[e.start]):02x} at offset {bad}, line {lines})"
                break
            offset += len(chunk)
            lines += chunk.count(b"\n")
    return DataError(f"{file} is not UTF-8 text{where}; save it as UTF-8 (e.g. Excel's \"CSV UTF-8\", or "
                     "iconv -f latin1 -t utf-8)")
