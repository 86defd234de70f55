"""Small file helpers every layer may use: atomic writes, JSON records, content hashes.

Results are written to a temporary name in the same folder and renamed (``os.replace`` is atomic on one file
system), so a reader, or a run resumed after a kill, never sees half a file.
"""

from __future__ import annotations

import hashlib
import json
import os


def atomic_write_text(path: str, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file and a rename, so readers never see half a file."""
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.replace(tmp, path)


def write_json(path: str, payload: dict) -> None:
    """``payload`` as indented JSON at ``path``, atomically (keys in insertion order)."""
    atomic_write_text(path, json.dumps(payload, indent=2) + "\n")


def read_json_if_present(path: str) -> dict | None:
    """The JSON document at ``path``, or None when there is no such file."""
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def file_sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def tree_hashes(root: str) -> dict[str, str]:
    """relative path -> sha256 of every file under ``root``, sorted by path."""
    out = {}
    for folder, _, names in os.walk(root):
        for name in sorted(names):
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = file_sha256(path)
    return dict(sorted(out.items()))
