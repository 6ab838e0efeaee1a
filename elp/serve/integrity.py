"""Integrity of a model package: its manifest of file hashes, links, permissions.

``manifest.json`` lists every file of the package with its SHA-256 and is written last,
atomically, whenever the package changes (:func:`write_manifest`); its files are made
world-readable (0644, folders 0755). :func:`manifest_problems` reports, one line per problem,
every file that is missing or differs, and every link that leads outside the package. Files
the manifest does not list (e.g. ``elp inspect``'s plot) are never read when loading.

Examples
--------
>>> import tempfile
>>> from pathlib import Path
>>> directory = Path(tempfile.mkdtemp())
>>> _ = (directory / "labels.txt").write_text("a\\nb\\n")
>>> sorted(write_manifest(directory)["sha256"])
['labels.txt']
>>> manifest_problems(directory)
[]
>>> _ = (directory / "labels.txt").write_text("a\\nc\\n")
>>> manifest_problems(directory)  # doctest: +ELLIPSIS
['.../labels.txt: content differs from manifest.json (SHA-256 ... != ...); the file was changed or damaged after packaging']
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from elp.runtime import atomic_write_text
from elp.serve.head_registry import file_sha256

MANIFEST_FILE = "manifest.json"
MANIFEST_FORMAT = 1
FILE_MODE = 0o644
DIR_MODE = 0o755


def link_problems(directory: str | os.PathLike) -> list[str]:
    """Return the links inside ``directory`` that point outside it (or nowhere), one line each.

    Examples
    --------
    >>> import tempfile
    >>> from pathlib import Path
    >>> directory = Path(tempfile.mkdtemp())
    >>> (directory / "labels.txt").symlink_to("/etc/hostname")
    >>> link_problems(directory)  # doctest: +ELLIPSIS
    ['.../labels.txt: a link to /etc/hostname, outside the package; a package holds only its own files']
    """
    root = Path(directory).resolve()
    problems = []
    for path in sorted(Path(directory).rglob("*")):
        if path.is_symlink():
            target = Path(os.path.realpath(path))
            if not target.is_relative_to(root) or not target.exists():
                problems.append(f"{path}: a link to {os.readlink(path)}, outside the package; a package holds "
                                "only its own files")
    return problems


def package_files(directory: str | os.PathLike) -> list[str]:
    """Return the relative paths of the regular files of a package, the manifest excluded."""
    directory = Path(directory)
    return sorted(str(path.relative_to(directory)) for path in directory.rglob("*")
                  if path.is_file() and not path.is_symlink() and path.name != MANIFEST_FILE
                  and not path.name.startswith("."))


def write_manifest(directory: str | os.PathLike) -> dict:
    """Hash every file of ``directory`` into ``manifest.json`` (written last, atomically), make the
    files world-readable, and return the manifest.

    Raises
    ------
    ValueError
        When the directory holds a link leading outside it.
    """
    directory = Path(directory)
    problems = link_problems(directory)
    if problems:
        raise ValueError(problems[0])
    files = package_files(directory)
    for path in [directory, *(p for p in directory.rglob("*") if p.is_dir() and not p.is_symlink())]:
        os.chmod(path, DIR_MODE)
    for name in files:
        os.chmod(directory / name, FILE_MODE)
    manifest = {"format": MANIFEST_FORMAT, "algorithm": "sha256",
                "sha256": {name: file_sha256(directory / name) for name in files}}
    atomic_write_text(directory / MANIFEST_FILE, json.dumps(manifest, indent=2) + "\n")
    os.chmod(directory / MANIFEST_FILE, FILE_MODE)
    return manifest


def read_manifest(directory: str | os.PathLike) -> tuple[dict | None, list[str]]:
    """Return the manifest (None when the package has none) and the problems of the file itself."""
    path = Path(directory) / MANIFEST_FILE
    if not path.exists():
        return None, []
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        return None, [f"{path}: not valid JSON ({err}); rewrite it with elp inspect --check --write-manifest "
                      f"--package {directory} if the other files are intact"]
    hashes = manifest.get("sha256") if isinstance(manifest, dict) else None
    if not isinstance(hashes, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in hashes.items()):
        return None, [f"{path}: field 'sha256' is missing or not an object of file -> hex digest"]
    return manifest, []


def manifest_problems(directory: str | os.PathLike) -> list[str]:
    """Return every integrity problem of a package, one line each (empty: intact, or no manifest).

    Links outside the package; for a package with a manifest, each listed file that is
    missing, escapes the package or whose SHA-256 differs.
    """
    directory = Path(directory)
    problems = link_problems(directory)
    manifest, own = read_manifest(directory)
    problems += own
    if manifest is None:
        return problems
    root = directory.resolve()
    for name, digest in sorted(manifest["sha256"].items()):
        path = directory / name
        if Path(name).is_absolute() or not Path(os.path.realpath(path)).is_relative_to(root):
            problems.append(f"{directory / MANIFEST_FILE}: entry {name!r} is outside the package")
        elif not path.is_file():
            problems.append(f"{path}: missing (listed in {MANIFEST_FILE}); the package is incomplete: copy it again")
        elif (actual := file_sha256(path)) != digest:
            problems.append(f"{path}: content differs from {MANIFEST_FILE} (SHA-256 {actual[:12]} != {digest[:12]}); "
                            "the file was changed or damaged after packaging")
    return problems
