"""The ``sacd-fast`` command line (also ``python -m sacd_fast``).

    sacd-fast demo        generate data, train, evaluate, write heatmaps
    sacd-fast train       train one model per product on its normal images
    sacd-fast eval        metrics, per-image CSV and heatmaps on a test split
    sacd-fast predict     score image files or folders
    sacd-fast synth-data  write a generated dataset in the MVTec AD layout
    sacd-fast profile     parameters and FLOPs per part of the model

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
import torch.distributed as dist
from torch.utils.data import Subset

from .checkpoint import load_checkpoint, save_checkpoint
from .data import AnomalyDataset, ImageFiles
from .fast import fast as make_fast
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


def start_distributed(device: torch.device) -> torch.device:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on CUDA,
    gloo on CPUs) and return this process's device."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def train_command(args) -> dict | None:
    """Train, then calibrate the threshold on held-out normal images; returns the
    checkpoint (None on the non-zero ranks of a torchrun job)."""
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if distributed:
        device = start_distributed(device)
    try:
        return train_and_calibrate(args, out, device, rank=dist.get_rank() if distributed else 0)
    finally:
        if distributed:
            dist.destroy_process_group()


def train_and_calibrate(args, out: Path, device: torch.device, rank: int) -> dict | None:
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
        num_workers=args.workers, log=log, fast=args.fast)
    if rank != 0:
        return None
    normal = Subset(dataset, val_idx or train_idx)
    thresholds = calibrate(model, normal, args.batch_size, device)
    thresholds["source"] = "held-out normal training images" if val_idx else "training images"
    payload = load_checkpoint(checkpoint)
    payload["thresholds"] = thresholds
    save_checkpoint(payload, checkpoint)
    print(f"wrote {checkpoint} (threshold {thresholds['image']:.4f} from {len(normal)} "
          f"{thresholds['source']})", file=sys.stderr)
    return payload


def load_for_inference(path, device, fast: bool = False) -> tuple[SACD, dict]:
    payload = load_checkpoint(path)
    thresholds = payload.get("thresholds")
    if thresholds is None:
        raise ValueError(f"{path} has no calibrated threshold: it was not written by `sacd-fast train`")
    model = SACD.from_checkpoint(path).to(device)
    return (make_fast(model) if fast else model), thresholds


def heatmap_names(result: dict) -> list[str]:
    """One distinct PNG name per image: ``<defect>_<stem>`` or ``<stem>``, suffixed on a clash."""
    names, seen = [], set()
    for i, path in enumerate(result["path"]):
        base = Path(path).stem if "defect" not in result else f"{result['defect'][i]}_{Path(path).stem}"
        name, k = base, 1
        while name in seen:
            k += 1
            name = f"{base}_{k}"
        seen.add(name)
        names.append(f"{name}.png")
    return names


def write_heatmaps(result: dict, thresholds: dict, folder: Path, with_truth: bool) -> list[str]:
    """Write one heatmap panel per image into ``folder``; returns the file names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = heatmap_names(result)
    for i, name in enumerate(names):
        truth = result["mask"][i] if with_truth and result["has_mask"][i] else None
        heatmap_panel(result["images"][i], result["maps"][i], thresholds["image"], thresholds["normal_level"],
                      float(result["scores"][i]), name[:-4], truth).save(folder / name)
    return names


