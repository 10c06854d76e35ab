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
import math
import os
import sys
import time
import warnings
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
from sacd_fast.evaluation.calibration import DEFAULT_FALSE_ALARM_RATE, calibrate_threshold, check_false_alarm_rate
from sacd_fast.evaluation.outputs import (
    heatmap_names,
    refuse_overwriting_inputs,
    score_rows,
    write_csv,
    write_heatmaps,
    write_json,
)
from sacd_fast.evaluation.report import write_report
from sacd_fast.evaluation.scoring import at_threshold, calibrate, evaluate_predictions, predict_dataset
from sacd_fast.files import exclusive_folder, require_file, write_text
from sacd_fast.network.config import MAP_MODES, MAX_IMAGE_SIZE, TEACHER_INPUTS
from sacd_fast.network.model import SACD
from sacd_fast.profiling import PARTS, anomaly_map_flops, profile
from sacd_fast.training.train import (
    TrainSettings,
    check_precision,
    computed_precision,
    converged,
    fit,
    kept_epoch,
    process_rank,
)

DEMO_BACKBONE = "efficientnet_lite0"
CACHE_MB = 2048  # decoded training images kept in memory (a 256² image takes 192 KiB)


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ValueError(f"--device {name!r} is not a device ('auto', 'cpu', 'cuda', 'cuda:1', ...)") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device {name}: CUDA is not available on this machine")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: only 'cpu' and 'cuda' devices are supported")
    return device


def check_setting(name: str, value, low=None, high=None, integer: bool = False, below_high: bool = False) -> None:
    """ValueError naming the option unless ``value`` is a finite number in range."""
    kind = "an integer" if integer else "a number"
    if isinstance(value, bool) or not isinstance(value, int if integer else (int, float)) \
            or not math.isfinite(value):
        raise ValueError(f"--{name} must be {kind}, got {value!r}")
    if (low is not None and value < low) or (high is not None and (value >= high if below_high else value > high)):
        span = f">= {low}" if high is None else f"in [{low}, {high}{')' if below_high else ']'}"
        raise ValueError(f"--{name} must be {span}, got {value}")


def check_image_size(image_size) -> None:
    check_setting("image-size", image_size, 32, MAX_IMAGE_SIZE, integer=True)
    if image_size % 32:
        raise ValueError(f"--image-size must be a multiple of 32, got {image_size}")


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


def check_run(epochs, image_size, batch_size, seed, device: str, precision: str) -> torch.device:
    """The settings every training run has, checked (ValueError naming the option); returns the device."""
    check_setting("epochs", epochs, 1, integer=True)
    check_image_size(image_size)
    check_setting("batch-size", batch_size, 1, integer=True)
    check_setting("seed", seed, 0, integer=True)
    check_precision(precision)
    device = resolve_device(device)
    check_fits("--batch-size", batch_size, image_size, device)
    return device


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


