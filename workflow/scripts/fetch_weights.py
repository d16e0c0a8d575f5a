"""Rule fetch_weights: pretrained weights -> resources/weights/<path> (checkpoints/<official name>,
timm/<arch>.<tag>/model.safetensors), from the user's torch hub or Hugging Face cache, else downloaded."""

from transfer_lab import timing  # first: the job's clock starts here (before torch)

# isort: split
import logging

from transfer_lab.files import end_job, log_to
from transfer_lab.networks import fetch_weights
from transfer_lab.specs import WEIGHTS_DIR, WeightsFile

with log_to(snakemake.log[0]):
    path = fetch_weights(WeightsFile(**snakemake.params.source), WEIGHTS_DIR)
    timing.mark("work")
    logging.info("%s ready (%.1f MB)", path, path.stat().st_size / 1e6)

end_job()  # outputs written: skip Python's slow teardown of torch (transfer_lab.files.end_job)
