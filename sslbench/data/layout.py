"""Reading dataset roots as users download them: required files, ``"<id> <value>"`` tables.

A root that lacks a file gets a :class:`~sslbench.errors.DatasetError` naming that file and
showing the whole expected layout, so the user sees at once whether they pointed one level too
high or too low.
"""

from __future__ import annotations

from pathlib import Path

from sslbench.errors import DatasetError


def find_root(root: Path, marker: str, subfolder: str) -> Path:
    """``root`` itself if it holds ``marker``, else ``root/subfolder`` if that does (the folder the
    archive unpacks to), else ``root`` (and the caller's :func:`require` names what is missing)."""
    if not (root / marker).exists() and (root / subfolder / marker).exists():
        return root / subfolder
    return root


def require(dataset: str, root: Path, relative: str, layout: str) -> Path:
    """``root/relative``, or a DatasetError naming it and showing the expected ``layout``."""
    path = root / relative
    if not path.exists():
        raise DatasetError(f"{dataset}: {path} not found. Expected the layout:\n{layout}")
    return path


def read_text(path: Path) -> str:
    """The UTF-8 text of ``path`` (the datasets' own encoding); other encodings are a DatasetError."""
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        line = path.read_bytes()[: exc.start].count(b"\n") + 1
        raise DatasetError(
            f"{path}:{line}: not UTF-8 text (byte {exc.object[exc.start]:#04x}); re-save the file as UTF-8"
        ) from None


def read_id_table(path: Path) -> list[tuple[str, str]]:
    """Lines ``"<id> <value>"`` split on the FIRST whitespace only (values may hold spaces and
    slashes, e.g. FGVC-Aircraft's ``F/A-18``); blank lines skipped, ids kept as strings."""
    rows = []
    for number, line in enumerate(read_text(path).splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise DatasetError(f"{path}:{number}: expected '<id> <value>', found {line!r}")
        rows.append((parts[0], parts[1]))
    return rows


def read_lines(path: Path) -> list[str]:
    """Non-blank lines, stripped."""
    return [line.strip() for line in read_text(path).splitlines() if line.strip()]
