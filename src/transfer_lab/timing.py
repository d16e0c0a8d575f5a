"""Where a job's time goes: phases that partition it, logged in one parseable line each.

Standard library only, and imported first thing in every rule script (before torch)::

    from transfer_lab import timing  # first: the job's clock starts here

so that its import time is the *script start*. :func:`transfer_lab.files.log_to` then logs,
at entry, the phases ``start`` and ``imports`` and, at exit, the job's ``total``; a script
calls :func:`mark` after each phase of its own. Each phase is the time since the previous
mark, so the phases of a job add up to its total, less the *rest* (what follows its last
mark: writing outputs, the interpreter's exit is not in the log at all).

The line (through ``logging``, so after the log's own timestamp and level)::

    time: <phase> <seconds> s at <epoch>

``<seconds>`` with 3 decimals: the phase's duration; ``<epoch>``: the wall-clock time
(``time.time()``, 3 decimals) at which the phase ended, so the phase ran from
``epoch - seconds`` to ``epoch`` (:data:`LINE` parses it; ``benchmarks/grid.py`` puts the
intervals of many jobs side by side). The ``total`` line adds ``, peak memory <MiB> MiB``.

Phase names (one vocabulary for every rule, so a benchmark can add them up across jobs):

- ``start``: process start to script start: Python's start-up and Snakemake's script
  preamble (which unpickles the ``snakemake`` object, importing Snakemake). Logged by log_to.
- ``imports``: script start to log_to's entry: the script's imports (torch, torchvision,
  timm ...). Logged by log_to.
- ``device``: claiming and initialising the device (CUDA context, threads).
- ``weights``: building the network and loading its weights.
- ``compile``: torch.compile / CUDA graph capture, where done before the loop.
- ``load``: reading inputs (prepared images, bottleneck pickles, metrics JSON).
- ``first batch``: the first batch through the network (lazy initialisation, autotuning).
- ``work``: the job's real work (the remaining batches; training a head; the tables).
- ``total``: process start to log_to's exit (not a phase: the sum). Logged by log_to.

Marks name the phase that just *ended*. A phase a job does not have is simply not logged;
a name may repeat (the parser adds them up). A script that imports this module late (through
``transfer_lab.files``, after torch) has its imports counted in ``start``; one that marks no
``work`` leaves its work in the rest, which a benchmark then cannot tell from fixed cost.
"""

from __future__ import annotations

import logging
import os
import re
import time

#: Wall-clock time at which this module was first imported: the script start.
SCRIPT_START = time.time()

#: One phase line (the part after the log's timestamp and level).
LINE = re.compile(r"time: (?P<phase>[a-z][a-z ]*?) (?P<seconds>-?[\d.]+) s at (?P<at>[\d.]+)")

#: The phase names in the order a job runs them (``total`` is the sum, not a phase).
PHASES = ("start", "imports", "device", "weights", "compile", "load", "first batch", "work")

_last = SCRIPT_START


def _proc_start() -> float | None:
    """The process's start as wall-clock time, from /proc (Linux), else None."""
    try:
        with open("/proc/self/stat") as f:
            stat = f.read()
        # Field 22, starttime, in clock ticks since boot; fields counted after the command
        # name's closing parenthesis (the name may hold spaces), which ends field 2.
        ticks = int(stat[stat.rindex(")") + 2:].split()[19])
        since_boot = ticks / os.sysconf("SC_CLK_TCK")
        boottime = getattr(time, "CLOCK_BOOTTIME", None)
        if boottime is not None:
            # The clock starttime counts on, read now: precise to the tick (10 ms).
            return time.time() - (time.clock_gettime(boottime) - since_boot)
        with open("/proc/stat") as f:  # btime: the boot's wall-clock time, in whole seconds
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
        return btime + since_boot
    except (OSError, ValueError, IndexError, StopIteration, AttributeError):
        return None


_PROCESS_START = _proc_start()


def process_start() -> float:
    """The wall-clock time this process started (Linux); elsewhere the script start."""
    if _PROCESS_START is None or _PROCESS_START > SCRIPT_START:
        return SCRIPT_START
    return _PROCESS_START


def _log(phase: str, seconds: float, at: float, extra: str = "") -> None:
    logging.info("time: %s %.3f s at %.3f%s", phase, seconds, at, extra)


def mark(phase: str) -> float:
    """Log ``phase`` as the time since the previous mark (or the script start); return it."""
    global _last
    now = time.time()
    seconds = now - _last
    _last = now
    _log(phase, seconds, now)
    return seconds


def begin() -> None:
    """The job's first two phases (log_to calls it at entry): ``start`` and ``imports``."""
    _log("start", SCRIPT_START - process_start(), SCRIPT_START)
    global _last
    _last = SCRIPT_START
    mark("imports")


def end(peak_mib: float) -> float:
    """The job's ``total`` (log_to calls it at exit), process start to now, with its peak memory."""
    now = time.time()
    total = now - process_start()
    _log("total", total, now, f", peak memory {peak_mib:.0f} MiB")
    return total


def parse(text: str) -> list[tuple[str, float, float]]:
    """Every phase line of a log, in order, as ``(phase, seconds, end epoch)`` (``total`` included)."""
    return [(m["phase"], float(m["seconds"]), float(m["at"])) for m in LINE.finditer(text)]
