"""The commands behind ``sacd-fast``, as typed functions that the CLI, the demo
and scripts call alike.

Each command checks its settings before any work starts, holds its output
folder for itself (a second process writing there is refused at once), opens
every image once up front (a bad file is named before anything trains), and
writes each output file whole or not at all (:mod:`sacd_fast.files`).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import Subset

from sacd_fast.checkpoint import calibration_files, load_checkpoint
from sacd_fast.data.datasets import AnomalyDataset, ImageFiles
from sacd_fast.data.synthdata import write_dataset
from sacd_fast.deploy.export import Inferencer, export, read_openvino
from sacd_fast.deploy.fast import CPU_BOUNDS
from sacd_fast.deploy.inference import load_for_inference, read_images
from sacd_fast.deploy.quantize import MAX_CALIBRATION_IMAGES, GuardResult
from sacd_fast.evaluation.calibration import Thresholds, check_false_alarm_rate
from sacd_fast.evaluation.outputs import (
    heatmap_names,
    refuse_overwriting_inputs,
    score_rows,
    write_csv,
    write_heatmaps,
    write_json,
)
from sacd_fast.evaluation.report import write_report
from sacd_fast.evaluation.scoring import at_threshold, evaluate_predictions, predict_dataset
from sacd_fast.files import exclusive_folder, require_file, write_text
from sacd_fast.network.config import SACDConfig
from sacd_fast.network.model import SACD
from sacd_fast.options import check_number
from sacd_fast.profiling import PARTS, anomaly_map_flops, profile
from sacd_fast.settings import ExportSettings, ScoreSettings, TrainSettings
from sacd_fast.training.train import computed_precision, converged, fit, kept_epoch, process_rank, resolve_device

DEMO_BACKBONE = "efficientnet_lite0"
CACHE_MB = 2048  # decoded training images kept in memory (a 256² image takes 192 KiB)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# Bytes a batch needs at the least per input pixel of each image: the image, its normalised copy and the
# anomaly maps (float32, 3 + 3 + 2 values); the networks' features come on top.
BYTES_PER_PIXEL = 32


def device_memory(device: torch.device) -> int:
    """Bytes of memory ``device`` has: the GPU's, or this machine's RAM."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def check_fits(option: str, batch: int, image_size: int, device: torch.device) -> None:
    """ValueError naming ``option`` when a batch of ``batch`` images at ``image_size`` cannot fit ``device``."""
    needed, has = batch * image_size * image_size * BYTES_PER_PIXEL, device_memory(device)
    if needed > has:
        raise ValueError(f"{option}: {batch} images of {image_size}x{image_size} need more than "
                         f"{needed / 2**30:,.1f} GiB, and {device} has {has / 2**30:,.1f} GiB: use a smaller value")