def train(data: str | os.PathLike, out: str | os.PathLike, *, category: str | None = None,
          backbone: str = "wide_resnet50_2", teacher_weights: str | None = "imagenet", epochs: int = 200,
          image_size: int = 256, batch_size: int = 16, seed: int = 0, val_fraction: float = 0.1, workers: int = 0,
          false_alarm_rate: float = DEFAULT_FALSE_ALARM_RATE, device: str = "auto", precision: str = "bf16",
          progress: bool = True, teacher_input: str = "native", map_mode: str | None = None,
          map_border: int | None = None, time_budget: float | None = None,
          patience: int | None = None) -> dict | None:
    """Train one model on a product's defect-free images and calibrate its threshold.

    Writes ``out/model.pt`` after every epoch (an interrupted run resumes where
    it stopped) and ``out/train_log.jsonl``. The decision threshold is set for
    ``false_alarm_rate`` on the held-out normal images
    (:mod:`sacd_fast.evaluation.calibration`). Under torchrun every process trains its
    share; rank 0 writes. ``precision`` "bf16" (the default) trains under bf16
    autocast on CUDA and on CPUs with native bf16, in fp32 elsewhere; "fp32"
    always in fp32. ``time_budget``: seconds of training; no epoch starts that
    would, at the last epoch's pace, end past them (``fit``'s ``time_budget``;
    at most ``epochs`` run). ``patience``: end training once that many epochs
    in a row have not lowered the held-out loss (``fit``'s ``patience``).
    Returns the checkpoint's thresholds and history (None on the other ranks).
    """
    if time_budget is not None:
        check_setting("time-budget", time_budget)
        if time_budget <= 0:
            raise ValueError(f"--time-budget must be > 0 seconds, got {time_budget}")
    if patience is not None:
        check_setting("patience", patience, 1, integer=True)
        if val_fraction == 0:
            raise ValueError("--patience watches the held-out images' loss: it needs --val-fraction > 0")
    check_setting("val-fraction", val_fraction, 0.0, 1.0, below_high=True)
    check_setting("workers", workers, 0, integer=True)
    check_setting("false-alarm-rate", false_alarm_rate, 0.0, 1.0, below_high=True)
    if teacher_input not in TEACHER_INPUTS:
        raise ValueError(f"teacher-input must be one of {', '.join(TEACHER_INPUTS)}, got {teacher_input!r}")
    if map_mode not in (None, *MAP_MODES):
        raise ValueError(f"map-mode must be one of {', '.join(MAP_MODES)}, got {map_mode!r}")
    if map_border is not None:
        check_setting("map-border", map_border, 0, integer=True)
    device = check_run(epochs, image_size, batch_size, seed, device, precision)  # before the data are read
    launched = int(os.environ.get("WORLD_SIZE", "1")) > 1  # torchrun started several processes
    if launched:
        device = start_distributed(device)
    try:
        dataset = AnomalyDataset(data, category, "train", image_size, cache_mb=CACHE_MB)
        train_idx, val_idx = split_validation(len(dataset), val_fraction, seed)
        check_false_alarm_rate(false_alarm_rate, len(val_idx or train_idx))
        run = (dataset, Path(out), backbone, teacher_weights, teacher_input, map_mode, map_border, epochs, image_size,
               batch_size, seed, (train_idx, val_idx), workers, false_alarm_rate, device, precision)
        if process_rank() != 0:
            _train(*run, progress=False, time_budget=time_budget, patience=patience)
            return None
        with exclusive_folder(out, "sacd-fast train"):
            return _train(*run, progress=progress, time_budget=time_budget, patience=patience)
    finally:
        if launched:
            dist.destroy_process_group()


def _train(dataset: AnomalyDataset, out: Path, backbone, teacher_weights, teacher_input, map_mode, map_border,
           epochs, image_size, batch_size, seed, split, workers, false_alarm_rate, device,
           precision, progress, time_budget, patience) -> dict | None:
    torch.manual_seed(seed)
    # the teacher's weights (a download, or a file) are found before the images are checked
    model = SACD(backbone, teacher_weights=teacher_weights, image_size=image_size, teacher_input=teacher_input,
                 map_mode=map_mode, map_border=map_border)
    dataset.check(progress)
    if precision == "bf16" and device.type != "cuda" and process_rank() == 0:
        say("training under bf16 autocast (this CPU has native bf16)" if computed_precision(precision, device) == "bf16"
            else "training in fp32: this CPU has no native bf16")
    train_idx, val_idx = split
    settings = TrainSettings(epochs=epochs, batch_size=batch_size, seed=seed)
    checkpoint, log_path = out / "model.pt", out / "train_log.jsonl"
    normal = Subset(dataset, val_idx or train_idx)
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
        say(f"epoch {h['epoch']}/{epochs}  loss {h['total']:.4f} (kd {h['kd']:.4f}, intra {h['intra']:.4f})"
            + held_out)

    def thresholds(trained: SACD) -> dict:
        values = calibrate(trained, normal, batch_size, device, progress, false_alarm_rate)
        values["source"] = "held-out normal training images" if val_idx else "training images"
        if not val_idx:
            return {"thresholds": values}
        held_out = [str(dataset.samples[i].path.relative_to(dataset.folder)) for i in val_idx]
        return {"thresholds": values, "calibration_images": {"folder": str(dataset.folder.resolve()),
                                                             "files": held_out}}

    fit(model, Subset(dataset, train_idx), settings, checkpoint=checkpoint, device=device, num_workers=workers,
        log=log, precision=precision, progress=progress, provenance=data_provenance(dataset, train_idx),
        finalize=thresholds, validation=Subset(dataset, val_idx) if val_idx else None, time_budget=time_budget,
        patience=patience)
    if process_rank() != 0:
        return None
    payload = load_checkpoint(checkpoint)
    kept = kept_epoch(payload["history"])
    if payload["epoch"] < epochs and converged(payload["history"], patience):
        say(f"stopped after epoch {payload['epoch']} of {epochs}: the held-out loss has not fallen below "
            f"epoch {kept}'s for {payload['epoch'] - kept} epochs (patience {patience})")
    elif time_budget is not None and payload["epoch"] < epochs:
        say(f"stopped after epoch {payload['epoch']} of {epochs}: another would have overrun the "
            f"{time_budget:g} s time budget")
    calibrated = payload["thresholds"]
    if kept is not None:
        say(f"kept the weights of epoch {kept} of {payload['epoch']}: the lowest loss on the held-out images")
    say(f"wrote {checkpoint}: {describe_threshold(calibrated)}")
    return {"thresholds": calibrated, "history": payload["history"]}