def eval_command(args) -> dict:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    model, thresholds = load_for_inference(args.checkpoint, device, args.fast)
    dataset = AnomalyDataset(args.data, args.category, "test", model.config["image_size"])
    result = predict_dataset(model, dataset, args.batch_size, device)
    report = evaluate_predictions(result)
    report["threshold"] = thresholds["image"]
    write_json(report, out / "metrics.json")
    names = write_heatmaps(result, thresholds, out / "heatmaps", with_truth=True)
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "defect", "label", "score", "predicted_anomalous", "heatmap"])
        for i, path in enumerate(result["path"]):
            score = result["scores"][i]
            writer.writerow([path, result["defect"][i], int(result["label"][i]), f"{score:.6f}",
                             int(score > thresholds["image"]), f"heatmaps/{names[i]}"])
    skipped = report["pixel_metrics_skipped_for"]
    print(" ".join(f"{k} {report[k]:.4f}" if report[k] is not None else f"{k} n/a"
                   for k in ("image_auroc", "pixel_auroc", "pro", "f1_max"))
          + (f"  (pixel metrics skipped for {', '.join(skipped)}: no masks)" if skipped else ""))
    return report


def predict_command(args) -> list[dict]:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(args.device)
    model, thresholds = load_for_inference(args.checkpoint, device, args.fast)
    if args.threshold is not None:
        thresholds = {**thresholds, "image": args.threshold}
    result = predict_dataset(model, ImageFiles(args.paths, model.config["image_size"]), args.batch_size, device)
    names = write_heatmaps(result, thresholds, out / "heatmaps", with_truth=False)
    rows = [{"path": p, "score": float(s), "anomalous": bool(s > thresholds["image"]), "heatmap": f"heatmaps/{n}"}
            for p, s, n in zip(result["path"], result["scores"], names)]
    write_json({"threshold": thresholds["image"], "images": rows}, out / "scores.json")
    with open(out / "scores.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["path", "score", "anomalous", "heatmap"])
        writer.writeheader()
        writer.writerows(rows)
    flagged = sum(r["anomalous"] for r in rows)
    print(f"{len(rows)} images scored, {flagged} above the threshold {thresholds['image']:.4f}; see {out}")
    return rows


def synth_data_command(args) -> Path:
    folder = write_dataset(args.out, args.category, args.seed)
    print(f"wrote {folder}")
    return folder


def profile_command(args) -> dict:
    """Print parameters and FLOPs per part (fvcore) and, given a bench JSON, the achieved FLOP/s."""
    import warnings

    from .profile import PARTS, anomaly_map_flops, profile

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random teacher counts the same
        model = SACD(args.backbone, teacher_weights=None, image_size=args.image_size)
    report = profile(model, args.image_size)
    rows = [(part, report[part]["params"], report[part]["flops"]) for part in (*PARTS, "total")]
    rows.insert(len(PARTS), ("anomaly map", 0, anomaly_map_flops(model, args.image_size)))
    print(f"{args.backbone} at {args.image_size}x{args.image_size}, per image (1 flop = 1 multiply-add)")
    print(f"{'part':<12} {'params (M)':>11} {'GFLOPs':>9}")
    for name, params, flops in rows:
        print(f"{name:<12} {params / 1e6:>11.2f} {flops / 1e9:>9.3f}")
    if args.bench_json:
        data = json.loads(Path(args.bench_json).read_text())
        flops = {part: report[part]["flops"] for part in PARTS}
        flops["anomaly_map"] = anomaly_map_flops(model, args.image_size)
        flops["total"] = report["total"]["flops"] + flops["anomaly_map"]
        wanted = (f"backbone={args.backbone}", f"size={args.image_size}")
        for bench in data.get("benchmarks", []):
            info = bench.get("extra_info") or {}
            case = info.get("case", "")
            if not all(w in case for w in wanted):
                continue
            params = dict(p.split("=", 1) for p in case[case.find("[") + 1:-1].split(",") if "=" in p)
            part = "total" if case.startswith("test_inference") else params.get("part")
            if part in flops:  # test_inference: the whole model; test_part: one part
                rate = info["items_per_s"]
                print(f"{case} {info['provider']}: {rate:,.0f} images/s = "
                      f"{rate * flops[part] / 1e12:.3f} T multiply-adds/s")
    return report


def demo_command(args) -> dict:
    """Generate data, train the Lite0 model, evaluate it; metrics.json and heatmaps in OUT."""
    out = Path(args.out)
    root = out / "data"
    if not (root / "disc").is_dir():
        write_dataset(root, "disc", args.seed)
    common = dict(data=str(root), category="disc", out=str(out), device=args.device, batch_size=args.batch_size,
                  seed=args.seed, image_size=args.image_size)
    train_command(argparse.Namespace(**common, backbone=DEMO_BACKBONE, teacher_weights="imagenet",
                                     epochs=args.epochs, val_fraction=0.1, workers=0, fast=False))
    return eval_command(argparse.Namespace(**common, checkpoint=str(out / "model.pt"), fast=False))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sacd-fast", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    fmt = argparse.ArgumentDefaultsHelpFormatter

    def runtime(p, batch_size=16):
        p.add_argument("--device", default="auto", help="'auto' (CUDA when available), 'cpu', 'cuda', 'cuda:1'...")
        p.add_argument("--batch-size", type=int, default=batch_size, help="images per batch")

    def fast_flag(p):
        p.add_argument("--fast", action="store_true",
                       help="on CUDA: the fast model (bf16, channels_last, torch.compile, CUDA graphs)")

    def dataset(p):
        p.add_argument("--data", required=True, help="dataset root (MVTec AD, BTAD or generic folder layout)")
        p.add_argument("--category", default=None,
                       help="product sub-folder of --data (e.g. bottle, or 01 for BTAD); omit if --data is the product")

    p = commands.add_parser("train", help="train a model on a product's defect-free images (several GPUs: "
                            "torchrun --nproc_per_node=N -m sacd_fast train ...)", formatter_class=fmt)
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
    p.add_argument("--fast", action="store_true",
                   help="on CUDA: bf16 autocast and channels_last (synthesis and FeaCali use the Triton kernels)")
    runtime(p)
    p.set_defaults(run=train_command)

    p = commands.add_parser("eval", help="evaluate a checkpoint on a test split", formatter_class=fmt)
    p.add_argument("--checkpoint", required=True, help="model.pt written by `sacd-fast train`")
    dataset(p)
    p.add_argument("--out", required=True, help="output folder: metrics.json, scores.csv, heatmaps/")
    runtime(p)
    fast_flag(p)
    p.set_defaults(run=eval_command)

    p = commands.add_parser("predict", help="score images and write heatmaps", formatter_class=fmt)
    p.add_argument("--checkpoint", required=True, help="model.pt written by `sacd-fast train`")
    p.add_argument("--out", required=True, help="output folder: scores.csv, scores.json, heatmaps/")
    p.add_argument("--threshold", type=float, default=None,
                   help="decision threshold on the score (default: the one calibrated at training)")
    p.add_argument("paths", nargs="+", metavar="PATH", help="image files or folders of images")
    runtime(p)
    fast_flag(p)
    p.set_defaults(run=predict_command)

    p = commands.add_parser("demo", help="generate data, train, evaluate (runs offline on a CPU)",
                            formatter_class=fmt)
    p.add_argument("--out", default="sacd-demo", help="output folder")
    p.add_argument("--epochs", type=int, default=12, help="training epochs")
    p.add_argument("--image-size", type=int, default=256, help="square input side, a multiple of 32")
    p.add_argument("--seed", type=int, default=0, help="seed for the data and the training")
    runtime(p, batch_size=8)
    p.set_defaults(run=demo_command)

    p = commands.add_parser("profile", help="parameters and FLOPs per part of the model (fvcore)",
                            formatter_class=fmt)
    p.add_argument("--backbone", default="wide_resnet50_2", choices=sorted(BACKBONES), help="teacher network")
    p.add_argument("--image-size", type=int, default=256, help="square input side, a multiple of 32")
    p.add_argument("--bench-json", default=None,
                   help="a pytest-benchmark JSON (pytest bench/ --benchmark-json F): print achieved FLOP/s")
    p.set_defaults(run=profile_command)

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
