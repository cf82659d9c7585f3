"""superseg-train: run one training stage from a YAML config (resumes by default).

    superseg-train training/configs/magicpoint_cpu.yaml
    superseg-train training/configs/joint_cpu.yaml --set init.checkpoint=runs/magicpoint_cpu/model.pt
    superseg-train CONFIG --set schedule.iterations=200 --output runs/try --restart

Joint and labelled stages with `data.labels: adapt`: the pseudo-labels are made here with
homographic adaptation (the `adaptation` block) by the init checkpoint (of `data.images`, or of
the split's image folder for the labelled stage), then the model trains on them; with
`data.label_rounds: N` it relabels with the model just trained and trains again, N times
(SuperPoint's iterative adaptation). Round r lives in <output>/round<r>/ with its labels in
<output>/labels_round<r>/; <output>/model.pt is the last round's model. Every part resumes.

Several GPUs: `torchrun --nproc_per_node=N -m superseg_ros.training.cli CONFIG` runs the same
config with DistributedDataParallel (batch_size per GPU; see training/distributed.py). Labels
are made by rank 0 while the others wait (at most distributed.timeout_minutes).

Exit codes: 0 done, 2 bad config/input (one line says what to fix), 130 interrupted (the last
checkpoint is kept: run the same command to resume).
"""

from __future__ import annotations

import argparse
import copy
import shutil
import sys
from pathlib import Path

from ..checkpoint import CheckpointError, load_model
from ..config import ConfigError
from .config import load_config
from .distributed import cleanup, env_context
from .trainer import Trainer, TrainingError

PROG = "superseg-train"


def parse_args(argv):
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    parser.add_argument("config", help="YAML training config (training/configs/*.yaml)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config value, e.g. "
                        "schedule.iterations=500 (repeatable; the value is YAML)")
    parser.add_argument("--output", help="run folder (default: the config's output)")
    parser.add_argument("--restart", action="store_true",
                        help="start over even if the run folder holds a checkpoint")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


def labelled_images(config: dict) -> Path:
    """The image folder that `data.labels: adapt` labels."""
    if config["stage"] == "labelled":
        from .labelled_data import labelled_data_config
        data = labelled_data_config(config["data"])
        if data["dataset"] == "camvid":
            return Path(data["root"]) / data["split"]
        return Path(data["root"]) / "leftImg8bit" / data["split"]
    return Path(config["data"]["images"])


def run_pipeline(config: dict, restart: bool = False, progress: bool = True) -> Path:
    """One stage, or for the joint/labelled stage with labels 'adapt' the label/train rounds."""
    data = config["data"]
    if config["stage"] not in ("joint", "labelled") or data.get("labels") != "adapt":
        return Trainer(config, restart=restart, progress=progress).run()
    from ..extractor import resolve_device
    from . import distributed
    from .adaptation import adapt_folder

    output = Path(config["output"])
    labeller = config["init"]["checkpoint"]
    if not labeller:
        raise ConfigError("data.labels: adapt needs init.checkpoint (a detector, e.g. the "
                          "MagicPoint model of stage 1) to make the first pseudo-labels")
    rounds = int(data.get("label_rounds", 1))
    if rounds < 1:
        raise ConfigError(f"data.label_rounds must be >= 1, got {rounds}")
    images = labelled_images(config)
    ctx = distributed.env_context()
    device = distributed.device_for(resolve_device(config["device"]), ctx)
    ctx = distributed.setup(config, device)
    model_path = None
    for r in range(1, rounds + 1):
        labels_dir = output / f"labels_round{r}"
        if ctx.main:  # one process labels, the others wait
            summary = adapt_folder(load_model(labeller, device), images, labels_dir,
                                   config["adaptation"], device=device, progress=progress)
            print(f"round {r}/{rounds}: pseudo-labels by {labeller} in {labels_dir} "
                  f"({summary.get('images')} images)")
        distributed.barrier(ctx)
        round_config = copy.deepcopy(config)
        round_config["output"] = str(output / f"round{r}")
        round_config["name"] = f"{config['name']}_round{r}"
        if r > 1:
            round_config["init"] = dict(config["init"], checkpoint=str(labeller), imagenet="")
            round_config["model"] = {}
        model_path = Trainer(round_config, restart=restart, progress=progress,
                             labels_dir=labels_dir).run()
        labeller = model_path
    final = output / "model.pt"
    if ctx.main:
        shutil.copyfile(model_path, final)
    distributed.barrier(ctx)
    return final


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        overrides = list(args.overrides) + ([f"output={args.output}"] if args.output else [])
        config = load_config(args.config, overrides)
        path = run_pipeline(config, restart=args.restart, progress=not args.no_progress)
    except (ConfigError, TrainingError, CheckpointError, FileNotFoundError) as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted; the last checkpoint is kept, run the same command to "
              "resume", file=sys.stderr)
        return 130
    finally:
        cleanup()
    if env_context().main:
        print(f"model: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
