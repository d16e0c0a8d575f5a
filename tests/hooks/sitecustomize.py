"""Test hooks for the processes of integration tests (Snakemake and its jobs).

Python imports ``sitecustomize`` at start-up from the first folder on its path that has
one; the tests put this folder on ``PYTHONPATH`` where they need a hook, so production
code carries none. Each hook is off unless its variable is set:

- ``TRANSFER_LAB_TEST_HOLD=<glob>``: a rename onto a path matching the glob waits forever
  instead. Every output is renamed into place by ``files.atomic_write``, so a test can
  SIGKILL the run at an exact moment: the temporary file written, the output not yet.
- ``TRANSFER_LAB_TEST_IMPORTS=<folder>``: at exit, the process writes the ``transfer_lab``
  modules it loaded into ``<folder>/<pid>.json``, with its script's name (a Snakemake
  script job runs ``.snakemake/scripts/tmpXXXX.<rule script>.py``), which of the heavy
  third-party packages it imported, and for a script job its rule, wildcards and the
  ``arch`` of its network and ``source`` of its dataset in the job's config.
- ``TRANSFER_LAB_TEST_OFFLINE=1``: no host name resolves but the loopback's, as on a
  compute node without network: a download fails at once, the same on every machine.
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

if os.environ.get("TRANSFER_LAB_TEST_OFFLINE"):
    import socket

    _getaddrinfo = socket.getaddrinfo

    def _offline_getaddrinfo(host, *args, **kwargs):
        if host not in (None, "localhost", "127.0.0.1", "::1"):
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: no network (TRANSFER_LAB_TEST_OFFLINE)")
        return _getaddrinfo(host, *args, **kwargs)

    socket.getaddrinfo = _offline_getaddrinfo

if os.environ.get("TRANSFER_LAB_TEST_IMPORTS"):
    import atexit
    import json
    import sys

    # The third-party packages whose import a job pays for (seconds each: tests/job_imports.py).
    _HEAVY = ("torch", "torchvision", "timm", "sklearn", "matplotlib")

    def _job(main) -> dict:
        """The Snakemake job this process runs (its script's ``snakemake`` object), or {}."""
        job = getattr(main, "snakemake", None)
        if job is None or not hasattr(job, "rule"):
            return {}
        wildcards = {k: str(v) for k, v in job.wildcards.items()}
        config = job.config or {}
        network = wildcards.get("network") or getattr(job.params, "network", None)
        dataset = wildcards.get("dataset")
        arch = (config.get("networks") or {}).get(network, {}).get("arch") if isinstance(network, str) else None
        source = (config.get("datasets") or {}).get(dataset, {}).get("source") if dataset else None
        return {"rule": job.rule, "wildcards": wildcards, "arch": arch, "source": source}

    def _record_imports(folder=os.environ["TRANSFER_LAB_TEST_IMPORTS"]):
        script = os.path.basename(sys.argv[0]) if sys.argv else ""
        loaded = sorted(m for m in sys.modules if m == "transfer_lab" or m.startswith("transfer_lab."))
        heavy = sorted(name for name in _HEAVY if name in sys.modules)
        try:
            job = _job(sys.modules.get("__main__"))
        except Exception as err:  # a record saying so beats none: the test reads it
            job = {"rule": None, "error": repr(err)}
        with open(os.path.join(folder, f"{os.getpid()}.json"), "w") as f:
            json.dump({"script": script, "modules": loaded, "torch": "torch" in sys.modules, "heavy": heavy, **job}, f)

    atexit.register(_record_imports)
