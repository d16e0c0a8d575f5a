"""A whole grid through Snakemake: wall time, and how much of it the jobs' fixed costs take.

Runs ``snakemake --cores N`` in a temporary copy of the workflow (Snakefile, config.yaml,
workflow/, src/, profiles/, as tests/conftest.py's copy_workflow makes it) on a preset
grid or on synthetic datasets, then reads every job's log (``results/logs/<rule>/…log``,
whatever the rule) and Snakemake's benchmark files (``results/benchmarks/<rule>/…tsv``)
and reports, per rule and for the whole run:

- **wall**: the ``snakemake`` call, start to end (parsing and planning included);
- **jobs**: per rule, the jobs Snakemake announced, and how many of them left a timed log;
- **phases** (transfer_lab.timing: every job logs ``time: <phase> <s> s at <epoch>``):
  ``start`` (process start to script start: Python and Snakemake's script preamble),
  ``imports``, ``device``, ``weights``, ``compile``, ``load``, ``first batch``, ``work``,
  and **rest** = the job's ``total`` (process start to the end of its log) minus its
  phases; as the sum over the rule's jobs and per job;
- **outside**: where a rule has benchmark files, their ``s`` (Snakemake's measure of the
  job's shell command) minus the job's logged total: the interpreter's exit and what
  Snakemake does around the script;
- **work**: the sum of every job's ``work`` phase (the part that is not fixed cost);
- **fixed costs as a share of the wall time** = (sum over jobs of ``total - work``) /
  cores / wall (a job whose script marks no ``work`` phase contributes its marked phases
  only; the rest of its time, **unsplit**, is reported beside, with the share it would give
  counted as fixed): the fraction of the run's core-seconds (cores × wall) that jobs spent on
  anything but their work. It counts a job's non-work time once, whatever threads the job
  used, so it is the share of the wall time that would go if every job's fixed cost were
  zero and the jobs still filled every core;
- **no job running**: the wall time minus the union of the jobs' intervals (each job from
  its process start to the end of its log): Snakemake's start-up and planning, and its
  scheduling between jobs, when no job's script was alive;
- **work coverage**: the union of the ``work`` intervals of a rule's jobs (reconstructed
  from the lines' end times) divided by the wall: the share of the wall time in which at
  least one such job was doing its work. For the extraction rules on a GPU this is the
  share of the wall time the GPU was computing (``first batch`` aside); on a CPU, the
  share in which some extraction was running.

Datasets: presets, or ``--dataset name:train=N,test=M,size=S,classes=C`` (repeatable).
Synthetic datasets are written as the ``traffic-pickle`` source (``train.p`` and
``test.p``: uint8 images and labels, the cheapest source to write and to read; validation
is carved from train by ``split.validation_fraction``): each class has its own colour and
a bright square at its own place, plus noise, so that heads learn something.

- ``quickstart``: the repository's config.yaml as it is (digits, 4 networks, 3 heads);
- ``tiny``: the CI smoke grid: one synthetic dataset of 16-px images, EfficientNet-Lite0
  (bundled weights) at 32 px, a logreg head;
- ``suite``: config/transfer-suite.yaml's networks and head, its nine datasets replaced by
  synthetic ones of their real image counts (train with the official validation split,
  test) times ``--scale``, at their storage size (photos 256 px; ``--max-size`` caps it) and
  class counts; networks with random weights (nothing to download; the same compute) unless
  ``--pretrained``.

``--baseline REV`` runs the same grid (same data, same config) with the workflow of git
revision REV (checked out with ``git worktree add`` into a temporary folder, removed
after), after the current one, and prints both and the ratios: a baseline measured in the
same run. A baseline without transfer_lab.timing has no phases: its wall time, jobs and
benchmark files are still compared.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import pickle
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import yaml

REPO = Path(__file__).resolve().parents[1]
PHASES = ("start", "imports", "device", "weights", "compile", "load", "first batch", "work")
LINE = re.compile(r"time: (?P<phase>[a-z][a-z ]*?) (?P<seconds>-?[\d.]+) s at (?P<at>[\d.]+)")

# config/transfer-suite.yaml's datasets: (train incl. an official validation split, test, classes, storage px).
# Torchvision's official splits; EuroSAT has none (27,000 tiles, split.test_fraction 0.2 held out).
SUITE = {
    "cifar10": (50_000, 10_000, 10, 32),
    "cifar100": (50_000, 10_000, 100, 32),
    "food101": (75_750, 25_250, 101, 256),
    "aircraft": (6_667, 3_333, 100, 256),
    "dtd": (3_760, 1_880, 47, 256),
    "pets": (3_680, 3_669, 37, 256),
    "flowers": (2_040, 6_149, 102, 256),
    "stl10": (5_000, 8_000, 10, 96),
    "eurosat": (21_600, 5_400, 10, 64),
}


def parse_dataset(text: str) -> tuple[str, dict]:
    """``name:train=N,test=M,size=S,classes=C`` -> (name, {train, test, size, classes})."""
    name, _, fields = text.partition(":")
    spec = {"train": 200, "test": 100, "size": 32, "classes": 10}
    for field in filter(None, fields.split(",")):
        key, _, value = field.partition("=")
        if key not in spec:
            raise SystemExit(f"--dataset {text}: unknown field {key!r} (train, test, size, classes)")
        spec[key] = int(value)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9]*", name):
        raise SystemExit(f"--dataset {text}: the name must be letters and digits")
    return name, spec


def write_synthetic(root: Path, spec: dict, seed: int) -> None:
    """train.p and test.p of the traffic-pickle source: per class a colour and a bright square, plus noise."""
    rng = np.random.default_rng(seed)
    classes, size = spec["classes"], spec["size"]
    colours = rng.integers(40, 216, size=(classes, 3))
    side = max(1, size // 4)
    corners = rng.integers(0, size - side + 1, size=(classes, 2))
    root.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", spec["train"]), ("test", spec["test"])):
        labels = np.arange(n, dtype=np.int64) % classes  # every class in every split
        rng.shuffle(labels)
        images = np.empty((n, size, size, 3), dtype=np.uint8)
        for start in range(0, n, 1024):  # bounded memory for big grids
            y = labels[start:start + 1024]
            x = colours[y][:, None, None, :] + rng.normal(0, 30, size=(len(y), size, size, 3))
            for i, label in enumerate(y):
                r, c = corners[label]
                x[i, r:r + side, c:c + side] += 80
            images[start:start + len(y)] = np.clip(x, 0, 255)
        with open(root / f"{split}.p", "wb") as f:
            pickle.dump({"features": images, "labels": labels}, f, protocol=4)
    # Without it the source names up to 43 classes after GTSRB's signs (empty ones included).
    (root / "signnames.csv").write_text("ClassId,SignName\n" + "".join(f"{i},class{i}\n" for i in range(classes)))


def select(mapping: dict, override: str | None, what: str) -> dict:
    """``override``: a YAML mapping replacing ``mapping``, or comma-separated names to keep."""
    if not override:
        return mapping
    if override.lstrip().startswith("{"):
        return yaml.safe_load(override)
    names = [n.strip() for n in override.split(",") if n.strip()]
    unknown = [n for n in names if n not in mapping]
    if unknown:
        raise SystemExit(f"--{what}: {', '.join(unknown)} not in the preset's {', '.join(mapping)}")
    return {n: mapping[n] for n in names}


def grid_config(args, data: Path) -> tuple[dict, dict]:
    """The run's config, and the synthetic datasets to write (name -> spec)."""
    config = yaml.safe_load((REPO / "config.yaml").read_text())
    synthetic: dict[str, dict] = {}
    if args.preset == "tiny":
        config["networks"] = {"lite0": {"arch": "timm:tf_efficientnet_lite0", "weights": "bundled", "input_size": 32}}
        config["heads"] = {"logreg": {"kind": "logreg"}}
        config["extract"] = {**config["extract"], "batch_size": 64}
        synthetic = {"synth": {"train": 160, "test": 80, "size": 16, "classes": 4}}
    elif args.preset == "suite":
        suite = yaml.safe_load((REPO / "config/transfer-suite.yaml").read_text())
        config = {k: v for k, v in suite.items() if k != "datasets"}
        if not args.pretrained:
            config["networks"] = {n: {**spec, "weights": "random"} for n, spec in suite["networks"].items()}
        for name, (train, test, classes, size) in SUITE.items():
            # At least 4 images a class in train (validation is carved from it) and 1 in test.
            synthetic[name] = {"train": max(round(train * args.scale), 4 * classes),
                               "test": max(round(test * args.scale), classes),
                               "size": min(size, args.max_size), "classes": classes}
    elif args.preset == "quickstart":
        pass
    if args.preset != "quickstart" or args.dataset:
        config["datasets"] = {}
    for text in args.dataset:
        name, spec = parse_dataset(text)
        synthetic[name] = spec
    for name, spec in synthetic.items():
        config["datasets"][name] = {"source": "traffic-pickle", "root": str(data / name), "image_size": spec["size"]}
    config["networks"] = select(config["networks"], args.networks, "networks")
    config["heads"] = select(config["heads"], args.heads, "heads")
    if config.get("predict"):  # the rule a user runs by hand: on the grid's first (network, dataset, head)
        config["predict"] = {**config["predict"], "network": next(iter(config["networks"])),
                             "dataset": next(iter(config["datasets"])), "head": next(iter(config["heads"]))}
    if args.device:
        config["extract"] = {**config.get("extract", {}), "device": args.device}
    return config, synthetic


