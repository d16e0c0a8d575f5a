"""Rule fetch_dataset: the official CIFAR-10 tarball, checksum verified, into resources/raw/{dataset}/."""

import logging
from pathlib import Path

from transfer_lab.files import log_to
from transfer_lab.sources import fetch_cifar10

with log_to(snakemake.log[0]):
    path = fetch_cifar10(Path(snakemake.output[0]).parent)
    logging.info("%s ready (%.1f MB)", path, path.stat().st_size / 1e6)
