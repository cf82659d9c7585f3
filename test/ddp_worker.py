"""Run by test_cityscapes_training.py under `torchrun --nproc_per_node=2` on the CPU (gloo):
superseg-train's own entry point, plus one thing for the test: after training, every rank writes
the weights it ended with to <output>/rank<r>.pt, so the test can compare the processes.

    torchrun --nproc_per_node=2 test/ddp_worker.py CONFIG [superseg-train options]
"""

import sys
from pathlib import Path

import torch

from superseg_ros.training import cli
from superseg_ros.training.trainer import Trainer

_run = Trainer.run


def run_and_dump(self):
    path = _run(self)
    state = {"model": {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()},
             "stage": self.stage.state_dict() if hasattr(self.stage, "state_dict") else {},
             "step": self.step, "rank": self.ctx.rank, "world": self.ctx.world}
    torch.save(state, Path(self.config["output"]) / f"rank{self.ctx.rank}.pt")
    return path


if __name__ == "__main__":
    torch.set_num_threads(1)
    Trainer.run = run_and_dump
    sys.exit(cli.main(sys.argv[1:]))
