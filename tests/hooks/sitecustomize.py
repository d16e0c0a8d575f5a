"""Test hooks for the processes of integration tests (Snakemake and its jobs).

Python imports ``sitecustomize`` at start-up from the first folder on its path that has
one; the tests put this folder on ``PYTHONPATH`` where they need a hook, so production
code carries none. Each hook is off unless its variable is set:

- ``TRANSFER_LAB_TEST_HOLD=<glob>``: a rename onto a path matching the glob waits forever
  instead. Every output is renamed into place by ``files.atomic_write``, so a test can
  SIGKILL the run at an exact moment: the temporary file written, the output not yet.
- ``TRANSFER_LAB_TEST_IMPORTS=<folder>``: at exit, the process writes the ``transfer_lab``
  modules it loaded into ``<folder>/<pid>.json``, with its script's name (a Snakemake
  script job runs ``.snakemake/scripts/tmpXXXX.<rule script>.py``).
"""

import os

if os.environ.get("TRANSFER_LAB_TEST_HOLD"):
    import fnmatch
    import time

    _pattern = os.environ["TRANSFER_LAB_TEST_HOLD"]
    _replace = os.replace

    def _held_replace(src, dst, *args, **kwargs):
        if fnmatch.fnmatch(os.fspath(dst), _pattern):
            while True:  # until the test kills this process
                time.sleep(1)
        return _replace(src, dst, *args, **kwargs)

    os.replace = _held_replace

if os.environ.get("TRANSFER_LAB_TEST_IMPORTS"):
    import atexit
    import json
    import sys

    def _record_imports(folder=os.environ["TRANSFER_LAB_TEST_IMPORTS"]):
        script = os.path.basename(sys.argv[0]) if sys.argv else ""
        loaded = sorted(m for m in sys.modules if m == "transfer_lab" or m.startswith("transfer_lab."))
        with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as f:
            json.dump({"script": script, "modules": loaded, "torch": "torch" in sys.modules}, f)

    atexit.register(_record_imports)