def split_validation(n: int, fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """Train and held-out index lists: at least 2 held out (a threshold needs two
    scores to fit), none below 10 images or with a fraction of 0."""
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    held = max(2, int(round(n * fraction))) if n >= 10 and fraction > 0 else 0
    return sorted(order[held:]), sorted(order[:held])


def data_provenance(dataset: AnomalyDataset, indices: list[int]) -> dict:
    """What a run trains on: the folder and a digest of its training files' names and sizes."""
    digest = hashlib.sha256()
    for i in indices:
        path = dataset.samples[i].path
        digest.update(f"{path.relative_to(dataset.folder)}\0{path.stat().st_size}\n".encode("utf-8", "surrogateescape"))
    return {"data": str(dataset.folder.resolve()), "training_images": len(indices),
            "training_files_sha256": digest.hexdigest()[:32]}


def start_distributed(device: torch.device) -> torch.device:
    """Under torchrun (WORLD_SIZE > 1): join the process group (NCCL on CUDA,
    gloo on CPUs) and return this process's device."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device


def train(data: str | os.PathLike, out: str | os.PathLike, config: SACDConfig | None = None,
          settings: TrainSettings | None = None, *, category: str | None = None,
          progress: bool = True) -> dict | None:
    """Train one model (``config``) on a product's defect-free images with ``settings``, and calibrate
    its threshold: what ``sacd-fast train`` does.

    Writes ``out/model.pt`` after every epoch (an interrupted run resumes where it stopped) and
    ``out/train_log.jsonl``. ``settings.val_fraction`` of the images are held out: they choose the epoch
    kept and calibrate the threshold for ``settings.false_alarm_rate``
    (:func:`sacd_fast.training.train.fit`). Under torchrun every process trains its share; rank 0
    writes. Returns the checkpoint's thresholds and history (None on the other ranks).
    """
    config, settings = config or SACDConfig(), settings or TrainSettings()
    device = resolve_device(settings.device)  # before the data are read
    check_fits("--batch-size", settings.batch_size, config.image_size, device)
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun started several processes
    if launched:
        device = start_distributed(device)
    settings = replace(settings, device=str(device))
    try:
        dataset = AnomalyDataset(data, category, "train", config.image_size, cache_mb=CACHE_MB)
        split = split_validation(len(dataset), settings.val_fraction, settings.seed)
        check_false_alarm_rate(settings.false_alarm_rate, len(split[1] or split[0]))
        if process_rank() != 0:
            _train(dataset, Path(out), config, settings, split, progress=False)
            return None
        with exclusive_folder(out, "sacd-fast train"):
            return _train(dataset, Path(out), config, settings, split, progress)
    finally:
        if launched:
            dist.destroy_process_group()


def _train(dataset: AnomalyDataset, out: Path, config: SACDConfig, settings: TrainSettings,
           split: tuple[list[int], list[int]], progress: bool) -> dict | None:
    torch.manual_seed(settings.seed)
    # the teacher's weights (a download, or a file) are found before the images are checked
    model = SACD.from_config(config, settings.teacher_weights)
    dataset.check(progress)
    device = torch.device(settings.device)
    if settings.precision == "bf16" and device.type != "cuda" and process_rank() == 0:
        say("training under bf16 autocast (this CPU has native bf16)" if computed_precision("bf16", device) == "bf16"
            else "training in fp32: this CPU has no native bf16")
    train_idx, val_idx = split
    checkpoint, log_path = out / "model.pt", out / "train_log.jsonl"
    seconds = {}
    if log_path.is_file():  # an earlier, interrupted run: keep its timings
        for line in log_path.read_text(errors="replace").splitlines():
            try:
                record = json.loads(line)
                seconds[record["epoch"]] = record["seconds"]
            except (ValueError, KeyError, TypeError):
                continue
    started = time.time()

    def log(history: list[dict]) -> None:
        """The log is the checkpoint's history (plus timings), rewritten whole after each checkpoint."""
        seconds.setdefault(history[-1]["epoch"], round(time.time() - started, 1))
        write_text(log_path, "".join(json.dumps({**h, "seconds": seconds.get(h["epoch"])}) + "\n" for h in history))
        h = history[-1]
        held_out = f"  held-out {h['held_out_total']:.4f}" if "held_out_total" in h else ""
        say(f"epoch {h['epoch']}/{settings.epochs}  loss {h['total']:.4f} (kd {h['kd']:.4f}, "
            f"intra {h['intra']:.4f})" + held_out)

    fit(model, Subset(dataset, train_idx), settings, checkpoint=checkpoint, log=log, progress=progress,
        provenance=data_provenance(dataset, train_idx), validation=Subset(dataset, val_idx) if val_idx else None)
    if process_rank() != 0:
        return None
    payload = load_checkpoint(checkpoint)
    kept, epochs = kept_epoch(payload["history"]), settings.epochs
    if payload["epoch"] < epochs and converged(payload["history"], settings.patience):
        say(f"stopped after epoch {payload['epoch']} of {epochs}: the held-out loss has not fallen below "
            f"epoch {kept}'s for {payload['epoch'] - kept} epochs (patience {settings.patience})")
    elif settings.time_budget is not None and payload["epoch"] < epochs:
        say(f"stopped after epoch {payload['epoch']} of {epochs}: another would have overrun the "
            f"{settings.time_budget:g} s time budget")
    calibrated = Thresholds.from_dict(payload["thresholds"], checkpoint)
    if kept is not None:
        say(f"kept the weights of epoch {kept} of {payload['epoch']}: the lowest loss on the held-out images")
    say(f"wrote {checkpoint}: {calibrated.describe()}")
    return {"thresholds": calibrated, "history": payload["history"]}


def decision(checkpoint, settings: ScoreSettings) -> tuple[torch.device, SACD, Thresholds]:
    """The device to score on, the model and the thresholds to decide with: the calibrated ones,
    recalibrated for another ``false_alarm_rate`` from the stored held-out scores, or ``threshold``;
    ValueError where a batch of ``settings.batch_size`` images cannot fit the device."""
    device = resolve_device(settings.device)
    if settings.fast and device.type != "cuda":
        say("--fast on a CPU: the first batch picks the fastest installed backend whose maps match the eager "
            f"model's (fp32 within {CPU_BOUNDS['fp32']:g}, bf16 and int8 within {CPU_BOUNDS['bf16']:g} of the "
            "threshold's distance from the median normal score) and that decides every image of it as the eager "
            "model does; int8 is tried where the checkpoint's held-out images are still there, and kept only where "
            "its accuracy guard holds")
    if Path(checkpoint).suffix.lower() in (".onnx", ".xml"):
        model = Inferencer(checkpoint)
        thresholds = model.thresholds
        if thresholds is None and settings.threshold is None:
            raise ValueError(f"{checkpoint} carries no calibrated threshold: pass --threshold")
    else:
        model, thresholds = load_for_inference(checkpoint, device, settings.fast)
    if settings.false_alarm_rate is not None:
        if thresholds is None or thresholds.scores is None:
            raise ValueError(f"{checkpoint} keeps no held-out scores (it predates false-alarm calibration): "
                             "use --threshold, or train again")
        thresholds = thresholds.recalibrated(settings.false_alarm_rate)
    if settings.threshold is not None:
        thresholds = Thresholds.given(settings.threshold, thresholds)
    check_fits("--batch-size", settings.batch_size, model.config.image_size, device)
    return device, model, thresholds


def evaluate(checkpoint: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike,
             settings: ScoreSettings | None = None, *, category: str | None = None, report: bool = False,
             progress: bool = True) -> dict:
    """Metrics, per-image scores and heatmaps of a checkpoint on a test split:
    ``out/metrics.json`` (written last), ``out/scores.csv``, ``out/heatmaps/``
    and, with ``report``, ``out/report.html``."""
    settings = settings or ScoreSettings()
    out = Path(out)
    device, model, thresholds = decision(checkpoint, settings)
    dataset = AnomalyDataset(data, category, "test", model.config.image_size)
    with exclusive_folder(out, "sacd-fast eval"):
        dataset.check(progress)
        result = predict_dataset(model, dataset, settings.batch_size, device, progress)
        metrics = evaluate_predictions(result)
        metrics["at_threshold"] = at_threshold(result.label, result.scores, thresholds.image)
        metrics["threshold"] = thresholds.to_dict(scores=False)
        names = heatmap_names(list(result.path), dataset.folder / "test")
        outputs = [out / "heatmaps" / n for n in names] + [out / "scores.csv", out / "metrics.json"]
        refuse_overwriting_inputs(list(result.path), outputs + [out / "report.html"])
        write_heatmaps(result, thresholds, out / "heatmaps", names, with_truth=True)
        rows = score_rows(result, names, thresholds)
        write_csv(rows, out / "scores.csv")
        if report:
            write_report(out / "report.html", metrics, result, rows, out)
        write_json(metrics, out / "metrics.json")
    print(summary(metrics))
    say(f"{thresholds.describe()}; wrote {out / 'metrics.json'}, {out / 'scores.csv'}, "
        f"{len(names)} heatmaps in {out / 'heatmaps'}" + (f" and {out / 'report.html'}" if report else ""))
    return metrics


def summary(metrics: dict) -> str:
    """What ``eval`` prints: the threshold-free metrics, then the decisions at the threshold."""
    def value(v):
        return "n/a" if v is None else f"{v:.4f}"

    at = metrics["at_threshold"]
    lines = ["  ".join(f"{k} {value(metrics[k])}" for k in ("image_auroc", "pixel_auroc", "pro", "f1_max"))]
    skipped = metrics["pixel_metrics_skipped_for"]
    if "pixel_metrics_missing_because" in metrics:
        lines[0] += f"  (no pixel metrics: {metrics['pixel_metrics_missing_because']})"
    elif skipped:
        lines[0] += f"  (pixel metrics skipped for {', '.join(skipped)}: no masks)"
    if metrics["empty_masks"]:
        lines.append(f"{len(metrics['empty_masks'])} defect masks mark no pixel, e.g. {metrics['empty_masks'][0]}")
    lines.append(f"at threshold {at['threshold']:.4f}: {at['true_positives']} defects found, "
                 f"{at['false_negatives']} missed, {at['false_positives']} false alarms, {at['true_negatives']} "
                 f"normal passed; precision {value(at['precision'])}, recall {value(at['recall'])}, "
                 f"F1 {value(at['f1'])}, false-alarm rate {value(at['false_alarm_rate'])}")
    if metrics["image_auroc_per_defect"]:
        lines.append("image AUROC per defect: " + ", ".join(
            f"{d} {v:.4f}" for d, v in metrics["image_auroc_per_defect"].items()))
    return "\n".join(lines)


def predict(checkpoint: str | os.PathLike, paths: list[str | os.PathLike], out: str | os.PathLike,
            settings: ScoreSettings | None = None, *, progress: bool = True) -> list[dict]:
    """Score image files or folders: ``out/scores.csv``, ``out/scores.json`` and
    one heatmap per image in ``out/heatmaps/``. Nothing is written until every
    image has been scored."""
    settings = settings or ScoreSettings()
    out = Path(out)
    device, model, thresholds = decision(checkpoint, settings)
    images = ImageFiles(paths, model.config.image_size, exclude=(out,))
    with exclusive_folder(out, "sacd-fast predict"):
        images.check(progress)
        result = predict_dataset(model, images, settings.batch_size, device, progress)
        names = heatmap_names(list(result.path))
        refuse_overwriting_inputs(list(result.path), [out / "heatmaps" / n for n in names] +
                                  [out / "scores.csv", out / "scores.json"])
        rows = score_rows(result, names, thresholds)
        write_heatmaps(result, thresholds, out / "heatmaps", names, with_truth=False)
        write_csv(rows, out / "scores.csv")
        write_json({"threshold": thresholds.to_dict(scores=False), "images": rows}, out / "scores.json")
    flagged = sum(r["anomalous"] for r in rows)
    print(f"{len(rows)} images scored, {flagged} above the {thresholds.describe()}; see {out}")
    return rows


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike,
                 settings: ExportSettings | None = None) -> Path:
    """Write a trained checkpoint's whole pipeline, with its thresholds, to
    ``out/model.onnx`` or ``out/model.xml`` (+ ``.bin``).

    Precision "int8" (OpenVINO) quantises it on ``settings.calibration`` (a folder of normal images the
    model did not train on; by default the checkpoint's held-out normal images), guards its decisions on
    ``settings.guard_data`` (a product folder whose test split is used; by default the calibration images
    and synthetic anomalies made from them) and refuses a file that fails the guard unless ``force``."""
    settings = settings or ExportSettings()
    batch, precision = settings.batch_size, settings.precision
    model, thresholds = load_for_inference(checkpoint, torch.device("cpu"))
    size = model.config.image_size
    check_fits("--batch", batch or 2, size, torch.device("cpu"))
    images = guard_set = None
    if precision == "int8":
        calibration, guard_data = settings.calibration, settings.guard_data
        images = read_images([calibration] if calibration is not None else
                             calibration_files(load_checkpoint(checkpoint), checkpoint), size, MAX_CALIBRATION_IMAGES)
        if guard_data is not None:
            test = AnomalyDataset(guard_data, None, "test", size)
            test.check(progress=False)
            guard_set = (torch.stack([test[i]["image"] for i in range(len(test))]),
                         np.array([test.samples[i].label for i in range(len(test))]))
        say(f"quantising to int8 on {len(images)} normal images ("
            f"{calibration if calibration is not None else 'the checkpoint’s held-out images'}), guarded on "
            f"{guard_data if guard_data is not None else 'them and 4 synthetic anomalies made from each'}")
    with exclusive_folder(out, "sacd-fast export"):
        path = export(model, Path(out) / "model", settings.format, batch, precision, thresholds, images, guard_set,
                      settings.force)
    if precision == "int8":
        record = read_openvino(path)[1].quantization  # as the file holds it, without compiling the model
        verdict = "holds" if record["guard"]["passed"] else "FAILS (written with --force)"
        for before in record["tried_before"]:
            say(f"int8 in {before['int8']}: the guard fails ({GuardResult.from_dict(before['guard']).describe()})")
        say(f"int8 in {record['int8']}; the guard {verdict}: {GuardResult.from_dict(record['guard']).describe()}")
    say(f"wrote {path} ({settings.format}, {precision}, batch {batch or 'any'}, {size}x{size} images)")
    return path


