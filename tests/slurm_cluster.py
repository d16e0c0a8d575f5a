"""A throwaway one-node SLURM cluster on this machine, for ``tests/test_slurm.py``.

The point is to prove ``profiles/slurm`` against a real ``sbatch``, not a mock: Debian's
packages (munge, slurmctld, slurmd, slurm-client, installed on demand), a configuration
written to ``/etc/slurm/`` and the three daemons started by hand in the foreground. CI
machines have no systemd, and starting them ourselves means the test owns their PIDs and
stops exactly those processes, whatever happens in between.

Why the configuration looks as it does (measured with SLURM 22.05 and
snakemake-executor-plugin-slurm 2.8):

- It must live at ``/etc/slurm/slurm.conf``: the plugin's job step removes ``SLURM_CONF``
  from the environment, so a private path would not reach ``srun`` inside a job.
- There is no accounting database, so ``sacct`` fails and the plugin would wait forever;
  it must use ``--slurm-status-command squeue``, which it honours only with
  ``MinJobAge >= 120``. A long ``MinJobAge`` also keeps every finished job visible to
  ``scontrol show job`` afterwards: the test's proof of what went through ``sbatch``.
- ``DefMemPerCPU``: without it a job takes the node's whole memory and jobs run one at a
  time.
- The node declares ``Gres=gpu:N`` (counted, no device files) so that ``--gpus=1`` is a
  request SLURM really schedules, allocates and accounts, on a machine without a GPU.
- ``proctrack/linuxproc`` and ``task/none``: no cgroup setup needed.
- ``SlurmdParameters=config_overrides``: the node may declare more CPUs than the machine
  has, so that a 2-core CI machine still runs several (mostly start-up-bound) jobs at once.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PACKAGES = ("munge", "slurmctld", "slurmd", "slurm-client")
BINARIES = ("munged", "munge", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scontrol", "sinfo", "scancel")
CONF_DIR = Path("/etc/slurm")
MARKER = "# Written by transfer-lab's tests/slurm_cluster.py for one test run; removed when it ends."
PARTITION = "ci"
NODE = "localhost"
STAND_IN_DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/urandom")


def unavailable() -> str | None:
    """Why this machine cannot host the test cluster, or None when it can."""
    if not sys.platform.startswith("linux"):
        return "the SLURM test needs Linux"
    if os.geteuid() != 0:
        return ("the SLURM test needs root: it installs Debian's SLURM packages, writes "
                "/etc/slurm/slurm.conf and starts munged, slurmctld and slurmd (CI runs as root)")
    if missing_binaries() and not shutil.which("apt-get"):
        return (f"SLURM is not installed ({', '.join(missing_binaries())} missing) and there is "
                f"no apt-get to install {' '.join(PACKAGES)}")
    for name in ("slurm.conf", "gres.conf"):
        conf = CONF_DIR / name
        if conf.exists() and MARKER not in conf.read_text(errors="replace"):
            return f"{conf} exists: this machine has its own SLURM setup, which the test will not overwrite"
    return None


def missing_binaries() -> list[str]:
    return [b for b in BINARIES if not shutil.which(b)]


def install() -> None:
    """``apt-get install`` the packages when a binary is missing (about 10 s); the package
    lists are refreshed only if the first try fails."""
    if not missing_binaries():
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "-q", *PACKAGES]
    if subprocess.run(cmd, env=env, capture_output=True, text=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True, text=True, check=True)
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    if missing_binaries():
        raise RuntimeError(f"installed {' '.join(PACKAGES)} but {missing_binaries()} are still missing")


def slurm_conf(root: Path, cpus: int, mem_mb: int, gpus: int) -> str:
    return f"""{MARKER}
