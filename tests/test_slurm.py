"""profiles/slurm: what it requests (dry run), and a run through a real one-node SLURM.

The real run needs root: it installs Debian's SLURM packages when missing, writes
/etc/slurm/slurm.conf and starts munged, slurmctld and slurmd (tests/slurm_cluster.py),
and stops every daemon it started, by PID, when the module's tests end, failed or not.
Most of its time is Snakemake starting twice inside every SLURM job (torch imports) and the
plugin's status polling, whose interval grows by 10 s while no job finishes.
"""

import json
import os
import re
import shutil
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pandas as pd
import pytest
import slurm_cluster
import yaml
from conftest import REPO, copy_workflow, snakemake, write_config

# The quickstart, trimmed: one network at a small input, one head.
SMALL = {
    "networks": {
        "lite0": {"arch": "timm:tf_efficientnet_lite0", "weights": "bundled", "input_size": 32},
    },
    "datasets": {"digits": {"source": "digits"}},
    "split": {"validation_fraction": 0.2, "test_fraction": 0.2, "seed": 0},
    "heads": {"linear": {"kind": "linear", "epochs": 20}},
    "extract": {"batch_size": 256, "threads": 1},
}
# On SLURM the dataset is extracted in 3 parts (extract.parts), gathered by its
# extract_features job; the local reference run extracts it in one.
# Shards of one batch: the parts batch the images exactly as the one-part local run does.
PARTS = {"extract": {**SMALL["extract"], "shard_size": 256, "parts": 3}}
# Two heads and one shot count: their 4 jobs share one submission, the group job of
# (lite0, digits), which Snakemake names after the group and its rules.
HEADS = {"heads": {**SMALL["heads"], "logreg": {"kind": "logreg"}}, "evaluation": {"shots": [5]}}
HEADS_GROUP = "heads_lite0_digits_train_head_train_shots"
RUN_JOBS = {"prepare_dataset": 1, "extract_part": 3, "extract_features": 1, "train_head": 2, "train_shots": 2,
            "compare": 1}
SLURM_JOBS = {"prepare_dataset": 1, "extract_part": 3, "extract_features": 1, HEADS_GROUP: 1, "compare": 1}
GPU_RULES = {"extract_features", "extract_features_without_test", "extract_part", "finetune", "screen_candidate",
             "screen_survivor"}


def dry_run_jobs(output: str) -> list[dict]:
    """Per job of a dry run: its rule, resources, wildcards and the group job it is in (None
    outside one). A group job is printed as a line "Group job NAME (...):" followed by its
    jobs, indented."""
    jobs, group = [], None
    for line in output.splitlines():
        if match := re.match(r"^\[[^\]]*\] Group job (\S+) ", line):
            group = match.group(1)
        elif re.match(r"^\[[^\]]*\]$", line):
            group = None  # an ungrouped job's header
        elif match := re.match(r"^\s*(?:local)?(?:rule|checkpoint) (\w+):$", line):
            jobs.append({"rule": match.group(1), "resources": {}, "wildcards": {}, "group": group})
        elif jobs and (match := re.match(r"^\s+(resources|wildcards): (.*)$", line)):
            jobs[-1][match.group(1)] = dict(item.split("=", 1) for item in match.group(2).split(", "))
    return [job for job in jobs if job["rule"] != "all"]


def group_jobs(output: str) -> list[str]:
    """The names of the group jobs a run announces (a dry run prints each once; a real run
    announces each group job once, when it submits it)."""
    return re.findall(r"^\[[^\]]*\] Group job (\S+) ", output, flags=re.M)


HEAD_RULES = {"train_head", "train_shots"}