def synth_data(out: str | os.PathLike, category: str = "disc", seed: int = 0, overwrite: bool = False) -> Path:
    """Write a generated product with defects and masks in the MVTec AD layout
    (:func:`sacd_fast.data.synthdata.write_dataset`: locked, whole or not at all)."""
    check_number("seed", seed, 0, integer=True)
    folder = write_dataset(out, category, seed, overwrite=overwrite)
    print(f"wrote {folder}")
    return folder


def demo(out: str | os.PathLike = "sacd-demo", settings: TrainSettings | None = None, *,
         image_size: int = 256) -> dict:
    """Generate data, train the Lite0 model, evaluate it: metrics.json and heatmaps in ``out``.
    ``settings``: the training's (default: 12 epochs in batches of 8, precision bf16: on CUDA and on
    CPUs with native bf16, else fp32)."""
    settings = settings or TrainSettings(epochs=12, batch_size=8)
    config = SACDConfig(backbone=DEMO_BACKBONE, image_size=image_size)  # checked before any data are written
    check_fits("--batch-size", settings.batch_size, image_size, resolve_device(settings.device))
    out = Path(out)
    root = out / "data"
    say(f"sacd-fast demo: a generated product (discs with scratches, cracks, holes, stains and missing pieces) "
        f"in {root}, an {DEMO_BACKBONE} SACD model trained on its normal images ({settings.epochs} epochs at "
        f"{image_size}x{image_size}) in {out / 'model.pt'}, then its evaluation in {out}")
    if (root / "disc").is_dir():
        say(f"reusing the generated data in {root / 'disc'}")
    else:
        synth_data(root, "disc", settings.seed)
    checkpoint = out / "model.pt"
    if checkpoint.is_file():
        say(f"reusing {checkpoint}: training continues from it if it has fewer than {settings.epochs} epochs")
    train(root, out, config, settings, category="disc")
    scoring = ScoreSettings(batch_size=settings.batch_size, device=settings.device)
    return evaluate(checkpoint, root, out, scoring, category="disc", report=True)