def copy_workflow(source: Path, dest: Path) -> Path:
    """The workflow and its library, as tests/conftest.py's copy_workflow copies them."""
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source / "Snakefile", dest / "Snakefile")
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info")
    for name in ("workflow", "src", "profiles"):
        shutil.copytree(source / name, dest / name, ignore=ignore)
    return dest


def run_grid(source: Path, workdir: Path, config: dict, cores: int, extra: list[str]) -> dict:
    """Snakemake on ``config`` in a copy of the workflow at ``source``; the measured run."""
    copy_workflow(source, workdir)
    (workdir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    # The copied library first; what PYTHONPATH held already (a wheelhouse's --target folder) after it.
    path = os.pathsep.join(filter(None, [str(workdir / "src"), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path, "PYTHONDONTWRITEBYTECODE": "1"}
    command = [sys.executable, "-m", "snakemake", "--cores", str(cores), "--nocolor", *extra]
    # Untimed: a dry run first, which fills the architecture catalog's cache on a new
    # environment (benchmarks/dry_run.py: 12 s once), so the wall time is a run's, not an install's.
    subprocess.run([*command, "-n"], cwd=workdir, env=env, capture_output=True, text=True)
    began = time.time()
    proc = subprocess.run(command, cwd=workdir, env=env, capture_output=True, text=True)
    ended = time.time()
    output = proc.stdout + proc.stderr
    if proc.returncode != 0:
        raise SystemExit(f"snakemake failed in {workdir} ({proc.returncode}):\n{output[-6000:]}")
    jobs = Counter(re.findall(r"^\s*(?:local)?(?:rule|checkpoint) (\w+):", output, flags=re.M))
    jobs.pop("all", None)
    return {"began": began, "ended": ended, "wall": ended - began, "jobs": jobs, **read_run(workdir)}


def read_run(workdir: Path) -> dict:
    """Every job's phases from its log, and the benchmark files' seconds, by rule."""
    logs: dict[str, list[dict]] = defaultdict(list)
    for path in sorted((workdir / "results/logs").glob("*/**/*.log")) + sorted(
            (workdir / "results/logs").glob("*.log")):
        rel = path.relative_to(workdir / "results/logs")
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem  # results/logs/compare.log: rule compare
        text = path.read_text(errors="replace")
        lines = [(m["phase"], float(m["seconds"]), float(m["at"])) for m in LINE.finditer(text)]
        job = {"log": str(path.relative_to(workdir)), "phases": defaultdict(float), "work_intervals": []}
        for phase, seconds, at in lines:
            if phase == "total":
                job["total"] = seconds
                job["end"] = at
            else:
                job["phases"][phase] += seconds
                if phase == "work":
                    job["work_intervals"].append((at - seconds, at))
        if "total" not in job:  # a log without timing.end: the old "done in" line, if any
            done = re.search(r"done in ([\d.]+) s", text)
            job["total"] = float(done.group(1)) if done else None
        logs[rule].append(job)
    benchmarks: dict[str, list[float]] = defaultdict(list)
    for path in sorted((workdir / "results/benchmarks").glob("*/**/*.tsv")) + sorted(
            (workdir / "results/benchmarks").glob("*.tsv")):
        rel = path.relative_to(workdir / "results/benchmarks")
        rule = rel.parts[0] if len(rel.parts) > 1 else rel.stem
        with open(path, newline="") as f:
            for row in csv.DictReader(f, delimiter="\t"):
                benchmarks[rule].append(float(row["s"]))
    return {"logs": logs, "benchmarks": benchmarks}


def union(intervals: list[tuple[float, float]]) -> float:
    """The length of the union of intervals."""
    covered, reach = 0.0, float("-inf")
    for start, end in sorted(intervals):
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    return covered


def summarise(run: dict, cores: int) -> dict:
    """The report's numbers from one run (see the module docstring for each definition)."""
    rules = {}
    fixed = work = 0.0
    untimed = 0
    unsplit_all = 0.0
    for rule in sorted(set(run["jobs"]) | set(run["logs"])):
        jobs = [j for j in run["logs"].get(rule, []) if j["total"] is not None]
        timed = [j for j in jobs if j["phases"]]
        # A log without phases (a baseline before transfer_lab.timing) has its total alone.
        sums = {p: sum(j["phases"].get(p, 0.0) for j in timed) if timed else None for p in PHASES}
        total = sum(j["total"] for j in jobs)
        rest = sum(j["total"] - sum(j["phases"].values()) for j in timed) if timed else None
        # A job whose script marks no `work` (its rule's script not instrumented yet): what
        # follows its marked phases is not split into fixed cost and work.
        unsplit = sum(j["total"] - sum(j["phases"].values()) for j in timed if "work" not in j["phases"])
        bench = run["benchmarks"].get(rule, [])
        rules[rule] = {
            "jobs": run["jobs"].get(rule, 0), "logs": len(run["logs"].get(rule, [])), "timed": len(timed),
            "with_total": len(jobs), "total": total, **sums, "rest": rest, "unsplit": unsplit,
            "benchmark_s": sum(bench) if bench else None,
            "outside": sum(bench) - total if bench and len(bench) == len(jobs) else None,
            "work_coverage": union([i for j in timed for i in j["work_intervals"]]) / run["wall"],
        }
        fixed += sum(j["total"] - j["phases"].get("work", 0.0) for j in timed) - unsplit
        work += sums["work"] or 0.0
        untimed += len(jobs) - len(timed)
        unsplit_all += unsplit
    extraction = [i for rule, js in run["logs"].items() if rule.startswith("extract") for j in js
                  for i in j["work_intervals"]]
    alive = [(j["end"] - j["total"], j["end"]) for js in run["logs"].values() for j in js if "end" in j]
    timed = not untimed  # every log has its phases: the sums over jobs mean something
    return {
        "wall": run["wall"], "cores": cores, "jobs": sum(run["jobs"].values()), "untimed": untimed,
        "work": work if timed else None, "fixed": fixed if timed else None,
        "fixed_share": fixed / cores / run["wall"] if timed else None,
        "unsplit": unsplit_all if timed else None,
        "fixed_share_max": (fixed + unsplit_all) / cores / run["wall"] if timed else None,
        "no_job": run["wall"] - union(alive) if timed else None,
        "extraction_work_coverage": union(extraction) / run["wall"], "rules": rules,
    }


def print_report(label: str, s: dict, gpu: bool) -> None:
    print(f"== {label}")
    print(f"wall {s['wall']:.1f} s on {s['cores']} cores, {s['jobs']} jobs")
    if s["untimed"]:
        print(f"{s['untimed']} job logs without phases (a workflow before transfer_lab.timing): their total is "
              "log_to's entry to exit, and no sums over phases are made")
    else:
        print(f"work {s['work']:.1f} s summed over jobs; fixed costs {s['fixed']:.1f} s summed")
        print(f"fixed costs as a share of the wall time {s['fixed_share']:.2f}   (sum of non-work time / cores / wall)")
        if s["unsplit"]:
            print(f"  at least: {s['unsplit']:.1f} s of jobs whose script marks no work phase are not split into "
                  f"fixed cost and work (rule {', '.join(r for r, v in s['rules'].items() if v['unsplit'])}); "
                  f"counted as fixed, the share would be {s['fixed_share_max']:.2f}")
        what = "GPU computing (extraction work, union)" if gpu else "extraction work (union of its intervals)"
        print(f"{what} {s['extraction_work_coverage']:.2f} of the wall time")
        print(f"no job running {s['no_job']:.1f} s of the wall time   (Snakemake's start-up, planning, "
              "scheduling between jobs)")
    names = ("total", *PHASES, "rest", "outside")
    head = f"{'rule':<18} {'jobs':>4} {'logs':>4}  {'':<8}" + "".join(f"{n:>12}" for n in names) + f"{'cover':>7}"
    print(head)
    for rule, r in s["rules"].items():
        n = max(r["with_total"], 1)
        for kind, div in (("sum s", 1), ("per job", n)):
            cells = "".join(f"{'':>12}" if r[k] is None else f"{r[k] / div:12.2f}" for k in names)
            count = (f"{r['jobs']:>4} {r['logs']:>4}" if kind == "sum s" else f"{'':>4} {'':>4}")
            cover = f"{r['work_coverage']:7.2f}" if kind == "sum s" else ""
            print(f"{rule if kind == 'sum s' else '':<18} {count}  {kind:<8}{cells}{cover}".replace(" -0.00", "  0.00"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", nargs="?", choices=("quickstart", "tiny", "suite"),
                        help="the grid (none: only the --dataset ones, with the quickstart's networks and heads)")
    parser.add_argument("--dataset", action="append", default=[], metavar="NAME:train=N,test=M,size=S,classes=C",
                        help="a synthetic dataset (repeatable); with a preset, replaces its datasets")
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--networks", help="comma-separated names of the preset's networks, or a YAML mapping")
    parser.add_argument("--heads", help="comma-separated names of the preset's heads, or a YAML mapping")
    parser.add_argument("--device", help="extract.device (default: the preset's)")
    parser.add_argument("--scale", type=float, default=0.02, help="suite: image counts times this (default 0.02)")
    parser.add_argument("--max-size", type=int, default=256, help="suite: cap on the storage size in pixels")
    parser.add_argument("--pretrained", action="store_true",
                        help="suite: the networks' own weights (fetched: needs a network or a filled cache)")
    parser.add_argument("--keep", type=Path, help="keep the run folders here (else a temporary folder)")
    parser.add_argument("--json", type=Path, help="write the numbers here")
    parser.add_argument("--baseline", metavar="REV", help="also run the workflow of git revision REV, after")
    args = parser.parse_args()
    if not args.preset and not args.dataset:
        parser.error("give a preset or at least one --dataset")

    top = Path(tempfile.mkdtemp(prefix="grid-")) if args.keep is None else args.keep.resolve()
    top.mkdir(parents=True, exist_ok=True)
    try:
        config, synthetic = grid_config(args, top / "data")
        for i, (name, spec) in enumerate(synthetic.items()):
            write_synthetic(top / "data" / name, spec, seed=i)
        gpu = subprocess.run([sys.executable, "-c", "import torch; print(torch.cuda.is_available())"],
                             capture_output=True, text=True).stdout.strip() == "True"
        load = os.getloadavg()
        print(f"grid: {len(config['networks'])} networks x {len(config['datasets'])} datasets, "
              f"{len(config['heads'])} heads; {args.cores} cores; load average before {load[0]:.2f} "
              f"{load[1]:.2f} {load[2]:.2f}; GPU {'yes' if gpu else 'no'}")
        for name, spec in synthetic.items():
            print(f"  {name}: train {spec['train']}, test {spec['test']}, {spec['size']} px, {spec['classes']} classes")
        runs = {"current": summarise(run_grid(REPO, top / "current", config, args.cores, []), args.cores)}
        print_report(f"this workflow ({REPO})", runs["current"], gpu)
        if args.baseline:
            base = top / "baseline-src"
            subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(base), args.baseline],
                           check=True, capture_output=True)
            try:
                runs["baseline"] = summarise(run_grid(base, top / "baseline", config, args.cores, []), args.cores)
            finally:
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(base)], check=True)
            print_report(f"baseline {args.baseline}", runs["baseline"], gpu)
            cur, old = runs["current"], runs["baseline"]
            print(f"ratio wall baseline/current {old['wall'] / cur['wall']:.2f}   "
                  f"(jobs {old['jobs']} and {cur['jobs']})")
            if old["fixed"] and cur["fixed"]:
                print(f"ratio fixed costs baseline/current {old['fixed'] / cur['fixed']:.2f}")
        if args.json:
            args.json.write_text(json.dumps({"config": config, "synthetic": synthetic, "gpu": gpu,
                                             "load_before": load, "runs": runs}, indent=2))
    finally:
        if args.keep is None:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
