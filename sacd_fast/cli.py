"""The ``sacd-fast`` command line (also ``python -m sacd_fast``).

    sacd-fast demo        generate data, train, evaluate, write heatmaps
    sacd-fast train       train one model per product on its normal images
    sacd-fast eval        metrics, per-image CSV and heatmaps on a test split
    sacd-fast predict     score image files or folders
    sacd-fast synth-data  write a generated dataset in the MVTec AD layout

Any error ends the program with exit code 1 and a one-line reason.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from .checkpoint import load_checkpoint, save_checkpoint
from .data import AnomalyDataset, ImageFiles
from .inference import calibrate, evaluate_predictions, predict_dataset
from .model import SACD
from .synthdata import write_dataset
from .teacher import BACKBONES
from .train import TrainSettings, fit
from .visualize import heatmap_panel

DEMO_BACKBONE = "efficientnet_lite0"


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
    return device


def write_json(data, path: Path) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def split_validation(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train and held-out index lists; nothing is held out below 10 images."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = int(round(n * fraction)) if n >= 10 else 0
    return sorted(order[held:]), sorted(order[:held])


def train_command(args) -> dict:
    """Train, then calibrate the threshold on held-out normal images; returns the checkpoint."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    dataset = AnomalyDataset(args.data, args.category, "train", args.image_size)
    train_idx, val_idx = split_validation(len(dataset), args.val_fraction, args.seed)
    torch.manual_seed(args.seed)
    model = SACD(args.backbone, teacher_weights=args.teacher_weights, image_size=args.image_size)
    settings = TrainSettings(epochs=args.epochs, batch_size=args.batch_size, seed=args.seed)
    checkpoint = out / "model.pt"
    log_path = out / "train_log.jsonl"
    started = time.time()

    def log(record):
        record = {**record, "seconds": round(time.time() - started, 1)}
        with open(log_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        print(f"epoch {record['epoch']}/{settings.epochs}  loss {record['total']:.4f} "
              f"(kd {record['kd']:.4f}, intra {record['intra']:.4f})", file=sys.stderr)

    fit(model, Subset(dataset, train_idx), settings, checkpoint=checkpoint, device=device,
        num_workers=args.workers, log=log)
    normal = Subset(dataset, val_idx or train_idx)
    thresholds = calibrate(model, normal, args.batch_size, device)
    thresholds["source"] = "held-out normal training images" if val_idx else "training images"
    payload = load_checkpoint(checkpoint)
    payload["thresholds"] = thresholds
    save_checkpoint(payload, checkpoint)
    print(f"wrote {checkpoint} (threshold {thresholds['image']:.4f} from {len(normal)} "
          f"{thresholds['source']})", file=sys.stderr)
    return payload


def load_for_inference(path, device) -> tuple[SACD, dict]:
    payload = load_checkpoint(path)
    thresholds = payload.get("thresholds")
    if thresholds is None:
        raise ValueError(f"{path} has no calibrated threshold: it was not written by `sacd-fast train`")
    return SACD.from_checkpoint(path).to(device), thresholds


def write_heatmaps(result: dict, thresholds: dict, folder: Path, with_truth: bool) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, path in enumerate(result["path"]):
        name = Path(path).stem if "defect" not in result else f"{result['defect'][i]}_{Path(path).stem}"
        truth = result["mask"][i] if with_truth and result["has_mask"][i] else None
        heatmap_panel(result["images"][i], result["maps"][i], thresholds["image"], thresholds["normal_level"],
                      float(result["scores"][i]), name, truth).save(folder / f"{name}.png")


def eval_command(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    model, thresholds = load_for_inference(args.checkpoint, device)
    dataset = AnomalyDataset(args.data, args.category, "test", model.config["image_size"])
    result = predict_dataset(model, dataset, args.batch_size, device)
    report = evaluate_predictions(result)
    report["threshold"] = thresholds["image"]
    write_json(report, out / "metrics.json")
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "defect", "label", "score", "predicted_anomalous"])
        for path, defect, label, score in zip(result["path"], result["defect"], result["label"], result["scores"]):
            writer.writerow([path, defect, int(label), f"{score:.6f}", int(score > thresholds["image"])])
    write_heatmaps(result, thresholds, out / "heatmaps", with_truth=True)
    skipped = report["pixel_metrics_skipped_for"]
    print(" ".join(f"{k} {report[k]:.4f}" if report[k] is not None else f"{k} n/a"
                   for k in ("image_auroc", "pixel_auroc", "pro", "f1_max"))
          + (f"  (pixel metrics skipped for {', '.join(skipped)}: no masks)" if skipped else ""))
    return report


