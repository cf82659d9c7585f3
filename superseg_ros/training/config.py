"""Training configs: one YAML file per experiment, merged onto these defaults and checked.

    config = load_config("training/configs/magicpoint_cpu.yaml", ["schedule.iterations=200"])

Top-level keys are fixed (a typo is an error that names it). `model`, `data`, `loss`, `homography`,
`photometric` and `adaptation` are checked by the code that uses them (the network, the stage, the
homography sampler ...), each against its own defaults, so every key has one home.
"""

from __future__ import annotations

from pathlib import Path


from ..config import ConfigError, apply_overrides, flatten, merge_config, read_yaml, \
    require_choice

STAGES = ("magicpoint", "joint", "labelled")
# `stage: cityscapes` (before the labelled stage took a dataset name) is the labelled stage on
# Cityscapes; resumed runs and old configs keep working
STAGE_ALIASES = {"cityscapes": "labelled"}

DEFAULT_CONFIG = {
    "name": "",                   # experiment name (default: the config file's stem)
    "stage": "magicpoint",        # magicpoint (stage 1) | joint (stage 2) | labelled (stage 3)
    "output": "",                 # run folder (default: runs/<name>)
    "seed": 0,
    "device": "auto",             # auto | cpu | cuda | cuda:N
    "threads": 0,                 # torch CPU threads; 0 = torch's default
    "model": {},                  # SuperSegmentation config (ignored keys are errors there)
    "init": {
        "checkpoint": "",         # start from this superseg_ros checkpoint ("" = from scratch)
        "imagenet": "",           # torchvision ResNet state dict for the encoder ("" = none)
        "reset_semantic": False,  # True: an init checkpoint whose classes differ from the stage's
                                  # gets a new (random) semantic classifier instead of an error
        "change_architecture": False,  # True: `model` may change the checkpoint's architecture
                                  # (e.g. decoder_stride 8 -> 4); weights whose name and shape
                                  # still fit are kept, the rest start fresh
    },
    "data": {},                   # the stage's data settings (see training/data.py)
    "homography": {},             # homography.DEFAULT_HOMOGRAPHY_CONFIG keys
    "photometric": {},            # augment.DEFAULT_CONFIG keys
    "adaptation": {},             # adaptation.DEFAULT_CONFIG keys (pseudo-labels, joint stage)
    "loss": {},                   # the stage's loss weights and settings
    "optimizer": {"lr": 0.001, "betas": [0.9, 0.999], "weight_decay": 0.0},
    "schedule": {
        "iterations": 1000,
        "warmup": 0,              # linear warm-up steps
        "decay": "constant",      # constant | cosine (to min_lr_ratio * lr at the last step)
        "min_lr_ratio": 0.01,
        "minutes": 0.0,           # wall-clock budget: stop after the step that passes it (0 = none)
    },
    "batch_size": 16,             # items per step and per process (torchrun: per GPU)
    "accumulate": 1,              # micro-batches of batch_size per optimiser step
    "num_workers": 0,             # DataLoader worker processes (0: in the training process)
    "amp": False,                 # fp16 autocast + GradScaler on CUDA (ignored on CPU)
    "grad_clip": 0.0,             # max gradient norm; 0 = no clipping
    "train_only": [],             # model parts to train (encoder, neck, detector, descriptor,
                                  # semantic, subpixel); the rest is frozen, BatchNorm statistics
                                  # included. [] = the whole model
    "log_every": 25,              # steps between logged scalars
    "image_every": 250,           # steps between TensorBoard image overlays
    "checkpoint_every": 250,      # steps between checkpoints (always one at the end)
    "validate_every": 500,        # steps between validations (0 = only at the end)
    "validation": {},             # the stage's validation settings
    "tensorboard": True,          # also write TensorBoard events (metrics.jsonl always)
    "distributed": {              # used when started by torchrun (WORLD_SIZE > 1)
        "backend": "auto",        # auto (nccl on CUDA, gloo on the CPU) | nccl | gloo
        "sync_batchnorm": False,  # BatchNorm statistics over all processes (CUDA only)
        "timeout_minutes": 60,    # how long a process waits for the others (validation ...)
    },
}

TRAINABLE_PARTS = ("encoder", "neck", "detector", "descriptor", "semantic", "subpixel")

# Keys that may change when a run is resumed: they do not change what is learned.
RESUMABLE_CHANGES = ("output", "device", "threads", "num_workers", "log_every", "image_every",
                     "checkpoint_every", "validate_every", "tensorboard", "schedule.iterations",
                     "schedule.minutes",
                     "distributed.backend", "distributed.timeout_minutes")


def training_config(raw: dict | None, name: str = "experiment") -> dict:
    conf = merge_config(DEFAULT_CONFIG, raw, where="training config")
    conf["stage"] = STAGE_ALIASES.get(conf["stage"], conf["stage"])
    require_choice(conf["stage"], STAGES, "stage")
    conf["name"] = conf["name"] or name
    conf["output"] = conf["output"] or str(Path("runs") / conf["name"])
    for key in ("batch_size", "accumulate"):
        if conf[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {conf[key]}")
    sched = conf["schedule"]
    require_choice(sched["decay"], ("constant", "cosine"), "schedule.decay")
    if sched["minutes"] < 0:
        raise ConfigError(f"schedule.minutes must be >= 0, got {sched['minutes']}")
    if sched["iterations"] < 1 or sched["warmup"] < 0:
        raise ConfigError("schedule.iterations must be >= 1 and schedule.warmup >= 0")
    for key in ("log_every", "image_every", "checkpoint_every"):
        if conf[key] < 1:
            raise ConfigError(f"{key} must be >= 1, got {conf[key]}")
    if conf["validate_every"] < 0 or conf["num_workers"] < 0 or conf["grad_clip"] < 0:
        raise ConfigError("validate_every, num_workers and grad_clip must be >= 0")
    require_choice(conf["distributed"]["backend"], ("auto", "nccl", "gloo"),
                   "distributed.backend")
    if not isinstance(conf["train_only"], list):
        raise ConfigError(f"train_only must be a list of model parts, got {conf['train_only']!r}")
    for part in conf["train_only"]:
        require_choice(part, TRAINABLE_PARTS, "train_only")
    return conf


def load_config(path, overrides=()) -> dict:
    """Read a YAML config, apply 'key.sub=value' overrides, merge onto the defaults."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file")
    raw = read_yaml(path, "config") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: a training config is a mapping of keys, got "
                          f"{type(raw).__name__}")
    try:
        return training_config(apply_overrides(raw, overrides), name=path.stem)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from exc


def config_differences(saved: dict, current: dict) -> list[str]:
    """Keys whose values differ and that a resumed run may not change. A key the saved config
    lacks (written before the key existed) counts as its default."""
    defaults = flatten(DEFAULT_CONFIG)
    a, b = flatten(saved), flatten(current)
    if "stage" in a:
        a["stage"] = STAGE_ALIASES.get(a["stage"], a["stage"])
    for key, value in defaults.items():
        if key not in a and not any(k.startswith(key + ".") for k in a):
            a[key] = value
    changed = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return [k for k in changed if k not in RESUMABLE_CHANGES]
