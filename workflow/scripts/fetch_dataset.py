"""Rule fetch_dataset: the file a dataset's source downloads (checksum verified), into resources/raw/{dataset}/."""

from transfer_lab import timing  # first: the job's clock starts here (before torch)

# isort: split
import logging
from pathlib import Path

from transfer_lab.files import end_job, log_to
from transfer_lab.sources import get

with log_to(snakemake.log[0]):
    path = get(snakemake.params.source).fetch.download(Path(snakemake.output[0]).parent)
    timing.mark("work")
    logging.info("%s ready (%.1f MB)", path, path.stat().st_size / 1e6)

end_job()  # outputs written: skip Python's slow teardown of torch (transfer_lab.files.end_job)
