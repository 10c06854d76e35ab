"""The sacd-fast command line (also: python -m sacd_fast).

    sacd-fast demo        generate data, train, evaluate, write heatmaps
    sacd-fast train       train one model per product on its normal images
    sacd-fast eval        metrics, per-image CSV and heatmaps on a test split
    sacd-fast predict     score image files or folders
    sacd-fast export      write a trained model to one ONNX or OpenVINO file
    sacd-fast synth-data  write a generated dataset in the MVTec AD layout
    sacd-fast profile     parameters and FLOPs per part of the model; --kernels: the kernel report

Any error ends the program with exit code 1 and a one-line reason; Ctrl-C
and SIGTERM stop it with exit code 130 and 143, with every file it wrote whole.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys

from sacd_fast import __version__
from sacd_fast.network.config import BACKBONES, MAP_MODES, TEACHER_INPUTS
from sacd_fast.training.settings import DEFAULT_FALSE_ALARM_RATE, PRECISIONS


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default when it has a meaningful one (not for required
    options, flags, or options whose absence is their default)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or action.required or not action.option_strings:
            return action.help
        return f"{action.help} (default: {action.default})"


def _decision(p):
    p = p.add_mutually_exclusive_group()
    p.add_argument("--threshold", type=float, default=None,
                   help="decision threshold on the raw score (default: the one calibrated at training)")
    p.add_argument("--false-alarm-rate", type=float, default=None,
                   help="recalibrate the threshold for this share of normal images flagged, from the "
                        "held-out scores kept in the checkpoint")


def _runtime(p, batch_size=16):
    p.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'...")
    p.add_argument("--batch-size", type=int, default=batch_size, help="images per batch")


def _fast_flag(p):
    p.add_argument("--fast", action="store_true",
                   help="the fast model: on CUDA bf16, channels_last, torch.compile and CUDA graphs; on a CPU the "
                        "fastest installed backend (OpenVINO, ONNX Runtime, eager) whose maps match eager fp32")


def _precision(p):
    p.add_argument("--precision", default="bf16", choices=PRECISIONS,
                   help="bf16: train under bf16 autocast on CUDA and on CPUs with native bf16 (AVX512-BF16, AMX), "
                        "where it is faster; elsewhere it trains in fp32. fp32: always fp32")


def _dataset(p):
    p.add_argument("--data", required=True, help="dataset root (MVTec AD, BTAD or generic folder layout)")
    p.add_argument("--category", default=None,
                   help="product sub-folder of --data (e.g. bottle, or 01 for BTAD); omit if --data is the product")


def _add_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model on a product's defect-free images (several GPUs: "
                              "torchrun --nproc_per_node=N -m sacd_fast train ...)", formatter_class=HelpFormatter)
    _dataset(p)
    p.add_argument("--out", required=True, help="output folder: model.pt (checkpoint) and train_log.jsonl")
    p.add_argument("--backbone", default="wide_resnet50_2", choices=sorted(BACKBONES), help="teacher network")
    p.add_argument("--teacher-weights", default="imagenet",
                   help="'imagenet' (downloads the ResNets if online; the EfficientNet-Lite ones are bundled) "
                        "or a local .pth file")
    p.add_argument("--teacher-input", default="native", choices=TEACHER_INPUTS,
                   help="how the teacher sees the image: the scaling its weights were trained on, or ImageNet "
                        "mean/std for every backbone (they differ only for the efficientnet_lite ones)")
    p.add_argument("--map-mode", default=None, choices=MAP_MODES,
                   help="how the per-scale anomaly maps combine: add (sum) or mul (product); default mul for "
                        "the efficientnet_lite backbones, add (the paper's) for the ResNets")
    p.add_argument("--map-border", type=int, default=None,
                   help="rows and columns at each edge of every scale's anomaly map that take the value of the "
                        "nearest cell inside (the teacher's padding makes the edge cells unreliable); default 1 "
                        "for the efficientnet_lite backbones, 0 (the paper's) for the ResNets")
    p.add_argument("--epochs", type=int, default=200,
                   help="training epochs (the one with the lowest loss on the held-out images is kept)")
    p.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                   help="train for about this long: no epoch starts that would, at the last epoch's pace, end "
                        "past it (at most --epochs run; how many fit depends on the machine). A rerun with a "
                        "budget finds a run that ended on its budget finished; without one it trains on to "
                        "--epochs")
    p.add_argument("--patience", type=int, default=None, metavar="EPOCHS",
                   help="end training once this many epochs in a row have not lowered the held-out images' loss "
                        "(at most --epochs run; needs --val-fraction > 0). A rerun with the same patience finds "
                        "a run that ended this way finished; without one it trains on to --epochs")
    p.add_argument("--image-size", type=int, default=256, help="square input side, a multiple of 32")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and synthesis")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of training images held out to choose the epoch kept and calibrate the "
                        "decision threshold (0: keep the last epoch, calibrate on training images)")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    p.add_argument("--false-alarm-rate", type=float, default=DEFAULT_FALSE_ALARM_RATE,
                   help="share of normal images the calibrated threshold may flag (estimated on the held-out "
                        "images: a conformal bound, or a fitted tail when they are too few)")
    _precision(p)
    _runtime(p)
    p.set_defaults(run=lambda commands, a: commands.train(
        a.data, a.out, category=a.category, backbone=a.backbone, teacher_weights=a.teacher_weights, epochs=a.epochs,
        image_size=a.image_size, batch_size=a.batch_size, seed=a.seed, val_fraction=a.val_fraction,
        workers=a.workers, false_alarm_rate=a.false_alarm_rate, device=a.device, precision=a.precision,
        teacher_input=a.teacher_input, map_mode=a.map_mode, map_border=a.map_border, time_budget=a.time_budget,
        patience=a.patience))


def _add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint on a test split", formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="model.pt written by `sacd-fast train`, or a model.onnx / model.xml it was exported to")
    _dataset(p)
    p.add_argument("--out", required=True, help="output folder: metrics.json, scores.csv, heatmaps/")
    p.add_argument("--report", action="store_true", help="also write report.html: metrics, curves and heatmaps")
    _decision(p)
    _runtime(p)
    _fast_flag(p)
    p.set_defaults(run=lambda commands, a: commands.evaluate(
        a.checkpoint, a.data, a.out, category=a.category, batch_size=a.batch_size, device=a.device, fast=a.fast,
        threshold=a.threshold, false_alarm_rate=a.false_alarm_rate, report=a.report))


def _add_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="score images and write heatmaps", formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True,
                   help="model.pt written by `sacd-fast train`, or a model.onnx / model.xml it was exported to")
    p.add_argument("--out", required=True, help="output folder: scores.csv, scores.json, heatmaps/")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    _decision(p)
    _runtime(p)
    _fast_flag(p)
    p.set_defaults(run=lambda commands, a: commands.predict(
        a.checkpoint, a.paths, a.out, threshold=a.threshold, false_alarm_rate=a.false_alarm_rate,
        batch_size=a.batch_size, device=a.device, fast=a.fast))


def _add_export(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a trained model to one ONNX or OpenVINO file",
                              formatter_class=HelpFormatter)
    p.add_argument("--checkpoint", required=True, help="model.pt written by `sacd-fast train`")
    p.add_argument("--format", default="onnx", choices=("onnx", "openvino"), help="file format")
    p.add_argument("--out", required=True, help="output folder: model.onnx, or model.xml and model.bin")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--batch", type=int, default=1, help="the batch size the file takes")
    size.add_argument("--dynamic-batch", action="store_true", help="a file that takes any batch size")
    p.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "int8"),  # deploy.export.FILE_PRECISIONS
                   help="weights and compute; int8: OpenVINO, quantised and guarded (below)")
    p.add_argument("--calibration", metavar="DIR",
                   help="int8: normal images the model did not train on (default: the checkpoint's held-out ones)")
    p.add_argument("--guard-data", metavar="DIR", help="int8: a product folder whose test split guards the "
                   "decisions (default: the calibration images and 4 synthetic anomalies made from each)")
    p.add_argument("--force", action="store_true", help="int8: write the file even where the guard fails")
    p.set_defaults(run=lambda commands, a: commands.export_model(a.checkpoint, a.out, format=a.format,
                                                       batch=None if a.dynamic_batch else a.batch,
                                                       precision=a.precision, calibration=a.calibration,
                                                       guard_data=a.guard_data, force=a.force))


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser("demo", help="generate data, train, evaluate (runs offline on a CPU)",
                              formatter_class=HelpFormatter)
    p.add_argument("--out", default="sacd-demo", help="output folder")
    p.add_argument("--epochs", type=int, default=12, help="training epochs")
    p.add_argument("--image-size", type=int, default=256, help="square input side, a multiple of 32")
    p.add_argument("--seed", type=int, default=0, help="seed for the data and the training")
    _runtime(p, batch_size=8)
    _precision(p)
    p.set_defaults(run=lambda commands, a: commands.demo(a.out, epochs=a.epochs, image_size=a.image_size, seed=a.seed,
                                               batch_size=a.batch_size, device=a.device, precision=a.precision))


def _add_profile(subparsers) -> None:
    p = subparsers.add_parser("profile", help="parameters and FLOPs per part of the model (fvcore)",
                              formatter_class=HelpFormatter)
    p.add_argument("--backbone", default="wide_resnet50_2", choices=sorted(BACKBONES), help="teacher network")
    p.add_argument("--image-size", type=int, default=256, help="square input side, a multiple of 32")
    p.add_argument("--bench-json", default=None,
                   help="a pytest-benchmark JSON (pytest bench/ --benchmark-json F): print achieved FLOP/s")
    p.add_argument("--kernels", action="store_true",
                   help="instead, the static report of every Triton kernel (bytes, FLOPs, H200 floor, sm_90 "
                        "registers, spills and occupancy, launches, host time per call); no GPU needed")
    p.add_argument("--no-compile", action="store_true", help="with --kernels: skip the sm_90 compilation")
    p.set_defaults(run=lambda commands, a: commands.profile_kernels(not a.no_compile) if a.kernels
                   else commands.profile_model(a.backbone, a.image_size, a.bench_json))


def _add_synth_data(subparsers) -> None:
    p = subparsers.add_parser("synth-data", help="write a generated dataset in the MVTec AD layout",
                              formatter_class=HelpFormatter)
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--category", default="disc", help="category folder name")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--overwrite", action="store_true",
                   help="write into a category folder that already holds files, replacing those of the same names")
    p.set_defaults(run=lambda commands, a: commands.synth_data(a.out, a.category, a.seed, a.overwrite))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sacd-fast", description=__doc__.split("\n\n")[0],
                                     formatter_class=HelpFormatter)
    parser.add_argument("--version", action="version", version=f"sacd-fast {__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add in (_add_train, _add_eval, _add_predict, _add_export, _add_demo, _add_profile, _add_synth_data):
        add(subparsers)
    return parser


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: the work in progress stops, every file written so far stays whole."""


def _terminate(signum, frame):
    raise Terminated()


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    previous = signal.signal(signal.SIGTERM, _terminate)
    try:
        from sacd_fast import commands  # noqa: PLC0415 (torch and the rest load once the options are parsed)

        args.run(commands, args)
    except KeyboardInterrupt as e:
        how = "terminated" if isinstance(e, Terminated) else "interrupted"
        resume = " (run the same command again to resume the training)" if args.command in ("train", "demo") else ""
        print(f"sacd-fast {args.command}: {how}{resume}", file=sys.stderr)
        return 143 if isinstance(e, Terminated) else 130
    except Exception as e:  # one line for the user; SACD_DEBUG=1 shows the traceback
        if os.environ.get("SACD_DEBUG") == "1":
            raise
        message = " ".join(str(e).split())
        print(f"sacd-fast {args.command}: error: {type(e).__name__}: {message}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0