def predict_command(args) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    model, thresholds = load_for_inference(args.checkpoint, device)
    if args.threshold is not None:
        thresholds = {**thresholds, "image": args.threshold}
    result = predict_dataset(model, ImageFiles(args.paths, model.config["image_size"]), args.batch_size, device)
    rows = [{"path": p, "score": float(s), "anomalous": bool(s > thresholds["image"])}
            for p, s in zip(result["path"], result["scores"])]
    write_json({"threshold": thresholds["image"], "images": rows}, out / "scores.json")
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "score", "anomalous"])
        writer.writeheader()
        writer.writerows(rows)
    write_heatmaps(result, thresholds, out / "heatmaps", with_truth=False)
    flagged = sum(r["anomalous"] for r in rows)
    print(f"{len(rows)} images scored, {flagged} above the threshold {thresholds['image']:.4f}; see {out}")
    return rows


def synth_data_command(args) -> Path:
    folder = write_dataset(args.out, args.category, args.seed)
    print(f"wrote {folder}")
    return folder


def demo_command(args) -> dict:
    """Generate data, train the Lite0 model, evaluate it; metrics.json and heatmaps in OUT."""
    out = Path(args.out)
    root = out / "data"
    if not (root / "disc").is_dir():
        write_dataset(root, "disc", args.seed)
    common = dict(data=str(root), category="disc", out=str(out), device=args.device, batch_size=args.batch_size,
                  seed=args.seed, image_size=args.image_size)
    train_command(argparse.Namespace(**common, backbone=DEMO_BACKBONE, teacher_weights="imagenet",
                                     epochs=args.epochs, val_fraction=0.1, workers=0))
    return eval_command(argparse.Namespace(**common, checkpoint=str(out / "model.pt")))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sacd-fast", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def runtime(p, batch_size=16):
        p.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'...")
        p.add_argument("--batch-size", type=int, default=batch_size, help="images per batch")

    def dataset(p):
        p.add_argument("--data", required=True, help="dataset root (MVTec AD, BTAD or generic folder layout)")
        p.add_argument("--category", default=None,
                       help="product sub-folder of --data (e.g. bottle, or 01 for BTAD); omit if --data is the product")

    p = commands.add_parser("train", help="train a model on a product's defect-free images", formatter_class=fmt)
    dataset(p)
    p.add_argument("--out", required=True, help="output folder: model.pt (checkpoint) and train_log.jsonl")
    p.add_argument("--backbone", default="wide_resnet50_2", choices=sorted(BACKBONES), help="teacher network")
    p.add_argument("--teacher-weights", default="imagenet",
                   help="'imagenet' (downloads the ResNets if online; Lite0's is bundled) or a local .pth file")
    p.add_argument("--epochs", type=int, default=200, help="training epochs (the last one is kept)")
    p.add_argument("--image-size", type=int, default=256, help="square input side, a multiple of 32")
    p.add_argument("--seed", type=int, default=0, help="seed for initialisation, shuffling and synthesis")
    p.add_argument("--val-fraction", type=float, default=0.1,
                   help="share of training images held out to calibrate the decision threshold")
    p.add_argument("--workers", type=int, default=0, help="data-loading worker processes")
    runtime(p)
    p.set_defaults(run=train_command)

    p = commands.add_parser("eval", help="evaluate a checkpoint on a test split", formatter_class=fmt)
    p.add_argument("--checkpoint", required=True, help="model.pt written by `sacd-fast train`")
    dataset(p)
    p.add_argument("--out", required=True, help="output folder: metrics.json, scores.csv, heatmaps/")
    runtime(p)
    p.set_defaults(run=eval_command)

    p = commands.add_parser("predict", help="score images and write heatmaps", formatter_class=fmt)
    p.add_argument("--checkpoint", required=True, help="model.pt written by `sacd-fast train`")
    p.add_argument("--out", required=True, help="output folder: scores.csv, scores.json, heatmaps/")
    p.add_argument("--threshold", type=float, default=None,
                   help="decision threshold on the score (default: the one calibrated at training)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    runtime(p)
    p.set_defaults(run=predict_command)

    p = commands.add_parser("demo", help="generate data, train, evaluate (runs offline on a CPU)",
                            formatter_class=fmt)
    p.add_argument("--out", default="sacd-demo", help="output folder")
    p.add_argument("--epochs", type=int, default=12, help="training epochs")
    p.add_argument("--image-size", type=int, default=256, help="square input side, a multiple of 32")
    p.add_argument("--seed", type=int, default=0, help="seed for the data and the training")
    runtime(p, batch_size=8)
    p.set_defaults(run=demo_command)

    p = commands.add_parser("synth-data", help="write a generated dataset in the MVTec AD layout",
                            formatter_class=fmt)
    p.add_argument("--out", required=True, help="dataset root to write")
    p.add_argument("--category", default="disc", help="category folder name")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.set_defaults(run=synth_data_command)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.run(args)
    except KeyboardInterrupt:
        print("sacd-fast: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one line for the user; SACD_DEBUG=1 shows the traceback
        if os.environ.get("SACD_DEBUG") == "1":
            raise
        message = " ".join(str(e).split())
        print(f"sacd-fast {args.command}: error: {type(e).__name__}: {message}", file=sys.stderr)
        return 1
    return 0
