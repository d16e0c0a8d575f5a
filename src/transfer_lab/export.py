"""One self-contained file per trained (network, head): load it with plain torch, no project code.

The file is a ``torch.export`` program (``.pt2``) of :class:`transfer_lab.predict.Classifier`
(the module ``predict`` itself runs): uint8 RGB (H, W, 3) of any size in, float32 class
probabilities out, with height and width symbolic so the storage resize's weights are
computed in the graph. A JSON record inside the archive (``transfer_lab.json``) holds the
class names, the expected input and where the model came from::

    import json, torch
    extra = {"transfer_lab.json": ""}
    model = torch.export.load("model.pt2", extra_files=extra).module()
    info = json.loads(extra["transfer_lab.json"])
    probabilities = model(torch.from_numpy(rgb_uint8_hwc))   # (n_classes,)
    info["class_names"][int(probabilities.argmax())]

TorchScript is deprecated in this torch; ONNX needs the ``onnx`` package, which the
project does not install.
"""

from __future__ import annotations

import json
import os
import warnings

import torch

from .files import atomic_write
from .predict import Predictor

META_FILE = "transfer_lab.json"
# Symbolic image sides: torch.export specialises sizes 0 and 1, so images are at least 2x2.
MIN_SIDE, MAX_SIDE = 2, 1 << 15


def export_record(predictor: Predictor) -> dict:
    """What a user of the file needs besides the graph: class names, input, provenance."""
    p = predictor.model.preprocess.p
    return {
        "format": "torch.export (load with torch.export.load(path).module())",
        "class_names": list(predictor.class_names),
        "input": {
            "dtype": "uint8", "shape": ["height", "width", 3], "channels": "RGB",
            "min_side": MIN_SIDE, "max_side": MAX_SIDE,
            "note": "one image of any size, decoded and upright (EXIF applied); not normalised",
        },
        "output": {"dtype": "float32", "shape": [len(predictor.class_names)], "what": "softmax probabilities"},
        # The storage step inside the graph; none for a dataset kept as its files (store: files).
        "storage": {"store": "files" if predictor.storage.as_files else "pixels", "size": predictor.storage.size,
                    "fit": predictor.storage.fit},
        "preprocess": {"resize": p.resize, "crop": p.crop, "interpolation": p.interpolation,
                       "mean": list(p.mean), "std": list(p.std)},
        "head": {"file": predictor.head_path, "kind": predictor.head_kind},
        "network_meta": predictor.meta,
        "torch": torch.__version__,
    }


def export_model(predictor: Predictor, path: str | os.PathLike) -> dict:
    """Export ``predictor``'s model (on the CPU, fp32) to ``path``; returns the JSON record."""
    model = predictor.model.to("cpu").eval()
    example = torch.randint(0, 256, (37, 53, 3), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    height = torch.export.Dim("height", min=MIN_SIDE, max=MAX_SIDE)
    width = torch.export.Dim("width", min=MIN_SIDE, max=MAX_SIDE)
    with torch.no_grad():
        program = torch.export.export(
            model, (example,), dynamic_shapes=({0: height, 1: width, 2: torch.export.Dim.STATIC},))
    record = export_record(predictor)
    with atomic_write(path) as f, warnings.catch_warnings():
        # torch warns about constants that share no storage group; every tensor here is on the CPU.
        warnings.filterwarnings("ignore", message="No complete tensor found in the group")
        torch.export.save(program, f, extra_files={META_FILE: json.dumps(record, indent=2)})
    return record


def load_exported(path: str | os.PathLike) -> tuple[torch.nn.Module, dict]:
    """The exported module and its record (what the docstring's snippet does, for tests and users)."""
    extra = {META_FILE: ""}
    program = torch.export.load(os.fspath(path), extra_files=extra)
    return program.module(), json.loads(extra[META_FILE])