@pytest.mark.integration
def test_dry_run_requests_one_gpu_per_extraction_job_and_none_for_cpu_rules(tmp_path):
    """The profile as shipped, on a grid with both fetch rules and fine-tuning: nothing
    needs a cluster. The heads and shots of each (network, dataset) are one group job (one
    submission), and nothing else is grouped."""
    workdir = copy_workflow(tmp_path / "wd")
    networks = {**SMALL["networks"], "resnet": {"arch": "resnet18", "weights": "DEFAULT"}}
    datasets = {**SMALL["datasets"], "cifar10": {"source": "cifar10", "download": True},
                "untested": {"source": "digits", "split": {"test_fraction": 0}}}  # extract_features_without_test
    write_config(workdir, {
        **SMALL,
        "networks": networks,
        "datasets": datasets,
        "heads": {**SMALL["heads"], "logreg": {"kind": "logreg"}},
        "evaluation": {"shots": [5, 10]},
        "finetune": {"networks": ["lite0"], "datasets": ["digits"]},
    })
    run = snakemake(workdir, "-n", "--profile", str(REPO / "profiles/slurm"))
    assert "Using profiles" in run.output and "profiles/slurm" in run.output
    jobs = dry_run_jobs(run.output)
    assert Counter(job["rule"] for job in jobs) == {
        "fetch_dataset": 1, "fetch_weights": 1, "prepare_dataset": 3, "extract_features": 4,
        "extract_features_without_test": 2, "train_head": 12, "train_shots": 24, "finetune": 1, "compare": 1,
    }
    for job in jobs:
        rule, resources = job["rule"], job["resources"]
        if rule in GPU_RULES:
            assert resources.get("gpu") == "1", resources
            assert "gres" not in resources, resources
        else:
            assert "gpu" not in resources and "gres" not in resources, (rule, resources)
        assert int(resources["runtime"]) > 0 and int(resources["mem_mb"]) > 0, (rule, resources)
        # Only heads and shots are grouped: each in the group of its (network, dataset).
        wildcards = job["wildcards"]
        expected = f"heads_{wildcards['network']}_{wildcards['dataset']}" if rule in HEAD_RULES else None
        assert job["group"] == expected, job
        if rule in HEAD_RULES:
            assert resources["heads_at_once"] == "1", job
    # One group job per (network, dataset), each with all 2 heads and 2 x 2 shots of its pair.
    pairs = [(n, d) for n in networks for d in datasets]
    assert sorted(group_jobs(run.output)) == sorted(f"heads_{n}_{d}" for n, d in pairs)
    members = Counter((job["group"], job["rule"]) for job in jobs if job["group"])
    assert members == {
        **{(f"heads_{n}_{d}", "train_head"): 2 for n, d in pairs},
        **{(f"heads_{n}_{d}", "train_shots"): 4 for n, d in pairs},
    }

    # Without group-components each job would be its own group job: they share no edge, so
    # the profile's pooling is what makes one submission of them.
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    del profile["group-components"]
    unpooled = tmp_path / "unpooled"
    unpooled.mkdir()
    (unpooled / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    run = snakemake(workdir, "-n", "--profile", str(unpooled))
    assert len(group_jobs(run.output)) == 12 + 24

    # A local run (no cluster profile) groups nothing: the same jobs, one by one.
    run = snakemake(workdir, "-n")
    assert not group_jobs(run.output)
    assert Counter(job["rule"] for job in dry_run_jobs(run.output)) == Counter(job["rule"] for job in jobs)
    assert all(job["group"] is None for job in dry_run_jobs(run.output))


@pytest.mark.parametrize("present, visible, expected", [
    (0, None, "cpus"), (1, None, 1), (4, None, 4), (4, "1,3", 2), (4, "", "cpus"), (4, "0,-1,2", 1), (1, "0,1", 1),
])
def test_default_profile_allows_one_gpu_job_per_gpu_this_machine_shows(monkeypatch, tmp_path, present, visible,
                                                                        expected):
    """profiles/default is a YTE template: its GPU limit is computed when Snakemake reads it,
    from the machine's /dev/nvidiaN devices and CUDA_VISIBLE_DEVICES, without importing torch."""
    from snakemake.profiles import ProfileConfigFileParser

    from transfer_lab import devices

    for name in [f"nvidia{i}" for i in range(present)] + ["nvidiactl", "nvidia-uvm"]:
        (tmp_path / name).touch()
    monkeypatch.setattr(devices.gpu_count, "__defaults__", (tmp_path, None))
    if visible is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    with open(REPO / "profiles/default/config.yaml") as f:
        args = ProfileConfigFileParser().parse(f)
    # No GPU: extraction runs on the CPU, limited by --cores and its threads alone.
    expected = os.cpu_count() if expected == "cpus" else expected
    assert args["resources"] == [f"gpu={expected}", "heads_at_once=1"]
    # Local scope: a cluster's GPU jobs are not capped by the submitting machine's count, and
    # heads_at_once shapes each group job of profiles/slurm without counting across them.
    assert args["set-resource-scopes"] == ["gpu=local", "heads_at_once=local"]


def test_profile_declares_one_gpu_for_every_gpu_rule_and_fetch_rules_are_local():
    """A dry run cannot show which jobs are local (the dry-run executor is local), so the
    declarations are read instead."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    assert profile["executor"] == "slurm"
    requested = {rule for rule, res in profile["set-resources"].items() if res.get("gpu") == 1}
    assert requested == GPU_RULES
    declared = set()
    for smk in (REPO / "workflow/rules").glob("*.smk"):
        for block in re.findall(r"^localrules:\n((?:[ \t]+\w+,?\n)+)", smk.read_text(), flags=re.M):
            declared |= set(re.findall(r"\w+", block))
    assert {"fetch_dataset", "fetch_weights"} <= declared


def test_profile_says_what_every_rule_of_the_workflow_requests():
    """The profile's comment table names every rule once; what it says matches its settings."""
    text = (REPO / "profiles/slurm/config.yaml").read_text()
    table = re.findall(r"^#   ([\w, ]+?)  +(.*)$", text.split("# Per rule.", 1)[1], flags=re.M)
    said = {rule.strip(): what for rules, what in table for rule in rules.split(",")}
    rules = set()
    for smk in [REPO / "Snakefile", *(REPO / "workflow/rules").glob("*.smk")]:
        rules |= set(re.findall(r"^(?:rule|checkpoint|use rule \w+ as) (\w+)", smk.read_text(), flags=re.M))
    assert set(said) == rules - {"all"}
    profile = yaml.safe_load(text)["set-resources"]
    for rule, what in said.items():
        gpus = profile.get(rule, {}).get("gpu", 0)
        assert ("GPU" in what) == (gpus == 1), (rule, what, gpus)
        assert ("local rule" in what) == (rule in {"fetch_dataset", "fetch_weights", "export"}), rule


def ci_profile(dest: Path, gres: str | None = None) -> Path:
    """profiles/slurm with what this one-node cluster needs, its GPU requests untouched:
    small memory and time limits, squeue for status (no accounting database), fast polling,
    no account, and the plugin's per-job logs kept as evidence. ``gres``: switch the GPU
    rules to the gres: style, as the profile's comments say."""
    profile = yaml.safe_load((REPO / "profiles/slurm/config.yaml").read_text())
    if gres:
        for rule in GPU_RULES:
            profile["set-resources"][rule].update(gpu=0, gres=gres)
    for resources in [profile["default-resources"], *profile["set-resources"].values()]:
        for key, value in {"mem_mb": 1000, "runtime": 30}.items():
            if key in resources:
                resources[key] = value
    profile.update({
        "latency-wait": 5,
        "slurm-status-command": "squeue",
        "slurm-init-seconds-before-status-checks": 2,
        "seconds-between-status-checks": 1,
        "slurm-no-account": True,
        "slurm-keep-successful-logs": True,
    })
    dest.mkdir(parents=True)
    (dest / "config.yaml").write_text(yaml.safe_dump(profile, sort_keys=False))
    return dest


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    reason = slurm_cluster.unavailable()
    if reason:
        pytest.skip(reason)
    # Three GPUs, so the three extraction jobs can run at once, each on its own.
    root = tmp_path_factory.mktemp("slurm-cluster")
    with slurm_cluster.running_cluster(root, gpus=3, cpus=4) as running:
        yield running
    # Every daemon started is stopped, and gone.
    assert set(running.stopped) == {"munged", "slurmctld", "slurmd"}
    alive = [name for name, proc in running.daemons.items() if slurm_cluster.pid_alive(proc.pid)]
    assert not alive, f"still running after stop: {alive}"


def rule_of(comment: str) -> str:
    """The plugin tags each job with the comment rule_<name>[_wildcards_<values>]; a group
    job's name is its group's and its rules' (heads_lite0_digits_train_head_train_shots)."""
    match = re.fullmatch(r"rule_(\w+?)(?:_wildcards_.*)?", comment)
    assert match, f"not a Snakemake job comment: {comment!r}"
    return match.group(1)


@pytest.mark.integration
def test_grid_runs_through_sbatch_and_matches_a_local_run(cluster, tmp_path):
    on_slurm = copy_workflow(tmp_path / "slurm")
    write_config(on_slurm, {**SMALL, **HEADS, **PARTS})
    local = copy_workflow(tmp_path / "local")
    write_config(local, {**SMALL, **HEADS})
    # The local reference runs while the SLURM run mostly waits on the queue.
    with ThreadPoolExecutor(1) as pool:
        local_run = pool.submit(snakemake, local)
        run = snakemake(on_slurm, "--profile", str(ci_profile(tmp_path / "ci-profile")), check=False)
        local_run.result()
    if run.returncode:
        pytest.fail(f"snakemake on SLURM failed ({run.returncode}):\n{run.output[-5000:]}\n{cluster.log_tail()}")
    assert run.jobs == RUN_JOBS
    assert group_jobs(run.output) == ["heads_lite0_digits"]

    # Every job went through sbatch: slurmctld's record of the jobs run from this folder. The
    # 4 head and shot jobs were one submission.
    jobs = [j for j in cluster.jobs() if j.get("WorkDir") == str(on_slurm)]
    assert Counter(rule_of(j["Comment"]) for j in jobs) == SLURM_JOBS, jobs
    assert len(jobs) == sum(RUN_JOBS.values()) - 3
    # The plugin runs a group's jobs one after another: the group asked for one head job's CPU
    # and memory, and for the 4 jobs' runtimes together (30 min each in the CI profile).
    [group] = [j for j in jobs if rule_of(j["Comment"]) == HEADS_GROUP]
    assert (group["NumCPUs"], group["MinMemoryNode"], group["TimeLimit"]) == ("1", "1000M", "02:00:00"), group
    # It started once the features it needed were written.
    assert group["StartTime"] >= max(j["EndTime"] for j in jobs if rule_of(j["Comment"]) == "extract_features")
    for job in jobs:
        rule = rule_of(job["Comment"])
        assert job["JobState"] == "COMPLETED" and job["ExitCode"] == "0:0", job
        # SLURM allocated one GPU to each extraction job (asked with --gpus=1), none to the
        # CPU rules.
        assert job["JOB_GRES"] == ("gpu:1" if rule in GPU_RULES else "(null)"), (rule, job)
        assert job.get("TresPerJob") == ("gres:gpu:1" if rule in GPU_RULES else None), (rule, job)
    # profiles/default allows as many GPU jobs at once as this machine has GPUs (one on CI), yet
    # extraction jobs ran at the same time on the cluster: gpu is a local-scope resource.
    extract = [(j["StartTime"], j["EndTime"]) for j in jobs if rule_of(j["Comment"]).startswith("extract_")]
    assert any(s2 < e1 and s1 < e2 for i, (s1, e1) in enumerate(extract) for s2, e2 in extract[i + 1:]), extract
    # The three parts of the dataset, each its own sbatch job with its own GPU, ran at the same
    # time (how many at once is SLURM's call: the node has two CPUs, so all three together is
    # not guaranteed).
    parts = [(j["StartTime"], j["EndTime"]) for j in jobs if rule_of(j["Comment"]) == "extract_part"]
    assert len(parts) == 3 and any(s2 < e1 and s1 < e2 for i, (s1, e1) in enumerate(parts)
                                   for s2, e2 in parts[i + 1:]), parts
    # The plugin's per-job logs (kept by the CI profile) name the same job ids.
    logs = {p.stem for p in (on_slurm / ".snakemake/slurm_logs").rglob("*.log")}
    assert logs == {j["JobId"] for j in jobs}

    pickles = sorted(p.relative_to(local) for p in (local / "results/bottleneck").glob("*.p"))
    assert len(pickles) == 3
    for path in pickles:
        assert (on_slurm / path).read_bytes() == (local / path).read_bytes(), path
    results = sorted([*(local / "results/heads").glob("*.json"), *(local / "results/shots").glob("*.json")])
    assert len(results) == 4
    for path in results:
        ours, theirs = (json.loads(p.read_text()) for p in (on_slurm / path.relative_to(local), path))
        assert ours["accuracy"] == theirs["accuracy"], path.name
    columns = ["network", "head", "validation_accuracy", "test_accuracy", "n_train", "n_test"]
    pd.testing.assert_frame_equal(
        pd.read_csv(on_slurm / "results/comparison.csv")[columns],
        pd.read_csv(local / "results/comparison.csv")[columns],
    )


@pytest.mark.integration
def test_gres_style_requests_the_gpu_with_gres(cluster, tmp_path):
    """The profile's gres: alternative (gpu: 0, gres: "gpu:1") reaches sbatch as --gres.
    A one-rule workflow named like the real one keeps this quick (no torch start-up)."""
    workdir = tmp_path / "wd"
    workdir.mkdir()
    (workdir / "Snakefile").write_text(
        'rule extract_features:\n'
        '    output: "visible.txt"\n'
        '    resources: gpu=1\n'
        '    shell: "echo $CUDA_VISIBLE_DEVICES > {output}"\n'
    )
    profile = ci_profile(tmp_path / "ci-profile", gres="gpu:1")
    run = snakemake(workdir, "--profile", str(profile), "--verbose", check=False)
    if run.returncode:
        pytest.fail(f"snakemake on SLURM failed ({run.returncode}):\n{run.output[-5000:]}\n{cluster.log_tail()}")
    assert re.search(r"sbatch call: sbatch .* --gres=gpu:1 ", run.output), run.output[-3000:]
    assert "--gpus" not in run.output
    [job] = [j for j in cluster.jobs() if j.get("WorkDir") == str(workdir)]
    assert job["JobState"] == "COMPLETED" and job["JOB_GRES"] == "gpu:1", job
    assert job.get("TresPerNode") == "gres:gpu:1", job
    # SLURM hands the job its GPU the way real clusters do.
    assert (workdir / "visible.txt").read_text().strip().isdigit()


@pytest.mark.integration
def test_heads_of_a_pair_are_one_submission_that_waits_only_for_its_own_features(cluster, tmp_path):
    """The profile's grouping on a workflow named like the real one (no torch: quick): two
    (network, dataset) pairs, one of whose features take a minute longer. Each pair's three heads
    run in one sbatch job, submitted as soon as its own features exist."""
    workdir = tmp_path / "wd"
    workdir.mkdir()
    shutil.copytree(REPO / "profiles/default", workdir / "profiles/default")  # heads_at_once: 1
    (workdir / "Snakefile").write_text(
        'rule all:\n'
        '    input: expand("heads/{network}_digits_{head}.txt", network=["fast", "slow"], head=["a", "b", "c"])\n'
        'rule extract_features:\n'
        '    output: "features/{network}_{dataset}.txt"\n'
        '    params: wait=lambda w: 1 if w.network == "fast" else 60\n'
        '    shell: "sleep {params.wait}; touch {output}"\n'
        'rule train_head:\n'
        '    input: "features/{network}_{dataset}.txt"\n'
        '    output: "heads/{network}_{dataset}_{head}.txt"\n'
        '    shell: "echo $SLURM_JOB_ID > {output}"\n'
    )
    run = snakemake(workdir, "--profile", str(ci_profile(tmp_path / "ci-profile")), check=False)
    if run.returncode:
        pytest.fail(f"snakemake on SLURM failed ({run.returncode}):\n{run.output[-5000:]}\n{cluster.log_tail()}")
    assert sorted(group_jobs(run.output)) == ["heads_fast_digits", "heads_slow_digits"]
    records = [j for j in cluster.jobs() if j.get("WorkDir") == str(workdir)]
    assert sorted(rule_of(j["Comment"]) for j in records) == [
        "extract_features", "extract_features", "heads_fast_digits_train_head", "heads_slow_digits_train_head"]
    for network in ("fast", "slow"):
        [group] = [j for j in records if rule_of(j["Comment"]) == f"heads_{network}_digits_train_head"]
        # The three heads ran inside that one SLURM job, which asked for one CPU and their
        # three runtimes (30 min each in the CI profile).
        ran_in = {(workdir / f"heads/{network}_digits_{h}.txt").read_text().strip() for h in "abc"}
        assert ran_in == {group["JobId"]}, ran_in
        assert (group["NumCPUs"], group["TimeLimit"]) == ("1", "01:30:00"), group
    # The fast pair's heads did not wait for the slow pair's features.
    [fast] = [j for j in records if rule_of(j["Comment"]) == "heads_fast_digits_train_head"]
    [slow_features] = [j for j in records if j["Comment"] == "rule_extract_features_wildcards_slow_digits"]
    assert fast["StartTime"] < slow_features["EndTime"], (fast, slow_features)
