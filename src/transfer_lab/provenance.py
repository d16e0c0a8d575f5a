"""What defines an artifact, beyond its inputs: library source and library versions.

Snakemake tracks the mtime of a rule's ``script:`` but not the modules it imports, so
each rule receives a hash of the library modules it runs as a ``param``.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import importlib.util
import os
from pathlib import Path


def source_hash(*modules: str) -> str:
    """Hash the code of the named modules, ignoring comments and formatting.

    The modules are located, not imported (no torch at workflow parse time). The AST
    is hashed so that a reworded comment does not invalidate hours of extraction, while
    any change to code or docstrings does.
    """
    digest = hashlib.sha256()
    for name in sorted(set(modules)):
        spec = importlib.util.find_spec(name)
        if spec is None or spec.origin is None:
            raise ModuleNotFoundError(f"cannot locate module {name!r} to hash its source")
        tree = ast.parse(Path(spec.origin).read_text(encoding="utf-8"))
        digest.update(name.encode())
        digest.update(ast.dump(tree, annotate_fields=False).encode())
    return digest.hexdigest()[:16]


def versions(*packages: str) -> dict[str, str]:
    """Installed versions of the given distributions (for artifact ``meta``)."""
    out = {}
    for pkg in packages:
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            out[pkg] = "absent"
    return out


def tree_fingerprint(path: str | os.PathLike) -> str:
    """Hash of the names, sizes and modification times of every file under ``path``.

    A dataset root is thousands of files that Snakemake cannot list as inputs cheaply;
    this fingerprint, passed as a param, makes the prepared dataset stale when any of
    them is added, removed or rewritten (one ``stat`` per file, no reading).
    """
    root = Path(path)
    digest = hashlib.sha256()
    if root.is_file():
        st = root.stat()
        digest.update(f"{root.name}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return digest.hexdigest()[:16]
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            st = os.stat(full)
            rel = os.path.relpath(full, root)
            digest.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:16]
