"""Rule fetch_weights: a torchvision checkpoint -> resources/weights/checkpoints/<official name>."""

import logging
from pathlib import Path

from transfer_lab.files import log_to
from transfer_lab.networks import fetch_checkpoint

with log_to(snakemake.log[0]):
    folder = Path(snakemake.output[0]).parent.parent
    path = fetch_checkpoint(snakemake.params.url, folder)
    logging.info("%s ready (%.1f MB)", path, path.stat().st_size / 1e6)
