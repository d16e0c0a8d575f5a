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