def decision(checkpoint, device: torch.device, fast: bool, threshold: float | None,
             false_alarm_rate: float | None) -> tuple[SACD, dict]:
    """The model and the thresholds to decide with: the calibrated ones, recalibrated
    for another ``false_alarm_rate`` from the stored held-out scores, or ``threshold``."""
    if threshold is not None and false_alarm_rate is not None:
        raise ValueError("--threshold and --false-alarm-rate both set the threshold: give one of them")
    if threshold is not None:
        check_setting("threshold", threshold)
    if false_alarm_rate is not None:
        check_setting("false-alarm-rate", false_alarm_rate, 0.0, 1.0, below_high=True)
    if fast and device.type != "cuda":
        say("--fast on a CPU: the first batch picks the fastest installed backend whose maps match the eager "
            f"model's (fp32 within {CPU_BOUNDS['fp32']:g}, bf16 and int8 within {CPU_BOUNDS['bf16']:g} of the "
            "threshold's distance from the median normal score) and that decides every image of it as the eager "
            "model does; int8 is tried where the checkpoint's held-out images are still there, and kept only where "
            "its accuracy guard holds")
    if Path(checkpoint).suffix.lower() in (".onnx", ".xml"):
        model = Inferencer(checkpoint)
        thresholds = model.thresholds
        if "image" not in thresholds and threshold is None:
            raise ValueError(f"{checkpoint} carries no calibrated threshold: pass --threshold")
    else:
        model, thresholds = load_for_inference(checkpoint, device, fast)
    if false_alarm_rate is not None:
        if "scores" not in thresholds:
            raise ValueError(f"{checkpoint} keeps no held-out scores (it predates false-alarm calibration): "
                             "use --threshold, or train again")
        thresholds = {**thresholds, **calibrate_threshold(thresholds["scores"], false_alarm_rate)}
    if threshold is not None:  # an uncalibrated export's heatmaps and normalised scores start at 0
        thresholds = {"normal_level": 0.0, "score_median": 0.0, **thresholds, "image": float(threshold),
                      "method": "given by --threshold"}
    return model, thresholds


def describe_threshold(thresholds: dict) -> str:
    if "false_alarm_rate" not in thresholds or thresholds["method"] == "given by --threshold":
        return f"threshold {thresholds['image']:.4f} ({thresholds['method']})"
    low, high = thresholds["false_alarm_interval"]
    return (f"threshold {thresholds['image']:.4f} for a {thresholds['false_alarm_rate']:.1%} false-alarm rate "
            f"({thresholds['method']} on {thresholds['images']} held-out normal images; the rate it gives lies in "
            f"{low:.1%}-{high:.1%} with 90% confidence)")


