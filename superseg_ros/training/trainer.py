"""The training loop shared by all stages: optimiser, schedule, checkpoints, resume, logging.

    trainer = Trainer(config)          # config from training.config.load_config
    model_path = trainer.run()         # <output>/model.pt

Run folder (`config["output"]`):
    config.yaml              the resolved config (a resumed run must match it)
    checkpoints/last.pt      model + optimiser + step, written atomically every checkpoint_every
    checkpoints/best.pt      the best validation result so far (the stage's key metric)
    model.pt                 the final model (a normal checkpoint: superseg-eval, the node ...)
    metrics.jsonl            every logged scalar, one JSON object per line
    tensorboard/             the same scalars plus image overlays (when tensorboard is installed)
    previews/                the overlay images as PNG

Reproducibility: model initialisation, batches (see data.py) and the per-step sampling generator
all derive from `seed` and the step number, so a run resumed from `last.pt` continues with the
same batches and, on the CPU, reaches the same weights as an uninterrupted run.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from ..config import ConfigError
from ..extractor import resolve_device
from ..fileio import write_atomically
from ..network import HEADS, SuperSegmentation
from .config import config_differences
from .data import IndexRange
from .stages import STAGES


class TrainingError(RuntimeError):
    """A run that cannot start or continue; the message says what to do."""


def learning_rate_factor(step: int, schedule: dict) -> float:
    """Linear warm-up to 1, then constant or cosine decay to min_lr_ratio at the last step."""
    warmup, total = schedule["warmup"], schedule["iterations"]
    if warmup and step < warmup:
        return (step + 1) / warmup
    if schedule["decay"] == "constant":
        return 1.0
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    floor = schedule["min_lr_ratio"]
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))


def build_model(config: dict) -> SuperSegmentation:
    """From `init.checkpoint` (its architecture wins; `model` may not contradict it) or from
    scratch with the seed; optionally an ImageNet ResNet file for the encoder."""
    init = config["init"]
    torch.manual_seed(config["seed"])
    if init["checkpoint"]:
        try:
            model = load_model(init["checkpoint"])
        except CheckpointError as exc:
            raise TrainingError(f"init.checkpoint: {exc}") from exc
        clash = {k: v for k, v in config["model"].items() if model.config.get(k) != v}
        if clash:
            raise ConfigError(f"model settings {clash} contradict init.checkpoint "
                              f"{init['checkpoint']} (its model: {model.config}); remove them")
    else:
        model = SuperSegmentation(config["model"])
    if init["imagenet"]:
        report = model.load_imagenet_encoder(init["imagenet"])
        tqdm.write(f"encoder initialised from {init['imagenet']} "
                   f"({len(report['missing'])} encoder keys not in the file)")
    return model


class Trainer:
    def __init__(self, config: dict, restart: bool = False, progress: bool = True,
                 labels_dir=None):
        self.config = config
        self.output = Path(config["output"])
        self.progress = progress
        if config["threads"]:
            torch.set_num_threads(int(config["threads"]))
        self.device = resolve_device(config["device"])
        self.model = build_model(config).to(self.device)
        channels = self.model.config["input_channels"]
        stage_class = STAGES[config["stage"]]
        self.stage = stage_class(config, channels, labels_dir) if labels_dir else \
            stage_class(config, channels)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config["optimizer"]["lr"],
                                          betas=tuple(config["optimizer"]["betas"]),
                                          weight_decay=config["optimizer"]["weight_decay"])
        self.amp = bool(config["amp"]) and self.device.type == "cuda"
        if config["amp"] and not self.amp:
            tqdm.write("amp: ignored on the CPU (fp16 autocast needs CUDA)")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step, self.best, self.elapsed = 0, None, 0.0
        self.history = list(self.model.meta.get("history", []))
        if self.model.meta:
            self.history.append({k: v for k, v in self.model.meta.items() if k != "history"})
        self.last_path = self.output / "checkpoints" / "last.pt"
        self._prepare_output(restart)
        self.writer = self._tensorboard()

    # ----------------------------------------------------------------------------- run folder
    def _prepare_output(self, restart: bool) -> None:
        saved_config = self.output / "config.yaml"
        if self.last_path.exists() and not restart:
            self._resume(saved_config)
        elif self.output.exists() and any(self.output.iterdir()) and not restart and \
                saved_config.exists():
            raise TrainingError(f"{self.output} holds a run without checkpoints/last.pt; use "
                                "--restart to start it over or another output folder")
        self.output.mkdir(parents=True, exist_ok=True)
        if restart and (self.output / "metrics.jsonl").exists():
            (self.output / "metrics.jsonl").unlink()
        text = yaml.safe_dump(self.config, sort_keys=False)
        write_atomically(saved_config, lambda f: f.write(text.encode()))

    def _resume(self, saved_config: Path) -> None:
        if saved_config.exists():
            saved = yaml.safe_load(saved_config.read_text())
            changed = config_differences(saved, self.config)
            if changed:
                raise TrainingError(
                    f"{self.output} holds a run with a different config ({', '.join(changed)}); "
                    "resume it with the same config, or pass --restart / another --output")
        try:
            payload = read_checkpoint(self.last_path)
            state = payload["training_state"]
            self.model.load_state_dict(payload["state_dict"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        except (CheckpointError, KeyError, RuntimeError, ValueError) as exc:
            raise TrainingError(f"cannot resume from {self.last_path}: {exc}; use --restart "
                                "to start over") from exc
        self.model.trained_heads = dict(payload["trained_heads"])
        self.step, self.best = int(state["step"]), state["best"]
        self.elapsed = float(state["elapsed"])
        self.history = list(payload["meta"].get("history", self.history))
        tqdm.write(f"resuming {self.output} at step {self.step}")

    def _tensorboard(self):
        if not self.config["tensorboard"]:
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            tqdm.write("tensorboard is not installed: scalars go to metrics.jsonl only "
                       "(pip install tensorboard for the dashboards)")
            return None
        return SummaryWriter(str(self.output / "tensorboard"), purge_step=self.step or None)

    # ----------------------------------------------------------------------------- checkpoints
    def meta(self) -> dict:
        return {"stage": self.config["stage"], "name": self.config["name"], "step": self.step,
                "iterations": self.config["schedule"]["iterations"],
                "wall_time_s": round(self.elapsed, 1), "device": str(self.device),
                "config": self.config, "history": self.history}

    def trained_heads(self) -> dict:
        heads = dict(self.model.trained_heads)
        heads.update({h: True for h in self.stage.trains})
        return {h: heads.get(h, False) for h in HEADS}

    def save(self, path: Path, with_state: bool = True) -> Path:
        state = None
        if with_state:
            state = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                     "step": self.step, "best": self.best, "elapsed": self.elapsed}
        return save_checkpoint(self.model, path, trained_heads=self.trained_heads(),
                               meta=self.meta(), training_state=state)

    # ----------------------------------------------------------------------------- logging
    def log(self, scalars: dict, kind: str = "train") -> None:
        record = {"step": self.step, "kind": kind, **{k: float(v) for k, v in scalars.items()}}
        with open(self.output / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer:
            for key, value in scalars.items():
                self.writer.add_scalar(f"{kind}/{key}", float(value), self.step)

    def log_image(self, tag: str, image_rgb: np.ndarray) -> None:
        folder = self.output / "previews"
        folder.mkdir(exist_ok=True)
        cv2.imwrite(str(folder / f"{tag}_{self.step:07d}.png"),
                    cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
        if self.writer:
            self.writer.add_image(tag, image_rgb, self.step, dataformats="HWC")

    # ----------------------------------------------------------------------------- the loop
    def loader(self) -> DataLoader:
        conf = self.config
        batch, total = conf["batch_size"], conf["schedule"]["iterations"]
        return DataLoader(self.stage.dataset, batch_size=batch,
                          sampler=IndexRange(self.step * batch, total * batch),
                          num_workers=conf["num_workers"], drop_last=True,
                          pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def train_step(self, batch: dict) -> dict:
        conf = self.config
        batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
        for group in self.optimizer.param_groups:
            group["lr"] = conf["optimizer"]["lr"] * learning_rate_factor(self.step,
                                                                         conf["schedule"])
        generator = torch.Generator().manual_seed(conf["seed"] * 1_000_003 + self.step)
        self.model.train()
        with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            losses, out = self.stage.losses(self.model, batch, generator)
            total = sum(self.stage.weights[k] * v for k, v in losses.items())
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if conf["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), conf["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if not torch.isfinite(total):
            raise TrainingError(f"loss became {float(total)} at step {self.step} "
                                f"({ {k: float(v) for k, v in losses.items()} }); lower "
                                "optimizer.lr or enable grad_clip")
        self._last_batch, self._last_out = batch, out
        return {"loss": float(total.detach()), **{k: float(v.detach()) for k, v in losses.items()}}

    def validate(self) -> dict:
        self.model.eval()
        with torch.inference_mode():
            metrics = self.stage.validate(self.model, self.device)
        self.model.train()
        if not metrics:
            return metrics
        self.log(metrics, "validation")
        key = metrics.get(self.stage.key_metric)
        if key is not None and not math.isnan(key) and (self.best is None or key > self.best):
            self.best = key
            self.save(self.output / "checkpoints" / "best.pt", with_state=False)
        return metrics

    def run(self) -> Path:
        conf = self.config
        total = conf["schedule"]["iterations"]
        sums, count = {}, 0
        bar = tqdm(total=total, initial=self.step, desc=f"{conf['name']} ({conf['stage']})",
                   unit="step", disable=not self.progress, dynamic_ncols=True)
        t_log = t_last = time.perf_counter()
        for batch in self.loader() if self.step < total else []:
            scalars = self.train_step(batch)
            self.step += 1
            now = time.perf_counter()  # wall time: data, step, validation and checkpoints
            self.elapsed, t_last = self.elapsed + now - t_last, now
            for k, v in scalars.items():
                sums[k] = sums.get(k, 0.0) + v
            count += 1
            bar.update(1)
            bar.set_postfix(loss=f"{scalars['loss']:.3f}")
            if self.step % conf["log_every"] == 0 or self.step == total:
                now = time.perf_counter()
                means = {k: v / count for k, v in sums.items()}
                means["lr"] = self.optimizer.param_groups[0]["lr"]
                means["steps_per_s"] = count / max(now - t_log, 1e-9)
                self.log(means)
                sums, count, t_log = {}, 0, now
            if self.step % conf["image_every"] == 0:
                self.log_image("train", self.stage.preview(self._last_batch, self._last_out))
            if conf["validate_every"] and self.step % conf["validate_every"] == 0 \
                    and self.step < total:
                bar.write(f"step {self.step}: " + _format(self.validate()))
            if self.step % conf["checkpoint_every"] == 0 or self.step == total:
                self.save(self.last_path)
        bar.close()
        final = self.validate()
        if final:
            tqdm.write(f"validation at step {self.step}: {_format(final)}")
        self.save(self.last_path)
        model_path = self.save(self.output / "model.pt", with_state=False)
        if self.writer:
            self.writer.close()
        tqdm.write(f"{conf['name']}: {self.step} steps, {self.elapsed / 60:.1f} min of training "
                   f"-> {model_path}")
        return model_path


def _format(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
