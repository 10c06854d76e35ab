"""Training on several processes with torch.distributed (torchrun, gloo on CPU)."""

import json
import subprocess
import sys
from pathlib import Path

import torch

from sacd_fast import SACD
from sacd_fast.data.synthdata import write_dataset


def torchrun(*args, cwd):
    """torchrun with two processes in ``cwd``, its own logs kept there (not left in the system's temporary folder)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "--log-dir", str(Path(cwd) / "torchrun-logs"), *args]
    result = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def test_ddp_replicas_stay_identical_and_split_the_data(tmp_path):
    torchrun(str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path), cwd=tmp_path)
    states = [torch.load(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    for name, tensor in states[0].items():
        assert torch.equal(tensor, states[1][name]), name
    reads = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    for epoch in range(2):  # each epoch: the two ranks read disjoint halves of the 10 images
        halves = [set(r["read"][epoch * 5:(epoch + 1) * 5]) for r in reads]
        assert not halves[0] & halves[1] and len(halves[0] | halves[1]) == 10
    assert reads[0]["history"] == reads[1]["history"]  # losses averaged over ranks
    saved = SACD.from_checkpoint(tmp_path / "model.pt").state_dict()
    assert all(torch.equal(saved[k], v) for k, v in states[0].items())


def test_rank_0_decides_where_a_time_budget_ends_the_run(tmp_path):
    torchrun(str(Path(__file__).with_name("ddp_worker.py")), str(tmp_path), "budget", cwd=tmp_path)
    reads = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [len(r["history"]) for r in reads] == [1, 1] and reads[0]["history"] == reads[1]["history"]
    payload = torch.load(tmp_path / "model.pt", weights_only=True)
    assert payload["epoch"] == 1 and payload["settings"]["epochs"] == 1


def test_cli_train_under_torchrun(tmp_path):
    write_dataset(tmp_path / "data", "disc", seed=2, n_train=10, n_test_good=2, n_per_defect=1, progress=False)
    torchrun("-m", "sacd_fast", "train", "--data", "data", "--category", "disc", "--out", "run",
             "--backbone", "efficientnet_lite0", "--epochs", "2", "--image-size", "64", "--batch-size", "2",
             "--device", "cpu", cwd=tmp_path)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]  # one log, written by rank 0
    assert "thresholds" in torch.load(tmp_path / "run" / "model.pt", weights_only=True)