def profile_kernels(compile: bool = True) -> dict:
    """Print the static kernel report (:mod:`sacd_fast.kernels.report`) and return it."""
    from sacd_fast.kernels import report

    data = report.build(compile=compile)
    print(report.markdown(data))
    return data


def read_bench_json(path: str | os.PathLike) -> list[dict]:
    """The benchmark records of a pytest-benchmark JSON file; ValueError naming the file and what is wrong."""
    path = require_file(path, "--bench-json file")
    try:
        data = json.loads(path.read_bytes())
    except (UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"--bench-json {path} is not JSON ({e})") from None
    benchmarks = data.get("benchmarks") if isinstance(data, dict) else None
    if not isinstance(benchmarks, list) or not all(isinstance(b, dict) for b in benchmarks):
        raise ValueError(f"--bench-json {path} is not a pytest-benchmark file: it has no list of 'benchmarks' "
                         "(write one with pytest bench/ --benchmark-json FILE)")
    for b in benchmarks:
        params, info = b.get("params") or {}, b.get("extra_info") or {}
        problem = ("its 'name' is not text" if not isinstance(b.get("name"), str) else
                   "its 'params' or 'extra_info' is not a record" if not isinstance(params, dict)
                   or not isinstance(info, dict) else
                   "its 'items_per_s' is not a number >= 0 with a 'provider'" if "items_per_s" in info and (
                       not isinstance(info.get("provider"), str) or isinstance(info["items_per_s"], bool)
                       or not isinstance(info["items_per_s"], (int, float)) or not info["items_per_s"] >= 0) else "")
        if problem:
            raise ValueError(f"--bench-json {path}: benchmark {str(b.get('name'))[:60]!r}: {problem}")
    return benchmarks