def evaluate(checkpoint: str | os.PathLike, data: str | os.PathLike, out: str | os.PathLike, *,
             category: str | None = None, batch_size: int = 16, device: str = "auto", fast: bool = False,
             threshold: float | None = None, false_alarm_rate: float | None = None, report: bool = False,
             progress: bool = True) -> dict:
    """Metrics, per-image scores and heatmaps of a checkpoint on a test split:
    ``out/metrics.json`` (written last), ``out/scores.csv``, ``out/heatmaps/``
    and, with ``report``, ``out/report.html``."""
    check_setting("batch-size", batch_size, 1, integer=True)
    device = resolve_device(device)
    out = Path(out)
    model, thresholds = decision(checkpoint, device, fast, threshold, false_alarm_rate)
    check_fits("--batch-size", batch_size, model.config.image_size, device)
    dataset = AnomalyDataset(data, category, "test", model.config.image_size)
    with exclusive_folder(out, "sacd-fast eval"):
        dataset.check(progress)
        result = predict_dataset(model, dataset, batch_size, device, progress)
        metrics = evaluate_predictions(result)
        metrics["at_threshold"] = at_threshold(result["label"], result["scores"], thresholds["image"])
        metrics["threshold"] = {k: v for k, v in thresholds.items() if k != "scores"}
        names = heatmap_names(list(result["path"]), dataset.folder / "test")
        outputs = [out / "heatmaps" / n for n in names] + [out / "scores.csv", out / "metrics.json"]
        refuse_overwriting_inputs(list(result["path"]), outputs + [out / "report.html"])
        write_heatmaps(result, thresholds, out / "heatmaps", names, with_truth=True)
        rows = score_rows(result, names, thresholds)
        write_csv(rows, out / "scores.csv")
        if report:
            write_report(out / "report.html", metrics, result, rows, out)
        write_json(metrics, out / "metrics.json")
    print(summary(metrics))
    say(f"{describe_threshold(thresholds)}; wrote {out / 'metrics.json'}, {out / 'scores.csv'}, "
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


def predict(checkpoint: str | os.PathLike, paths: list[str | os.PathLike], out: str | os.PathLike, *,
            threshold: float | None = None, false_alarm_rate: float | None = None, batch_size: int = 16,
            device: str = "auto", fast: bool = False, progress: bool = True) -> list[dict]:
    """Score image files or folders: ``out/scores.csv``, ``out/scores.json`` and
    one heatmap per image in ``out/heatmaps/``. Nothing is written until every
    image has been scored."""
    check_setting("batch-size", batch_size, 1, integer=True)
    device = resolve_device(device)
    out = Path(out)
    model, thresholds = decision(checkpoint, device, fast, threshold, false_alarm_rate)
    check_fits("--batch-size", batch_size, model.config.image_size, device)
    images = ImageFiles(paths, model.config.image_size, exclude=(out,))
    with exclusive_folder(out, "sacd-fast predict"):
        images.check(progress)
        result = predict_dataset(model, images, batch_size, device, progress)
        names = heatmap_names(list(result["path"]))
        refuse_overwriting_inputs(list(result["path"]), [out / "heatmaps" / n for n in names] +
                                  [out / "scores.csv", out / "scores.json"])
        rows = score_rows(result, names, thresholds)
        write_heatmaps(result, thresholds, out / "heatmaps", names, with_truth=False)
        write_csv(rows, out / "scores.csv")
        write_json({"threshold": {k: v for k, v in thresholds.items() if k != "scores"}, "images": rows},
                   out / "scores.json")
    flagged = sum(r["anomalous"] for r in rows)
    print(f"{len(rows)} images scored, {flagged} above the {describe_threshold(thresholds)}; see {out}")
    return rows


def export_model(checkpoint: str | os.PathLike, out: str | os.PathLike, *, format: str = "onnx",
                 batch: int | None = 1, precision: str = "fp32", calibration: str | os.PathLike | None = None,
                 guard_data: str | os.PathLike | None = None, force: bool = False) -> Path:
    """Write a trained checkpoint's whole pipeline, with its thresholds, to
    ``out/model.onnx`` or ``out/model.xml`` (+ ``.bin``).

    ``precision`` "int8" (OpenVINO) quantises it on ``calibration`` (a folder of normal images the model
    did not train on; by default the checkpoint's held-out normal images), guards its decisions on
    ``guard_data`` (a product folder whose test split is used; by default the calibration images and
    synthetic anomalies made from them) and refuses a file that fails the guard unless ``force``."""
    if batch is not None:
        check_setting("batch", batch, 1, integer=True)
    if precision != "int8" and (calibration is not None or guard_data is not None or force):
        raise ValueError("--calibration, --guard-data and --force belong to --precision int8")
    if precision == "int8" and format != "openvino":
        raise ValueError("--precision int8 writes an OpenVINO file: add --format openvino")
    model, thresholds = load_for_inference(checkpoint, torch.device("cpu"))
    size = model.config.image_size
    check_fits("--batch", batch or 2, size, torch.device("cpu"))
    images = guard_set = None
    if precision == "int8":
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
        path = export(model, Path(out) / "model", format, batch, precision, thresholds, images, guard_set, force)
    if precision == "int8":
        record = read_openvino(path)[1].quantization  # as the file holds it, without compiling the model
        verdict = "holds" if record["guard"]["passed"] else "FAILS (written with --force)"
        for before in record["tried_before"]:
            say(f"int8 in {before['int8']}: the guard fails ({GuardResult.from_dict(before['guard']).describe()})")
        say(f"int8 in {record['int8']}; the guard {verdict}: {GuardResult.from_dict(record['guard']).describe()}")
    say(f"wrote {path} ({format}, {precision}, batch {batch or 'any'}, {size}x{size} images)")
    return path


def synth_data(out: str | os.PathLike, category: str = "disc", seed: int = 0, overwrite: bool = False) -> Path:
    """Write a generated product with defects and masks in the MVTec AD layout
    (:func:`sacd_fast.data.synthdata.write_dataset`: locked, whole or not at all)."""
    check_setting("seed", seed, 0, integer=True)
    folder = write_dataset(out, category, seed, overwrite=overwrite)
    print(f"wrote {folder}")
    return folder


def demo(out: str | os.PathLike = "sacd-demo", *, epochs: int = 12, image_size: int = 256, seed: int = 0,
         batch_size: int = 8, device: str = "auto", precision: str = "bf16") -> dict:
    """Generate data, train the Lite0 model, evaluate it: metrics.json and heatmaps in ``out``.
    It trains in ``precision`` (bf16: on CUDA and on CPUs with native bf16, else fp32)."""
    check_run(epochs, image_size, batch_size, seed, device, precision)  # before any data are written
    out = Path(out)
    root = out / "data"
    say(f"sacd-fast demo: a generated product (discs with scratches, cracks, holes, stains and missing pieces) "
        f"in {root}, an {DEMO_BACKBONE} SACD model trained on its normal images ({epochs} epochs at "
        f"{image_size}x{image_size}) in {out / 'model.pt'}, then its evaluation in {out}")
    if (root / "disc").is_dir():
        say(f"reusing the generated data in {root / 'disc'}")
    else:
        synth_data(root, "disc", seed)
    checkpoint = out / "model.pt"
    if checkpoint.is_file():
        say(f"reusing {checkpoint}: training continues from it if it has fewer than {epochs} epochs")
    common = dict(category="disc", batch_size=batch_size, device=device)
    train(root, out, backbone=DEMO_BACKBONE, teacher_weights="imagenet", epochs=epochs, image_size=image_size,
          seed=seed, precision=precision, **common)
    return evaluate(checkpoint, root, out, report=True, **common)


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


def profile_model(backbone: str, image_size: int = 256, bench_json: str | os.PathLike | None = None) -> dict:
    """Print parameters and FLOPs per part (fvcore) and, given a pytest-benchmark
    JSON of ``pytest bench/``, the multiply-adds per second its model and part
    cases reached at this backbone and size."""
    check_image_size(image_size)
    benchmarks = read_bench_json(bench_json) if bench_json else []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a random teacher counts the same
        model = SACD(backbone, teacher_weights=None, image_size=image_size)
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
