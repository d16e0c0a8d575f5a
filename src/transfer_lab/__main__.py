"""Command line: ``python -m transfer_lab predict|export`` (or the ``transfer-lab`` script).

Run it from the workflow folder: the head file says which network and dataset it was
trained on, and ``config.yaml`` there says how that dataset's images were stored.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

EXAMPLES = """\
examples:
  transfer-lab predict --head results/heads/efficientnet_lite0_digits_linear.pt my_digits/
  transfer-lab predict --head results/heads/efficientnet_lite0_digits_linear.pt 'photos/*.png' --csv > out.csv
  transfer-lab export --head results/heads/efficientnet_lite0_digits_linear.pt -o model.pt2
  transfer-lab predict --head results/finetune/efficientnet_lite0_digits.pt my_digits/
"""


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--head", required=True, metavar="PT",
                   help="a trained head file, results/heads/<network>_<dataset>_<head>.pt, "
                        "or a fine-tuned network, results/finetune/<network>_<dataset>.pt")
    p.add_argument("--network", metavar="NAME",
                   help="the network (config name) you mean to use: a head trained on another one is refused")
    p.add_argument("--config", metavar="YAML", default=None,
                   help="the workflow config the head was made with (default: ./config.yaml if present); "
                        "gives the dataset's storage size and checks the network's entry")
    p.add_argument("--image-size", type=int, metavar="N",
                   help="storage size of the training images (overrides the config's datasets.<name>.image_size)")
    p.add_argument("--fit", choices=["squash", "crop"],
                   help="how images were fit into the storage square: squash (default), crop (imagefolder)")
    p.add_argument("--weights-dir", default="resources/weights", metavar="DIR",
                   help="where fetch_weights put pretrained weights (default: resources/weights)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="transfer-lab", description="Use a trained (network, head): predict on new images, or export it.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser(
        "predict", help="classify image files with a trained head",
        description="Classify image files (any size and mode) with a trained head and the network it was "
                    "trained on, through the preprocessing of training. Unreadable files get an error row.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("images", nargs="+", help="image files, folders (searched recursively) or glob patterns")
    _common(p)
    p.add_argument("--top-k", type=int, default=3, metavar="K", help="classes listed per image (default 3)")
    p.add_argument("--csv", action="store_true", help="print CSV instead of a table")
    p.add_argument("-o", "--output", metavar="CSV", help="also write the CSV to this file")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: auto")
    p.add_argument("--batch-size", type=int, default=32, metavar="N", help="images per forward pass")
    e = sub.add_parser(
        "export", help="write one self-contained torch.export file (backbone + head + preprocessing)",
        description="Export backbone, head and preprocessing as one torch.export program (.pt2) that "
                    "loads with plain torch: uint8 RGB (H, W, 3) of any size in, class probabilities out.",
        epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    _common(e)
    e.add_argument("-o", "--output", required=True, metavar="PT2", help="the file to write (.pt2)")
    return parser


def _config(path: str | None) -> dict | None:
    import yaml

    if path is None:
        if not Path("config.yaml").is_file():
            return None
        path = "config.yaml"
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except FileNotFoundError:
        raise SystemExit(f"transfer-lab: {path}: no such config file") from None


def _predictor(args: argparse.Namespace, device: str):
    from .predict import load_predictor
    from .preprocess import Storage

    config = _config(args.config)
    storage = None
    if args.image_size is not None:
        storage = Storage(args.image_size, args.fit or "squash")
    elif args.fit is not None:
        raise SystemExit("transfer-lab: --fit needs --image-size")
    weights_dir = args.weights_dir if Path(args.weights_dir).is_dir() else None
    return load_predictor(args.head, network=args.network, config=config, storage=storage,
                          checkpoint_dir=weights_dir, device=device)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .images import NoImagesError
    from .predict import PredictError

    try:
        if args.command == "predict":
            from .files import atomic_write
            from .images import find_images
            from .predict import predict_files, to_csv, to_table

            paths = find_images(args.images)
            predictor = _predictor(args, args.device)
            rows = predict_files(predictor, paths, args.top_k, args.batch_size)
            top_k = max(1, min(args.top_k, len(predictor.class_names)))
            text = to_csv(rows, top_k)
            if args.output:
                Path(args.output).parent.mkdir(parents=True, exist_ok=True)
                with atomic_write(args.output, "w") as f:
                    f.write(text)
            sys.stdout.write(text if args.csv else to_table(rows, top_k))
            sys.stdout.flush()
            failed = sum(1 for r in rows if r["error"])
            if failed:
                print(f"{failed} of {len(rows)} images could not be read (see the error column)", file=sys.stderr)
        else:
            from .export import export_model

            predictor = _predictor(args, "cpu")
            Path(args.output).parent.mkdir(parents=True, exist_ok=True)
            record = export_model(predictor, args.output)
            print(f"wrote {args.output}: {len(record['class_names'])} classes, uint8 RGB (H, W, 3) of any size "
                  f"in, probabilities out; load with torch.export.load(path).module()")
    except (PredictError, NoImagesError) as err:
        print(f"transfer-lab {args.command}: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
