"""`snakemake --lint` as a gate: fails on any lint except the per-rule conda/container suggestion.

No conda channel or container registry is reachable where this project is built and tested,
so the pinned pip environment of the README is the documented software stack; every other
lint (absolute paths, missing log: directives, params, ...) fails the check.
"""

import re
import subprocess
import sys

ACCEPTED = "Specify a conda environment or container for each rule."

out = subprocess.run([sys.executable, "-m", "snakemake", "--lint"], capture_output=True, text=True)
text = out.stdout + out.stderr
lints = []
for block in re.split(r"\n(?=Lints for )", text):
    if not block.startswith("Lints for "):
        continue
    where, _, body = block.partition("\n")
    lints += [f"{where} {title}" for title in re.findall(r"^    \* (.*?):?$", body, flags=re.M) if title != ACCEPTED]
if "Lints for " not in text and out.returncode != 0:
    sys.exit(f"snakemake --lint failed:\n{text}")
for lint in lints:
    print(lint)
print(f"snakemake --lint: {len(lints)} lint(s) besides the conda/container suggestion")
sys.exit(1 if lints else 0)
