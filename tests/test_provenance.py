"""Code hashes kept between processes: the facts of each file (its syntax tree's digest, its
imports) are cached by content, so a cache can speed a workflow parse up but never hide a change."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "workflow/scripts/extract_features.py"
HASH = f"from transfer_lab.provenance import code_hash; print(code_hash({str(SCRIPT)!r}))"


@pytest.fixture
def library(tmp_path):
    """A private copy of the library, so a test may edit it."""
    src = tmp_path / "src"
    shutil.copytree(REPO / "src", src, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    return src


def code_hash(src: Path, cache: Path) -> str:
    env = {"PYTHONPATH": str(src), "XDG_CACHE_HOME": str(cache), "PYTHONDONTWRITEBYTECODE": "1", "PATH": ""}
    return subprocess.run([sys.executable, "-c", HASH], env=env, capture_output=True, text=True,
                          check=True).stdout.strip()


def facts_file(cache: Path) -> Path:
    (found,) = (cache / "transfer-lab").glob("provenance-v*-py*.json")
    return found


def test_a_warm_cache_gives_the_same_hash_and_a_change_still_shows(library, tmp_path):
    cache = tmp_path / "cache"
    cold = code_hash(library, cache)
    stored = json.loads(facts_file(cache).read_text())
    assert len(stored) >= 10  # the script and every module it runs
    assert code_hash(library, cache) == cold
    # The second process reads the facts instead of parsing: altered facts alter the hash.
    facts_file(cache).write_text(json.dumps({key: ["00" * 32, imports] for key, (_, imports) in stored.items()}))
    assert code_hash(library, cache) != cold
    facts_file(cache).write_text(json.dumps(stored))
    extract = library / "transfer_lab/extract.py"
    extract.write_text(extract.read_text() + "\n# a comment: the syntax tree is unchanged\n")
    assert code_hash(library, cache) == cold
    extract.write_text(extract.read_text() + "\n_CHANGED = 1\n")
    changed = code_hash(library, cache)
    assert changed != cold
    assert code_hash(library, tmp_path / "another cache") == changed  # what a cold cache computes


def test_a_damaged_cache_is_computed_again(library, tmp_path):
    cache = tmp_path / "cache"
    expected = code_hash(library, cache)
    facts_file(cache).write_text('{"truncated')
    assert code_hash(library, cache) == expected
    json.loads(facts_file(cache).read_text())  # written whole again


def test_an_unwritable_cache_folder_costs_only_the_parsing(library, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    assert code_hash(library, blocker) == code_hash(library, tmp_path / "cache")


def _import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph (its modules in import order, the first repeated last), or None."""
    done: set[str] = set()
    path: list[str] = []

    def visit(name: str) -> list[str] | None:
        if name in path:
            return path[path.index(name):] + [name]
        if name in done:
            return None
        path.append(name)
        for imported in sorted(graph.get(name, ())):
            found = visit(imported)
            if found:
                return found
        path.pop()
        done.add(name)
        return None

    return next((c for c in map(visit, sorted(graph)) if c), None)


def test_the_library_has_no_import_cycle():
    """No module of the library imports itself through others. Imports inside functions count
    (such an import only hides a cycle until the function runs), and importing ``a.b.c`` runs
    ``a`` and ``a.b`` first, as the code hash follows them (provenance.imported_modules)."""
    from transfer_lab.provenance import PACKAGE, imported_modules, module_file

    root = REPO / "src" / PACKAGE
    names = [".".join([PACKAGE, *p.relative_to(root).with_suffix("").parts]).removesuffix(".__init__")
             for p in root.rglob("*.py")]
    assert module_file(PACKAGE) == root / "__init__.py"  # the library of this checkout
    graph = {name: set(imported_modules(module_file(name), name)) - {name} for name in names}
    assert {"transfer_lab.sources.base", "transfer_lab.storage"} <= graph["transfer_lab.datasets"]
    assert _import_cycle(graph) is None, " -> ".join(_import_cycle(graph))
    # The check finds a cycle where there is one.
    assert _import_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]


def test_dataset_errors_are_one_type_wherever_they_are_imported_from():
    """DatasetError lives in transfer_lab.errors; the sources' base module (where plugins
    import it from) re-exports it."""
    from transfer_lab.errors import DatasetError
    from transfer_lab.images import open_image
    from transfer_lab.sources.base import DatasetError as FromBase

    assert FromBase is DatasetError and issubclass(DatasetError, ValueError)
    with pytest.raises(DatasetError, match="no such file"):
        open_image(REPO / "no such image.png")
