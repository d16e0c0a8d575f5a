"""What defines an artifact, beyond its inputs: library source and library versions.

Snakemake tracks the mtime of a rule's ``script:`` but not the modules it imports, so
each rule receives a hash of the library modules it runs as a ``param``
(:func:`code_hash`).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import importlib.metadata
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Iterable, Iterator

from .files import atomic_write

PACKAGE = "transfer_lab"
# Bump when what _file_facts records changes, so an older cache file is not read.
FACTS_FORMAT = 1


@functools.cache
def _package_dir() -> Path:
    spec = importlib.util.find_spec(PACKAGE)  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(f"cannot locate the {PACKAGE} package to hash its source")
    return Path(list(spec.submodule_search_locations)[0])


def module_file(name: str) -> Path | None:
    """The file of a module of this package (a package's ``__init__.py``), or None."""
    base = _package_dir().joinpath(*name.split(".")[1:])
    for path in (base.with_suffix(".py"), base / "__init__.py"):
        if path.is_file():
            return path
    return None


def _in_package(name: str) -> bool:
    return name == PACKAGE or name.startswith(PACKAGE + ".")


# An import statement as _file_facts records it: (level, module, names); level -1 for a
# plain ``import a, b`` (module None, names the imported modules).
Import = tuple[int, "str | None", tuple[str, ...]]


def _facts_path() -> Path:
    """Where the facts of each file are kept between processes: ast's output depends on
    Python's version, so one file per version, beside the catalog's."""
    from .catalog import cache_dir

    return cache_dir() / f"provenance-v{FACTS_FORMAT}-py{sys.version_info[0]}{sys.version_info[1]}.json"


@functools.cache
def _stored_facts() -> dict[str, list]:
    try:
        stored = json.loads(_facts_path().read_text())
        return stored if isinstance(stored, dict) else {}
    except (OSError, ValueError):
        return {}  # missing or damaged: computed again


_new_facts: dict[str, list] = {}


def _save_facts() -> None:
    """Keep what this process computed for the next one (atomically: parallel parses only
    race to write the same facts). A folder that cannot be written costs only the parsing."""
    if not _new_facts:
        return
    stored = _stored_facts()
    if len(stored) + len(_new_facts) > 5000:  # old versions of files pile up: start again
        stored.clear()
    stored.update(_new_facts)
    _new_facts.clear()
    try:
        with atomic_write(_facts_path(), "w") as f:
            json.dump(stored, f, separators=(",", ":"))
    except OSError:
        pass


def _statements(body: list[ast.stmt]) -> Iterator[ast.stmt]:
    """Every statement, nested ones too (imports are statements: expressions need no visit)."""
    for node in body:
        yield node
        for field in ("body", "orelse", "finalbody", "handlers", "cases"):
            yield from _statements(getattr(node, field, None) or [])


@functools.cache
def _file_facts(path: Path) -> tuple[bytes, tuple[Import, ...]]:
    """A file's syntax-tree digest (code and docstrings, not comments or layout) and its
    import statements, anywhere in it.

    Parsing and dumping the library's syntax trees was a fifth of every workflow parse; both
    depend only on the file's content, so they are kept by its content's hash (:func:`_facts_path`).
    """
    data = path.read_bytes()
    key = hashlib.sha256(data).hexdigest()
    known = _new_facts.get(key) or _stored_facts().get(key)
    if known is not None:
        digest, imports = known
        return bytes.fromhex(digest), tuple((level, module, tuple(names)) for level, module, names in imports)
    tree = ast.parse(data.decode("utf-8"))
    digest = hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).digest()
    imports: list[Import] = []
    for node in _statements(tree.body):
        if isinstance(node, ast.Import):
            imports.append((-1, None, tuple(alias.name for alias in node.names)))
        elif isinstance(node, ast.ImportFrom):
            imports.append((node.level, node.module, tuple(alias.name for alias in node.names)))
    _new_facts[key] = [digest.hex(), imports]
    return digest, tuple(imports)


def _tree_digest(path: Path) -> bytes:
    """The digest of a file's syntax tree: code and docstrings, not comments or layout."""
    return _file_facts(path)[0]


@functools.cache
def imported_modules(path: Path, name: str | None = None) -> frozenset[str]:
    """The package's modules that the file at ``path`` imports, anywhere in it.

    ``name`` is the file's module name (relative imports resolve against it; None for a
    script outside the package). Imports inside functions count: they run when the
    function does. Importing ``a.b.c`` runs ``a`` and ``a.b`` too.
    """
    found: set[str] = set()
    is_package = path.name == "__init__.py"
    for level, module, names in _file_facts(path)[1]:
        if level < 0:  # import a, b
            found.update(n for n in names if _in_package(n))
            continue
        if level:
            parts = (name or "").split(".")
            anchor = parts if is_package else parts[:-1]
            base = ".".join(anchor[: len(anchor) - level + 1] + ([module] if module else []))
        else:
            base = module or ""
        if _in_package(base):
            found.add(base)
            # 'from pkg import mod' imports a module; 'from mod import name' does not
            found.update(f"{base}.{n}" for n in names if module_file(f"{base}.{n}"))
    return frozenset(".".join(name.split(".")[:i]) for name in found for i in range(1, name.count(".") + 2))


def package_modules(name: str) -> set[str]:
    """Every module of subpackage ``name``: a subpackage may load its modules without
    naming them (the dataset sources' registry discovers its plugins), so it is hashed whole."""
    folder = module_file(name).parent
    return {
        ".".join([name, *p.relative_to(folder).with_suffix("").parts]).removesuffix(".__init__")
        for p in folder.rglob("*.py")
    }


def module_closure(script: str | os.PathLike) -> list[str]:
    """The package's modules a script runs: what it imports, what those import, and so on."""
    pending = set(imported_modules(Path(script)))
    seen: set[str] = set()
    while pending:
        name = pending.pop()
        path = module_file(name)
        if name in seen or path is None:
            continue
        seen.add(name)
        pending |= imported_modules(path, name)
        if path.name == "__init__.py" and name != PACKAGE:
            pending |= package_modules(name)
    return sorted(seen)


def code_hash(script: str | os.PathLike) -> str:
    """Hash of a rule's script and every module of the package it runs, ignoring comments
    and formatting.

    Snakemake sees a script's own changes (by its modification time), not those of the
    modules it imports; this hash, a ``param`` of the rule, makes the rule's outputs stale
    when any of them changes. The modules come from the scripts' syntax trees, followed
    import by import, so a new import can never be left out; they are located, not
    imported (no torch at workflow parse time). The syntax tree is hashed so that a
    reworded comment does not invalidate hours of extraction, while any change to code or
    docstrings does.
    """
    digest = hashlib.sha256(_tree_digest(Path(script)))
    for name in module_closure(script):
        digest.update(name.encode())
        digest.update(_tree_digest(module_file(name)))
    _save_facts()
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


def files_fingerprint(paths: Iterable[str | os.PathLike]) -> str:
    """Hash of the paths, sizes and modification times of these files (a missing one as missing):
    :func:`tree_fingerprint` for the files a table lists, wherever they are."""
    digest = hashlib.sha256()
    for path in paths:
        try:
            st = os.stat(path)
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        except OSError:
            digest.update(f"{path}\0missing\n".encode())
    return digest.hexdigest()[:16]
