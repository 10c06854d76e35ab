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
from sacd_fast.network.config import BACKBONE_NAMES, SACDConfig
from sacd_fast.options import add_options, from_options
from sacd_fast.settings import ExportSettings, ScoreSettings, TrainSettings

DEMO_DEFAULTS = {"epochs": 12, "batch_size": 8}  # a few minutes on a laptop's CPU


class HelpFormatter(argparse.HelpFormatter):
    """Shows an option's default when it has a meaningful one (not for required
    options, flags, or options whose absence is their default)."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default == argparse.SUPPRESS \
                or action.required or not action.option_strings:
            return action.help
        return f"{action.help} (default: {action.default})"


def _model_options(p, *names):
    add_options(p, SACDConfig, only=names, choices={"backbone": BACKBONE_NAMES})


def _dataset(p):
    p.add_argument("--data", required=True, help="dataset root (MVTec AD, BTAD or generic folder layout)")
    p.add_argument("--category", default=None,
                   help="product sub-folder of --data (e.g. bottle, or 01 for BTAD); omit if --data is the product")


def _checkpoint(p, exported: bool = True):
    p.add_argument("--checkpoint", required=True, help="model.pt written by `sacd-fast train`" + (
        ", or a model.onnx / model.xml it was exported to" if exported else ""))


def _add_train(subparsers) -> None:
    p = subparsers.add_parser("train", help="train a model on a product's defect-free images (several GPUs: "
                              "torchrun --nproc_per_node=N -m sacd_fast train ...)", formatter_class=HelpFormatter)
    _dataset(p)
    p.add_argument("--out", required=True, help="output folder: model.pt (checkpoint) and train_log.jsonl")
    _model_options(p, "backbone", "image_size", "teacher_input", "map_mode", "map_border")
    add_options(p, TrainSettings)
    p.set_defaults(run=lambda commands, a: commands.train(
        a.data, a.out, from_options(SACDConfig, a), from_options(TrainSettings, a), category=a.category))


def _add_eval(subparsers) -> None:
    p = subparsers.add_parser("eval", help="evaluate a checkpoint on a test split", formatter_class=HelpFormatter)
    _checkpoint(p)
    _dataset(p)
    p.add_argument("--out", required=True, help="output folder: metrics.json, scores.csv, heatmaps/")
    p.add_argument("--report", action="store_true", help="also write report.html: metrics, curves and heatmaps")
    add_options(p, ScoreSettings)
    p.set_defaults(run=lambda commands, a: commands.evaluate(
        a.checkpoint, a.data, a.out, from_options(ScoreSettings, a), category=a.category, report=a.report))


def _add_predict(subparsers) -> None:
    p = subparsers.add_parser("predict", help="score images and write heatmaps", formatter_class=HelpFormatter)
    _checkpoint(p)
    p.add_argument("--out", required=True, help="output folder: scores.csv, scores.json, heatmaps/")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    add_options(p, ScoreSettings)
    p.set_defaults(run=lambda commands, a: commands.predict(a.checkpoint, a.paths, a.out,
                                                            from_options(ScoreSettings, a)))


def _add_export(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a trained model to one ONNX or OpenVINO file",
                              formatter_class=HelpFormatter)
    _checkpoint(p, exported=False)
    p.add_argument("--out", required=True, help="output folder: model.onnx, or model.xml and model.bin")
    add_options(p, ExportSettings)
    p.set_defaults(run=lambda commands, a: commands.export_model(a.checkpoint, a.out, from_options(ExportSettings, a)))


def _add_demo(subparsers) -> None:
    p = subparsers.add_parser("demo", help="generate data, train, evaluate (runs offline on a CPU)",
                              formatter_class=HelpFormatter)
    p.add_argument("--out", default="sacd-demo", help="output folder")
    add_options(p, TrainSettings, only=("epochs", "seed", "batch_size", "device", "precision"),
                defaults=DEMO_DEFAULTS)
    _model_options(p, "image_size")
    p.set_defaults(run=lambda commands, a: commands.demo(a.out, from_options(TrainSettings, a),
                                                         image_size=from_options(SACDConfig, a).image_size))


def _add_profile(subparsers) -> None:
    p = subparsers.add_parser("profile", help="parameters and FLOPs per part of the model (fvcore)",
                              formatter_class=HelpFormatter)
    _model_options(p, "backbone", "image_size")
    p.add_argument("--bench-json", default=None,
                   help="a pytest-benchmark JSON (pytest bench/ --benchmark-json F): print achieved FLOP/s")
    p.add_argument("--kernels", action="store_true",
                   help="instead, the static report of every Triton kernel (bytes, FLOPs, H200 floor, sm_90 "
                        "registers, spills and occupancy, launches, host time per call); no GPU needed")
    p.add_argument("--no-compile", action="store_true", help="with --kernels: skip the sm_90 compilation")
    p.set_defaults(run=lambda commands, a: commands.profile_kernels(not a.no_compile) if a.kernels
                   else commands.profile_model(from_options(SACDConfig, a), a.bench_json))


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
