"""transfer_lab.timing: a job's phases, logged through files.log_to, partition its time."""

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from transfer_lab import timing

SRC = Path(__file__).resolve().parents[1] / "src"

# A rule script in miniature: timing first, a slow import, log_to, two marked phases, a tail.
SCRIPT = textwrap.dedent("""
    import time
    time.sleep(0.3)                       # Python start-up stands in for this: before timing's import
    from transfer_lab import timing
    time.sleep(0.2)                       # imports
    import sys
    from transfer_lab.files import log_to
    with log_to(sys.argv[1]):
        time.sleep(0.25)
        timing.mark("load")
        time.sleep(0.4)
        timing.mark("work")
        time.sleep(0.1)                   # the rest: after the last mark
""")


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("timing")
    log = folder / "job.log"
    before = time.time()
    subprocess.run([sys.executable, "-c", SCRIPT, str(log)], check=True, env={**os.environ, "PYTHONPATH": str(SRC)})
    after = time.time()
    return timing.parse(log.read_text()), before, after


def test_phases_parse_in_order_and_partition_the_total(job):
    lines, before, after = job
    assert [phase for phase, _, _ in lines] == ["start", "imports", "load", "work", "total"]
    phases = {phase: seconds for phase, seconds, _ in lines}
    assert all(s >= 0 for s in phases.values()), phases
    # Each phase starts where the previous one ended (to the millisecond the line rounds to).
    for (_, _, prev_end), (phase, seconds, end) in zip(lines[:-2], lines[1:-1], strict=True):
        assert end - seconds == pytest.approx(prev_end, abs=0.002), phase
    # The phases and the rest add up to the total; the total is the process's life, seen from outside.
    rest = phases["total"] - sum(s for p, s in phases.items() if p != "total")
    assert 0.09 <= rest < 0.3, phases
    assert phases["total"] <= after - before + 0.02
    assert phases["total"] >= 0.3 + 0.2 + 0.25 + 0.4 + 0.1
    # The sleeps land in their phases; start includes the 0.3 s before timing's import
    # (read from /proc/self/stat: the process's own start, to the clock tick).
    assert 0.3 <= phases["start"] < 0.3 + 0.5
    assert 0.2 <= phases["imports"] < 0.2 + 0.3
    assert 0.25 <= phases["load"] < 0.25 + 0.2
    assert 0.4 <= phases["work"] < 0.4 + 0.2
    # The total's end is the last line's time, within the run.
    assert before <= lines[-1][2] <= after


def test_process_start_is_before_the_script_start_and_after_boot():
    start = timing.process_start()
    assert start <= timing.SCRIPT_START <= time.time()
    if sys.platform == "linux":  # this test process started seconds or minutes ago, not in the future
        assert timing.SCRIPT_START - start < 24 * 3600


def test_the_line_format_parses_phase_names_with_spaces():
    text = ("2026-12-04 21:00:00,000 INFO time: first batch 1.250 s at 1764882000.125\n"
            "2026-12-04 21:00:01,000 INFO time: total 12.000 s at 1764882010.500, peak memory 120 MiB\n"
            "2026-12-04 21:00:01,000 INFO not a time: line\n")
    assert timing.parse(text) == [("first batch", 1.25, 1764882000.125), ("total", 12.0, 1764882010.5)]


def test_end_job_runs_exit_handlers_flushes_and_exits_zero_at_once(tmp_path):
    """A rule script's last statement: what Python's shutdown would still do that matters
    (exit handlers, buffered output) is done; nothing after it runs."""
    script = textwrap.dedent("""
        import atexit, sys
        import torch
        from transfer_lab.files import end_job
        atexit.register(lambda: open(sys.argv[1], "w").write("handler ran"))
        sys.stdout.write("buffered, no newline")
        end_job()
        raise SystemExit(3)  # never reached
    """)
    marker = tmp_path / "marker"
    run = subprocess.run([sys.executable, "-c", script, str(marker)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONPATH": str(SRC)})
    assert (run.returncode, run.stdout, run.stderr) == (0, "buffered, no newline", "")
    assert marker.read_text() == "handler ran"