ClusterName=transferlab
SlurmctldHost={NODE}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.log
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=512
MinJobAge=3600
ReturnToService=2
MpiDefault=none
SlurmdParameters=config_overrides
GresTypes=gpu
NodeName={NODE} CPUs={cpus} RealMemory={mem_mb} Gres=gpu:{gpus} State=UNKNOWN
PartitionName={PARTITION} Nodes={NODE} Default=YES MaxTime=INFINITE State=UP
"""


def gres_conf(gpus: int) -> str:
    # slurmd counts a GPU only with a character device behind it: harmless ones stand in
    # for /dev/nvidia* (task/none constrains no devices).
    if gpus > len(STAND_IN_DEVICES):
        raise ValueError(f"at most {len(STAND_IN_DEVICES)} stand-in GPUs")
    lines = "".join(f"NodeName={NODE} Name=gpu File={dev}\n" for dev in STAND_IN_DEVICES[:gpus])
    return f"{MARKER}\n{lines}"


def memory_mb() -> int:
    with open("/proc/meminfo") as f:
        total_kb = int(next(line for line in f if line.startswith("MemTotal:")).split()[1])
    return total_kb // 1024 // 2  # half the machine: RealMemory must not exceed what slurmd finds


@dataclass
class Cluster:
    """The running cluster: its files, and the daemons this process started (name -> Popen)."""

    root: Path
    partition: str = PARTITION
    daemons: dict[str, subprocess.Popen] = field(default_factory=dict)
    stopped: dict[str, int | None] = field(default_factory=dict)  # name -> exit status after stop()

    def jobs(self) -> list[dict[str, str]]:
        """Every job slurmctld knows of (finished ones stay for MinJobAge), as key=value dicts."""
        out = run(["scontrol", "show", "job", "--details", "--oneliner"]).stdout
        return [parse_oneliner(line) for line in out.splitlines() if line.startswith("JobId=")]

    def log_tail(self, chars: int = 3000) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {path}\n{path.read_text(errors='replace')[-chars:]}")
        return "\n".join(parts)


def parse_oneliner(line: str) -> dict[str, str]:
    """``scontrol show job -o`` output: ``Key=value`` fields separated by spaces; a token
    without ``=`` continues the previous value (values may contain spaces)."""
    fields: dict[str, str] = {}
    key = None
    for token in line.split(" "):
        name, sep, value = token.partition("=")
        if sep and name and name[0].isupper():
            key, fields[name] = name, value
        elif key is not None:
            fields[key] += " " + token
    return {k: v.strip() for k, v in fields.items()}


def run(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=30, **kwargs)


def _start(cluster: Cluster, name: str, cmd: list[str], user: str | None = None) -> None:
    log = open(cluster.root / f"{name}.log", "ab")
    kwargs = {}
    if user:
        entry = pwd.getpwnam(user)
        kwargs = {"user": entry.pw_uid, "group": entry.pw_gid, "extra_groups": []}
    # Own session: a Ctrl-C at the terminal reaches pytest, whose teardown stops these.
    cluster.daemons[name] = subprocess.Popen(
        cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        start_new_session=True, **kwargs,
    )
    log.close()


def _wait(cluster: Cluster, what: str, ready, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for name, proc in cluster.daemons.items():
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited with status {proc.returncode} while waiting for "
                                   f"{what}\n{cluster.log_tail()}")
        if ready():
            return
        time.sleep(0.25)
    raise RuntimeError(f"timed out after {timeout:.0f} s waiting for {what}\n{cluster.log_tail()}")


def stop(cluster: Cluster) -> None:
    """Cancel what is left in the queue, then stop each daemon we started, by PID, newest
    first (slurmd, slurmctld, munged): SIGTERM, then SIGKILL after 15 s."""
    if "slurmctld" in cluster.daemons and cluster.daemons["slurmctld"].poll() is None:
        with contextlib.suppress(Exception):
            run(["scancel", "--partition", cluster.partition])
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline and run(["squeue", "-h", "-o", "%i"]).stdout.strip():
                time.sleep(0.5)
    for name, proc in reversed(list(cluster.daemons.items())):
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=15)
        cluster.stopped[name] = proc.returncode


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@contextlib.contextmanager
def running_cluster(root: Path, gpus: int = 1, cpus: int = 1) -> Iterator[Cluster]:
    """Install if needed, configure a node with ``gpus`` GPUs and at least ``cpus`` CPUs,
    start munged, slurmctld and slurmd, wait until the node is idle; on exit (also on error) stop every daemon started here and remove the config."""
    install()
    root.mkdir(parents=True, exist_ok=True)
    for sub in ("state", "spool"):
        (root / sub).mkdir(exist_ok=True)
    cluster = Cluster(root)
    written: list[Path] = []
    try:
        CONF_DIR.mkdir(parents=True, exist_ok=True)
        for name, text in (
            ("slurm.conf", slurm_conf(root, max(cpus, os.cpu_count() or 1), memory_mb(), gpus)),
            ("gres.conf", gres_conf(gpus)),
        ):
            (CONF_DIR / name).write_text(text)
            written.append(CONF_DIR / name)

        munge_run = Path("/run/munge")
        munge_run.mkdir(parents=True, exist_ok=True)
        munge_user = pwd.getpwnam("munge")
        os.chown(munge_run, munge_user.pw_uid, munge_user.pw_gid)
        _start(cluster, "munged", ["munged", "--foreground"], user="munge")
        _wait(cluster, "munged", lambda: run(["munge", "-n"]).returncode == 0)

        _start(cluster, "slurmctld", ["slurmctld", "-D"])
        _start(cluster, "slurmd", ["slurmd", "-D", "-N", NODE])
        _wait(cluster, f"node {NODE} idle",
              lambda: run(["sinfo", "-h", "-n", NODE, "-o", "%t"]).stdout.strip() == "idle")
        yield cluster
    finally:
        stop(cluster)
        for path in written:
            path.unlink(missing_ok=True)
