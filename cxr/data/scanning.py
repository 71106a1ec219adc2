"""Walk an input folder: every entry under it, with problems found without opening a file.

Shared by ingest (which labels and checks the files) and prediction (which scores them). Paths are
kept as `path_text`: valid UTF-8 that gives back the exact name (`real_path`), so a file whose name is
not UTF-8 (Latin-1 `Müller.jpeg` from an old Windows share, listed as `M\\xfcller.jpeg`) is used,
listed and reported like any other.
"""

from __future__ import annotations

import errno
import hashlib
import operator
import os
import re
from pathlib import Path
from typing import NamedTuple

# Provenance records of reviewed images (`cxr.data.provenance`) inside a data folder: not images, never scanned.
RECORDS_FOLDER = ".cxr-review"


class FoundFile(NamedTuple):
    """One entry of the folder scan; `problem` is a (reason, detail) found without opening it.

    A named tuple: one is made per file on every scan, and a tuple is several times cheaper to build
    than a frozen dataclass.
    """

    path: str
    relative: str
    size_bytes: int
    mtime_ns: int
    problem: tuple[str, str] | None = None


_ESCAPE = re.compile(r"\\(\\|x[0-9a-f]{2})")


def path_text(path: str) -> str:
    """`path` as lossless UTF-8 text: a backslash doubled, each byte that is not UTF-8 as `\\xNN`.

    Names without either (nearly all) are unchanged; `real_path` reverses it exactly.
    """
    text = path.replace("\\", "\\\\")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # undecodable bytes arrive as surrogate escapes (PEP 383)
        return os.fsencode(text).decode("utf-8", "backslashreplace")
    return text


def real_path(text: str) -> str:
    """The path to open for a `path_text` (surrogate escapes for the bytes that are not UTF-8)."""
    if "\\" not in text:
        return text

    def unescape(match: re.Match[str]) -> str:
        escaped = match.group(1)
        return "\\" if escaped == "\\" else chr(0xDC00 + int(escaped[1:], 16))

    return _ESCAPE.sub(unescape, text)


def scan_folder(root: Path) -> list[FoundFile]:
    """Every non-directory entry under `root` (but the `RECORDS_FOLDER`s), sorted by relative path.

    Directory symlinks are followed once; a directory reached again (a cycle) is reported as
    `symlink_loop`, dangling links as `broken_symlink`. Paths and relative paths are `path_text`.
    """
    root = Path(root)
    found: list[FoundFile] = []
    _walk(root, "", {_dir_identity(root)}, found)
    found.sort(key=_relative)
    return found


_relative = operator.attrgetter("relative")
_name = operator.attrgetter("name")
_new_tuple = tuple.__new__


def _dir_identity(path: Path | str) -> tuple[int, int]:
    stat = os.stat(path)
    return stat.st_dev, stat.st_ino


def _walk(directory: Path | str, prefix: str, visited: set[tuple[int, int]], found: list[FoundFile]) -> None:
    """Append every entry under `directory` to `found` (this loop runs once per file of every scan).

    A name's `path_text` is joined to its folder's: the escaping works byte by byte and `/` is never
    part of a multi-byte character, so the parts escape exactly as the whole path would.
    """
    try:
        entries = sorted(os.scandir(directory), key=_name)
    except OSError as error:
        found.append(
            _problem(str(directory), prefix or ".", "unreadable", f"folder cannot be listed: {error}")
        )
        return
    folder_text, prefix_text = path_text(os.path.join(directory, "")), path_text(prefix)
    for entry in entries:
        try:
            is_dir = entry.is_dir(follow_symlinks=True)
        except OSError:
            is_dir = False  # dangling or looping link: described as a file
        if not is_dir:
            try:
                stat = entry.stat(follow_symlinks=True)
            except OSError as error:
                found.append(_unusable_link(entry, f"{prefix}{entry.name}", error))
                continue
            if entry.is_file():
                name = entry.name
                if "\\" in name or not name.isascii():
                    name = path_text(name)
                # `tuple.__new__` skips the named tuple's Python-level `__new__`: half the cost of each tuple.
                found.append(
                    _new_tuple(
                        FoundFile,
                        (folder_text + name, prefix_text + name, stat.st_size, stat.st_mtime_ns, None),
                    )
                )
            else:
                found.append(
                    _problem(
                        entry.path,
                        f"{prefix}{entry.name}",
                        "not_an_image",
                        "not a regular file",
                        stat.st_size,
                        stat.st_mtime_ns,
                    )
                )
            continue
        if entry.name == RECORDS_FOLDER:
            continue
        relative = f"{prefix}{entry.name}"
        identity = _dir_identity(entry.path)
        if identity in visited:
            found.append(
                _problem(entry.path, relative, "symlink_loop", "folder link leads back into the scan")
            )
            continue
        visited.add(identity)
        _walk(entry.path, f"{relative}/", visited, found)


def _problem(path: str, relative: str, reason: str, detail: str, size: int = 0, mtime: int = 0) -> FoundFile:
    return FoundFile(path_text(path), path_text(relative), size, mtime, (reason, detail))


def _unusable_link(entry: os.DirEntry, relative: str, error: OSError) -> FoundFile:
    link = entry.stat(follow_symlinks=False)
    if error.errno == errno.ELOOP:
        reason, detail = "symlink_loop", "link resolves to itself"
    elif entry.is_symlink():
        reason, detail = "broken_symlink", f"link target missing: {os.readlink(entry.path)!r}"
    else:
        reason, detail = "unreadable", str(error)
    return _problem(entry.path, relative, reason, detail, link.st_size, link.st_mtime_ns)


def data_dir_fingerprint(data_dir: Path | str) -> str:
    """Digest of the folder's listing (relative path, size, mtime_ns of every file), not its bytes."""
    digest = hashlib.sha256()
    for item in scan_folder(Path(data_dir).resolve()) if Path(data_dir).is_dir() else []:
        digest.update(f"{item.relative}\0{item.size_bytes}\0{item.mtime_ns}\0{item.problem}\n".encode())
    return digest.hexdigest()
