"""Detection quality on your own data: SACD against a patch-kNN baseline.

    python bench/quality.py ROOT --categories bottle,screw [--backbone efficientnet_lite0]
        [--image-size 256] [--epochs N] [--time-budget SECONDS|knn] [--seed 0] [--work DIR] [--json quality.json]

For each category of an MVTec-layout ROOT (train/good, test/<defect>,
ground_truth/<defect>), this trains SACD with ``sacd-fast train`` (its
defaults, plus the options given), evaluates it with ``sacd-fast eval``, and
runs a patch-nearest-neighbour baseline on the same teacher's features (no
training): it prints image AUROC, pixel AUROC, PRO and wall time side by side
and writes them as JSON. ``--time-budget knn`` gives SACD's training, per
category, the seconds the baseline's whole run took (it then runs first), the
comparison at equal wall-clock. The baseline is a plain PatchCore-style detector:
the teacher's stride-8 and stride-16 stage outputs (signed, before any ReLU),
the coarser upsampled and concatenated to the finer, averaged over 3x3
neighbourhoods; a memory bank of the training patches (a seeded random subset
of at most 65,536); each test patch's distance to its nearest neighbour,
upsampled and blurred like SACD's map; the image score is the map's maximum.

Not part of the test suite (it trains for minutes per category); its smoke
test runs on a generated product (tests/test_quality.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import torch
import torch.nn.functional as F

from sacd_fast import commands
from sacd_fast.data.datasets import AnomalyDataset
from sacd_fast.evaluation.metrics import evaluate
from sacd_fast.kernels.anomaly_map.reference import gaussian_blur
from sacd_fast.network.config import BACKBONE_NAMES, SACDConfig
from sacd_fast.network.model import SACD, normalize
from sacd_fast.options import add_options, from_options
from sacd_fast.settings import ScoreSettings, TrainSettings

BANK_LIMIT = 65536


def patch_features(model: SACD, x01: torch.Tensor) -> torch.Tensor:
    """(B, C, H/8, W/8) patch embeddings: stride-8 and upsampled stride-16 teacher stages, 3x3-averaged."""
    _, f2, f3 = model.teacher.stages(normalize(x01))
    f3 = F.interpolate(f3, size=f2.shape[-2:], mode="bilinear", align_corners=False)
    return F.avg_pool2d(torch.cat([f2, f3], 1), 3, stride=1, padding=1)


@torch.no_grad()
def knn_baseline(root, category, config: SACDConfig, batch_size: int = 16, seed: int = 0) -> dict:
    """The patch-kNN detector on one category, on the teacher of ``config``: metrics and seconds."""
    started = time.perf_counter()
    image_size = config.image_size
    model = SACD(config.backbone, teacher_weights="imagenet", image_size=image_size,
                 teacher_input=config.teacher_input).eval()
    train = AnomalyDataset(root, category, "train", image_size)
    test = AnomalyDataset(root, category, "test", image_size)

    def batches(dataset):
        for i in range(0, len(dataset), batch_size):
            yield [dataset[j] for j in range(i, min(i + batch_size, len(dataset)))]

    bank = torch.cat([patch_features(model, torch.stack([it["image"] for it in b])).permute(0, 2, 3, 1).flatten(0, 2)
                      for b in batches(train)])
    if len(bank) > BANK_LIMIT:
        bank = bank[torch.randperm(len(bank), generator=torch.Generator().manual_seed(seed))[:BANK_LIMIT]]
    maps, labels, masks = [], [], []
    for b in batches(test):
        features = patch_features(model, torch.stack([it["image"] for it in b]))
        n, c, h, w = features.shape
        queries = features.permute(0, 2, 3, 1).flatten(0, 2)
        distance = torch.cat([torch.cdist(q, bank).amin(1) for q in queries.split(4096)]).view(n, 1, h, w)
        maps.append(gaussian_blur(F.interpolate(distance, size=(image_size, image_size), mode="bilinear",
                                                align_corners=True)[:, 0], 4.0))
        labels += [it["label"] for it in b]
        masks += [it["mask"][0] for it in b]
    maps = torch.cat(maps)
    report = evaluate(torch.tensor(labels).numpy(), maps.flatten(1).amax(1).numpy(), torch.stack(masks).numpy(),
                      maps.numpy())
    return {**report, "seconds": round(time.perf_counter() - started, 1)}


def sacd(root, category, work: Path, config: SACDConfig, settings: TrainSettings) -> dict:
    """``sacd-fast train`` then ``sacd-fast eval`` on one category: metrics, epochs and seconds."""
    started = time.perf_counter()
    out = work / category
    trained = commands.train(root, out, config, settings, category=category, progress=False)
    report = commands.evaluate(out / "model.pt", root, out / "eval",
                               ScoreSettings(batch_size=settings.batch_size, device=settings.device),
                               category=category, progress=False)
    return {key: report[key] for key in ("image_auroc", "pixel_auroc", "pro", "f1_max")} | {
        "epochs": len(trained["history"]), "time_budget": settings.time_budget,
        "seconds": round(time.perf_counter() - started, 1)}


def format_table(rows: list[dict]) -> str:
    def value(v):
        return f"{v:.3f}" if isinstance(v, float) and v <= 1 else ("-" if v is None else str(v))

    lines = [f"{'category':<14} {'method':<6} {'image AUROC':>11} {'pixel AUROC':>11} {'PRO':>6} {'epochs':>6} "
             f"{'seconds':>8}"]
    for r in rows:
        lines.append(f"{r['category']:<14} {r['method']:<6} {value(r['image_auroc']):>11} "
                     f"{value(r['pixel_auroc']):>11} {value(r['pro']):>6} {value(r.get('epochs')):>6} "
                     f"{r['seconds']:>8.1f}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", help="MVTec-layout dataset root")
    parser.add_argument("--categories", required=True, help="comma-separated category folders of ROOT")
    add_options(parser, SACDConfig, only=("backbone", "image_size", "teacher_input", "map_mode", "map_border"),
                defaults={"backbone": "efficientnet_lite0"}, choices={"backbone": BACKBONE_NAMES})
    add_options(parser, TrainSettings, only=("epochs", "batch_size", "seed", "precision"))
    parser.add_argument("--time-budget", default=None, metavar="SECONDS|knn",
                        help="seconds of SACD training (at most --epochs), or 'knn': the baseline's whole run")
    parser.add_argument("--work", default=None, help="folder for the trained models (default: a temporary one)")
    parser.add_argument("--json", default="quality.json", help="where to write the results")
    parser.add_argument("--skip-baseline", action="store_true", help="run SACD only")
    args = parser.parse_args()
    if args.time_budget == "knn" and args.skip_baseline:
        parser.error("--time-budget knn needs the baseline: drop --skip-baseline")
    config = from_options(SACDConfig, args)  # the teacher of both methods
    settings = from_options(TrainSettings, args, time_budget=None, device="cpu")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(args.work or tmp)
        for category in args.categories.split(","):
            baseline = None if args.skip_baseline else {
                "category": category, "method": "knn",
                **knn_baseline(args.root, category, config, settings.batch_size, settings.seed)}
            budget = baseline["seconds"] if args.time_budget == "knn" else \
                None if args.time_budget is None else float(args.time_budget)
            rows.append({"category": category, "method": "sacd",
                         **sacd(args.root, category, work, config, replace(settings, time_budget=budget))})
            rows += [baseline] if baseline else []
            print(format_table(rows[-2:] if baseline else rows[-1:]), flush=True)
    machine = f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, " \
              f"torch {torch.__version__}"
    result = {"machine": machine, "settings": vars(args), "rows": rows}
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    print(f"\n{machine}\n{format_table(rows)}\nwrote {args.json}")


if __name__ == "__main__":
    main()
