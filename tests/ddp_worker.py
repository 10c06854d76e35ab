"""Run by tests/test_distributed.py under torchrun: trains with fit() on the
gloo backend and writes each rank's weights and the images it read. With a
second argument, "budget", rank 0 trains with a time budget too short for a
second epoch and the other ranks with one that fits many: rank 0's decision
must end the run on every rank. Rank 0 then calibrates the threshold on the
training images (after the epochs' reads)."""

import json
import os
import sys
import warnings

import torch
import torch.distributed as dist

from sacd_fast import SACD
from sacd_fast.settings import TrainSettings
from sacd_fast.training.train import fit


class Images(torch.utils.data.Dataset):
    def __init__(self):
        self.images = torch.rand(10, 3, 64, 64, generator=torch.Generator().manual_seed(0))
        self.read = []

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        self.read.append(int(i))
        return self.images[i]


def main(out, mode=None):
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    torch.manual_seed(rank)  # different initial weights: DDP must broadcast rank 0's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = SACD("resnet18", teacher_weights=None, image_size=64)
    data = Images()
    budget = None if mode != "budget" else 1e-3 if rank == 0 else 1e6
    history = fit(model, data, TrainSettings(epochs=2, batch_size=2, time_budget=budget),
                  checkpoint=os.path.join(out, "model.pt"), progress=False)
    torch.save(model.state_dict(), os.path.join(out, f"rank{rank}.pt"))
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"read": data.read, "history": history}, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(*sys.argv[1:])
