"""Writing artifacts so that nothing half-done ever looks done, and reading pickles safely."""

from __future__ import annotations

import contextlib
import glob
import io
import os
import pickle
import sys
from pathlib import Path
from typing import IO, Any, Iterator, NoReturn


def _tmp_pid(tmp: Path) -> int | None:
    try:
        return int(tmp.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return None


def _remove_stale_temporaries(path: Path) -> None:
    """Drop temporary siblings of ``path`` left by killed writers on this machine.

    Only files whose writer's process id is no longer alive go: never the file of a
    writer still at work. (A leftover from another node of a cluster stays; it is
    never mistaken for ``path`` either way.)
    """
    for tmp in path.parent.glob(f".{glob.escape(path.name)}.tmp-*"):
        pid = _tmp_pid(tmp)
        if pid is None or pid == os.getpid():
            continue
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            tmp.unlink(missing_ok=True)
        except OSError:  # alive, but another user's
            pass


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Open a temporary sibling of ``path`` and rename it into place only on success.

    A job killed mid-write leaves at most a ``.tmp`` file, never a truncated ``path``
    that a rerun (or Snakemake) would take for finished work; the next successful write
    of ``path`` removes such leftovers. A failed write (disk full, quota, I/O error)
    removes its temporary file and raises an ``OSError`` naming ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.filename is not None and Path(err.filename) != tmp:
            raise  # about another file (one the body read): its own message names it
        if err.errno is None:
            raise OSError(f"cannot write {path}: {err}") from err
        # OSError(errno, ...) picks the subclass of that errno, as the original had.
        raise OSError(err.errno, f"cannot write {path}: {err.strerror or err}") from err
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _remove_stale_temporaries(path)


# Globals a pickle of numpy arrays and plain containers may name. Both numpy 1.x
# (numpy.core) and numpy 2.x (numpy._core) spellings, so old course pickles load too.
_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("builtins", "slice"),
    ("builtins", "complex"),
    ("builtins", "set"),
    ("builtins", "frozenset"),
    ("builtins", "bytearray"),
    ("collections", "OrderedDict"),
    ("_codecs", "encode"),
}


class UnsafePickleError(pickle.UnpicklingError):
    pass


class _RestrictedUnpickler(pickle.Unpickler):
    def __init__(self, f: IO[bytes], source: str):
        super().__init__(f, encoding="latin1")
        self._source = source

    def find_class(self, module: str, name: str) -> Any:
        # Protocol 0-2 pickles (Python 2's, and Python 3's own) spell builtins '__builtin__'.
        if (module.replace("__builtin__", "builtins"), name) in _ALLOWED_GLOBALS or (
            module in ("numpy", "numpy.dtypes") and name.endswith("DType")
        ):
            return super().find_class(module, name)
        raise UnsafePickleError(
            f"{self._source}: refused to load global '{module}.{name}'. Only numpy arrays "
            "and plain containers are allowed in data pickles; this file may run code when "
            "loaded with plain pickle. Regenerate it or check where it came from."
        )


def loads_pickle(data: bytes, source: str) -> Any:
    """Unpickle bytes admitting only numpy arrays, dtypes and plain containers.

    ``source`` names the file (or archive member) in every error. Python 2 pickles
    (the CIFAR batches, old course files) load with latin1 decoding.
    """
    return _load_restricted(io.BytesIO(data), source)


def _load_restricted(f: IO[bytes], source: str) -> Any:
    try:
        return _RestrictedUnpickler(f, source).load()
    except UnsafePickleError:
        raise
    except Exception as err:  # truncated or not a pickle at all
        raise pickle.UnpicklingError(
            f"{source}: not a readable pickle ({type(err).__name__}: {err}); "
            "the file may be truncated or in another format"
        ) from err


def load_pickle(path: str | os.PathLike) -> Any:
    """Load a data pickle file through :func:`loads_pickle`."""
    path = Path(path)
    try:
        f = open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None
    # Unpickled from the file, not from its bytes read first: a big array is then read
    # straight into its own buffer, and the file's bytes are never held beside it.
    with f:
        return _load_restricted(f, str(path))


@contextlib.contextmanager
def log_to(path: str | os.PathLike) -> Iterator[IO[str]]:
    """Send this process's stdout, stderr and ``logging`` to a rule's log file.

    The rule's log then holds the progress bar, the messages and, on failure, the
    traceback that Snakemake points the user to; on success its last line is the job's
    time and peak memory (what a benchmark file would say, for the rules that may be
    cached between workflows and so can have none). The job's time is split into phases
    (:mod:`transfer_lab.timing`): at entry the ``start`` and ``imports`` lines, at exit
    ``time: total <s> s at <epoch>, peak memory <MiB> MiB``, the process's start to now.
    """
    import logging
    import resource
    import traceback

    from . import timing

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", buffering=1) as log:
        logging.basicConfig(
            stream=log, level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", force=True
        )
        timing.begin()
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            try:
                yield log
            except BaseException:
                traceback.print_exc(file=log)
                raise
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
        timing.end(peak)


def end_job() -> NoReturn:
    """End a rule script's process, its outputs written: the script's last statement.

    Python's own shutdown then tears the loaded modules down one by one, which with torch
    takes 0.7 s and with timm too 1.3 s on two CPU cores (measured): a fixed cost of every
    job that buys nothing, as the process's memory goes back to the system anyway. Here the
    exit handlers run (``logging``'s flush among them) and the standard streams are
    flushed, then the process exits with status 0 at once. Only reached when the script
    succeeded: an exception propagates before it, and Python exits as usual, non-zero.
    """
    import atexit

    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__):
        if stream is not None:
            stream.flush()
    os._exit(0)


def check_output_cache(folder: str | os.PathLike) -> None:
    """Refuse a Snakemake output cache folder (``$SNAKEMAKE_OUTPUT_CACHE``) this user cannot write.

    Snakemake moves each result it computes into the cache after the job: with a folder it
    cannot write, every job would fail once its work is done. The workflow asks this when
    it is parsed, so the refusal comes before any job. Raises ValueError saying what to do.
    """
    if not os.path.isdir(folder):
        raise ValueError(
            f"SNAKEMAKE_OUTPUT_CACHE={folder}: no such folder. Create it (writable for everyone who shares "
            f"it, e.g. `mkdir -p {folder} && chmod 2777 {folder}`), or unset the variable to work without the cache."
        )
    if not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(
            f"SNAKEMAKE_OUTPUT_CACHE={folder}: this user cannot write there, and Snakemake puts every result it "
            "computes there. Ask for write access (a group-writable folder), or unset the variable to work "
            "without the cache."
        )