def profile_model(config: SACDConfig, bench_json: str | os.PathLike | None = None) -> dict:
    """Print parameters and FLOPs per part (fvcore) of a model of ``config`` and, given a pytest-benchmark
    JSON of ``pytest bench/``, the multiply-adds per second its model and part cases reached at this
    backbone and size."""
    backbone, image_size = config.backbone, config.image_size
    benchmarks = read_bench_json(bench_json) if bench_json else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random teacher counts the same
        model = SACD.from_config(config)
    report = profile(model, image_size)
    flops = {part: report[part]["flops"] for part in PARTS}
    flops["anomaly_map"] = anomaly_map_flops(model, image_size)
    flops["total"] = report["total"]["flops"] + flops["anomaly_map"]
    rows = [(part, report[part]["params"], report[part]["flops"]) for part in PARTS]
    rows += [("anomaly map", 0, flops["anomaly_map"]), ("total", report["total"]["params"], flops["total"])]
    print(f"{backbone} at {image_size}x{image_size}, per image (1 flop = 1 multiply-add)")
    print(f"{'part':<12} {'params (M)':>11} {'GFLOPs':>9}")
    for name, params, part_flops in rows:
        print(f"{name:<12} {params / 1e6:>11.2f} {part_flops / 1e9:>9.3f}")
    for bench in benchmarks:
        params, info = bench.get("params") or {}, bench.get("extra_info") or {}
        if params.get("backbone") != backbone or params.get("size") != image_size:
            continue
        # test_inference times the whole model; test_part one part
        part = "total" if bench["name"].startswith("test_inference") else params.get("part")
        if part in flops and "items_per_s" in info:
            rate = info["items_per_s"]
            print(f"{bench['name']} {info['provider']}: {rate:,.0f} images/s = "
                  f"{rate * flops[part] / 1e12:.3f} T multiply-adds/s")
    return report
