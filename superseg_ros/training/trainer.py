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

Several processes (torchrun, see distributed.py): the model is wrapped in
DistributedDataParallel, `batch_size` is per process, and only rank 0 logs, validates and writes
checkpoints. `accumulate` > 1 sums the gradients of that many micro-batches per optimiser step.
"""

from __future__ import annotations

import contextlib
import json
import math
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from ..checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from ..config import ConfigError
from ..extractor import resolve_device
from ..fileio import remove_stale_temp_files, write_atomically
from ..network import HEADS, SuperSegmentation
from ..semantics import validate_semantics
from . import distributed
from .config import config_differences
from .data import StepItems
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


def build_model(config: dict, semantics: dict | None = None, note=tqdm.write
                ) -> SuperSegmentation:
    """From `init.checkpoint` (its architecture wins; `model` may not contradict it) or from
    scratch with the seed; optionally an ImageNet ResNet file for the encoder.

    `semantics`: the class/group table the stage trains the semantic head on (None: any). A
    checkpoint with another table is an error, unless `init.reset_semantic` is set: then only
    the semantic classifier (the last 1x1 convolution) is replaced by a new random one.
    """
    init = config["init"]
    torch.manual_seed(config["seed"])
    if init["checkpoint"]:
        try:
            model = load_model(init["checkpoint"])
        except CheckpointError as exc:
            raise TrainingError(f"init.checkpoint: {exc}") from exc
        if semantics is not None and model.semantics != validate_semantics(
                semantics, len(semantics["classes"])):
            _reset_semantic_classifier(model, semantics, config, note)
        clash = {k: v for k, v in config["model"].items() if model.config.get(k) != v}
        if clash and not init["change_architecture"]:
            raise ConfigError(f"model settings {clash} contradict init.checkpoint "
                              f"{init['checkpoint']} (its model: {model.config}); remove them, "
                              "or set init.change_architecture: true to start the changed "
                              "network from the checkpoint's weights where they fit")
        if clash:
            model = _change_architecture(model, clash, note)
    else:
        model_conf = dict(config["model"])
        if semantics is not None:
            n = len(semantics["classes"])
            if model_conf.get("num_classes", n) != n:
                raise ConfigError(f"model.num_classes {model_conf['num_classes']} contradicts "
                                  f"the stage's labels ({n} classes: "
                                  f"{', '.join(semantics['classes'])}); remove it")
            model_conf["num_classes"] = n
        model = SuperSegmentation(model_conf, semantics)
    if init["imagenet"]:
        report = model.load_imagenet_encoder(init["imagenet"])
        note(f"encoder initialised from {init['imagenet']} "
             f"({len(report['missing'])} encoder keys not in the file)")
    return model


def _change_architecture(model: SuperSegmentation, changes: dict, note) -> SuperSegmentation:
    """The network with `changes` applied to the model config, holding every weight of `model`
    whose name and shape still fit; the others keep their fresh (seeded) initialisation."""
    try:
        changed = SuperSegmentation({**model.config, **changes}, model.semantics)
    except ValueError as exc:  # ConfigError included: a bad value in `model`
        raise ConfigError(f"model settings {changes}: {exc}") from exc
    own, old = changed.state_dict(), model.state_dict()
    kept = {k: v for k, v in old.items() if k in own and own[k].shape == v.shape}
    changed.load_state_dict(kept, strict=False)
    changed.trained_heads = dict(model.trained_heads)
    changed.meta = dict(model.meta)
    fresh = sorted(set(own) - set(kept))
    note(f"init.change_architecture: {changes} applied; {len(kept)} of {len(own)} weights "
         f"from the checkpoint, {len(fresh)} fresh"
         + (f" ({', '.join(fresh[:6])}{', ...' if len(fresh) > 6 else ''})" if fresh else ""))
    return changed


def _reset_semantic_classifier(model: SuperSegmentation, semantics: dict, config: dict,
                               note) -> None:
    init = config["init"]
    n, old = len(semantics["classes"]), model.semantics
    describe = f"{len(old['classes'])} classes ({', '.join(old['classes'][:4])}" + \
        (", ..." if len(old["classes"]) > 4 else "") + ")"
    if not init["reset_semantic"]:
        trained = "trained" if model.trained_heads.get("semantic") else "untrained"
        raise ConfigError(
            f"init.checkpoint {init['checkpoint']} has a semantic head for {describe}, "
            f"{trained}, but this stage trains {n} classes ({', '.join(semantics['classes'])}); "
            "set init.reset_semantic: true to replace its classifier with a new one, or "
            "choose the matching data.label_mode")
    classifier = model.semantic.classifier
    generator = torch.Generator().manual_seed(config["seed"] + 17)
    fresh = nn.Conv2d(classifier.in_channels, n, 1)
    bound = 1 / math.sqrt(classifier.in_channels)  # nn.Conv2d's default init, seeded
    with torch.no_grad():
        fresh.weight.uniform_(-bound, bound, generator=generator)
        fresh.bias.uniform_(-bound, bound, generator=generator)
    model.semantic.classifier = fresh.to(classifier.weight.device)
    model.config["num_classes"] = n
    model.semantics = validate_semantics(semantics, n)
    model.trained_heads["semantic"] = False
    note(f"init.reset_semantic: the semantic classifier of {init['checkpoint']} ({describe}) "
         f"was replaced by a new random one for {n} classes; the rest of the network, the "
         "ASPP and decoder included, keeps the checkpoint's weights")


class Trainer:
    def __init__(self, config: dict, restart: bool = False, progress: bool = True,
                 labels_dir=None):
        self.config = config
        self.output = Path(config["output"])
        if config["threads"]:
            torch.set_num_threads(int(config["threads"]))
        self.ctx = distributed.env_context()
        self.device = distributed.device_for(resolve_device(config["device"]), self.ctx)
        self.ctx = distributed.setup(config, self.device)
        self.main = self.ctx.main  # rank 0 (the only process without torchrun)
        self.progress = progress and self.main
        stage_class = STAGES[config["stage"]]
        semantics = stage_class.model_semantics(config) \
            if hasattr(stage_class, "model_semantics") else None
        self.model = build_model(config, semantics, note=self.say).to(self.device)
        channels = self.model.config["input_channels"]
        self.stage = stage_class(config, channels, labels_dir) if labels_dir else \
            stage_class(config, channels)
        extra = list(self.stage.parameters()) if hasattr(self.stage, "parameters") else []
        if extra:
            self.stage.to(self.device)
        self.frozen = self._freeze(config["train_only"])
        self.net = self._wrap()  # what computes the losses: the model, or DDP around it
        groups = [{"params": [p for p in self.model.parameters() if p.requires_grad]}]
        if extra:  # learned loss weights: no weight decay
            groups.append({"params": extra, "weight_decay": 0.0})
        self.optimizer = torch.optim.Adam(groups, lr=config["optimizer"]["lr"],
                                          betas=tuple(config["optimizer"]["betas"]),
                                          weight_decay=config["optimizer"]["weight_decay"])
        self.amp = bool(config["amp"]) and self.device.type == "cuda"
        if config["amp"] and not self.amp:
            self.say("amp: ignored on the CPU (fp16 autocast needs CUDA)")
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp)
        self.step, self.best, self.elapsed = 0, None, 0.0
        self.history = list(self.model.meta.get("history", []))
        if self.model.meta:
            self.history.append({k: v for k, v in self.model.meta.items() if k != "history"})
        self.last_path = self.output / "checkpoints" / "last.pt"
        self._prepare_output(restart)
        self.writer = self._tensorboard() if self.main else None

    def say(self, text: str) -> None:
        """A note on the console, from rank 0 only."""
        if self.main:
            tqdm.write(text)

    def _freeze(self, parts: list) -> list:
        """With `train_only`, every other part of the model stops learning: no gradient, and its
        BatchNorm statistics stay as loaded (train_step keeps those parts in eval mode)."""
        if not parts:
            return []
        missing = [p for p in parts if getattr(self.model, p, None) is None]
        if missing:
            raise TrainingError(f"train_only: this model has no {', '.join(missing)}")
        frozen = [module for name, module in self.model.named_children() if name not in parts]
        for module in frozen:
            module.requires_grad_(False)
        self.say(f"train_only: training {', '.join(parts)}; "
                 f"{', '.join(n for n, _ in self.model.named_children() if n not in parts)} "
                 "frozen")
        return frozen

    def _wrap(self):
        """DistributedDataParallel around the model under torchrun (optionally SyncBatchNorm)."""
        if not self.ctx.enabled:
            return self.model
        if self.config["distributed"]["sync_batchnorm"]:
            if self.device.type == "cuda":
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            else:
                self.say("distributed.sync_batchnorm: ignored on the CPU (it needs CUDA)")
        # heads no loss of this stage uses (magicpoint: descriptor, semantic) get no gradient
        unused = not set(HEADS) <= set(self.stage.trains)
        return nn.parallel.DistributedDataParallel(
            self.model, device_ids=[self.device.index] if self.device.type == "cuda" else None,
            find_unused_parameters=unused)

    # ----------------------------------------------------------------------------- run folder
    def _prepare_output(self, restart: bool) -> None:
        saved_config = self.output / "config.yaml"
        if self.last_path.exists() and not restart:
            self._resume(saved_config)
        elif self.output.exists() and any(self.output.iterdir()) and not restart and \
                saved_config.exists():
            raise TrainingError(f"{self.output} holds a run without checkpoints/last.pt; use "
                                "--restart to start it over or another output folder")
        distributed.barrier(self.ctx)  # every process has looked before rank 0 writes
        if self.main:
            self.output.mkdir(parents=True, exist_ok=True)
            # A run killed hard (SIGKILL, OOM killer) leaves the temp file of a checkpoint it
            # was writing (fileio.write_atomically); last.pt itself is intact. Delete it: it is
            # as large as a checkpoint and one more would be left by every such crash.
            for stale in remove_stale_temp_files(self.output) + \
                    remove_stale_temp_files(self.output / "checkpoints"):
                self.say(f"removed {stale}, left by an interrupted write")
            if restart and (self.output / "metrics.jsonl").exists():
                (self.output / "metrics.jsonl").unlink()
            elif self.step:
                self._trim_metrics()
            text = yaml.safe_dump(self.config, sort_keys=False)
            write_atomically(saved_config, lambda f: f.write(text.encode()))
        distributed.barrier(self.ctx)

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
            if hasattr(self.stage, "load_state_dict") and "stage" in state:
                self.stage.load_state_dict(state["stage"])
        except (CheckpointError, KeyError, RuntimeError, ValueError) as exc:
            raise TrainingError(f"cannot resume from {self.last_path}: {exc}; use --restart "
                                "to start over") from exc
        self.model.trained_heads = dict(payload["trained_heads"])
        self.step, self.best = int(state["step"]), state["best"]
        self.elapsed = float(state["elapsed"])
        self.history = list(payload["meta"].get("history", self.history))
        world = int(state.get("world_size", 1))
        if world != self.ctx.world:
            self.say(f"note: {self.last_path} was written by a run on {world} process(es), this "
                     f"one has {self.ctx.world}: the steps go on with another global batch, so "
                     "the batches differ from an uninterrupted run's")
        self.say(f"resuming {self.output} at step {self.step}")

    def _trim_metrics(self) -> None:
        """On resume: drop the records of steps after the checkpoint (a run that was killed
        logged them, and they are trained again: each step would appear twice) and a last line
        cut short by the kill, as TensorBoard's purge_step does for its events."""
        path = self.output / "metrics.jsonl"
        if not path.exists():
            return
        lines = path.read_text(errors="replace").splitlines(keepends=True)
        keep = []
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue  # cut short
            step = record.get("step") if isinstance(record, dict) else None
            if line.endswith("\n") and not (isinstance(step, (int, float)) and step > self.step):
                keep.append(line)
        if len(keep) < len(lines):
            write_atomically(path, lambda f: f.write("".join(keep).encode()))
            self.say(f"metrics.jsonl: {len(lines) - len(keep)} record(s) after step {self.step} "
                     "dropped (they are trained again)")

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
        meta = {"stage": self.config["stage"], "name": self.config["name"], "step": self.step,
                "iterations": self.config["schedule"]["iterations"],
                "wall_time_s": round(self.elapsed, 1), "device": str(self.device),
                "config": self.config, "history": self.history}
        if self.ctx.enabled:
            meta["world_size"] = self.ctx.world
        if hasattr(self.stage, "loss_scalars") and self.stage.loss_scalars():
            meta["loss_weights"] = self.stage.loss_scalars()
        return meta

    def trained_heads(self) -> dict:
        heads = dict(self.model.trained_heads)
        heads.update({h: True for h in self.stage.trains})
        return {h: heads.get(h, False) for h in HEADS}

    def save(self, path: Path, with_state: bool = True) -> Path:
        state = None
        if with_state:
            state = {"optimizer": self.optimizer.state_dict(), "scaler": self.scaler.state_dict(),
                     "step": self.step, "best": self.best, "elapsed": self.elapsed,
                     "world_size": self.ctx.world}
            if hasattr(self.stage, "state_dict"):
                state["stage"] = self.stage.state_dict()
        return save_checkpoint(self.model, path, trained_heads=self.trained_heads(),
                               meta=self.meta(), training_state=state)

    # ----------------------------------------------------------------------------- logging
    def log(self, scalars: dict, kind: str = "train") -> None:
        if not self.main:
            return
        record = {"step": self.step, "kind": kind, **{k: float(v) for k, v in scalars.items()}}
        with open(self.output / "metrics.jsonl", "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.writer:
            for key, value in scalars.items():
                self.writer.add_scalar(f"{kind}/{key}", float(value), self.step)

    def log_image(self, tag: str, image_rgb: np.ndarray) -> None:
        if not self.main:
            return
        folder = self.output / "previews"
        folder.mkdir(exist_ok=True)
        cv2.imwrite(str(folder / f"{tag}_{self.step:07d}.png"),
                    cv2.cvtColor(image_rgb, cv2.COLOR_RGB2BGR))
        if self.writer:
            self.writer.add_image(tag, image_rgb, self.step, dataformats="HWC")

    # ----------------------------------------------------------------------------- the loop
    def loader(self) -> DataLoader:
        """Micro-batches of this process, `accumulate` per step (see data.StepItems)."""
        conf = self.config
        sampler = StepItems(self.step, conf["schedule"]["iterations"], conf["batch_size"],
                            self.ctx.world, self.ctx.rank, conf["accumulate"])
        return DataLoader(self.stage.dataset, batch_size=conf["batch_size"], sampler=sampler,
                          num_workers=conf["num_workers"], drop_last=True,
                          pin_memory=self.device.type == "cuda",
                          persistent_workers=False)

    def generator(self, micro: int = 0) -> torch.Generator:
        """The sampling generator of (step, rank, micro-batch); one process without
        accumulation keeps the original seed * 1_000_003 + step."""
        seed = self.config["seed"] * 1_000_003 + self.step
        part = micro * self.ctx.world + self.ctx.rank
        if part:
            seed = int(np.random.SeedSequence([self.config["seed"], self.step, part])
                       .generate_state(1, np.uint64)[0] >> 1)
        return torch.Generator().manual_seed(seed)

    def total_loss(self, losses: dict) -> torch.Tensor:
        if hasattr(self.stage, "total_loss"):
            return self.stage.total_loss(losses)
        return sum(self.stage.weights[k] * v for k, v in losses.items())

    def train_step(self, batches) -> dict:
        """One optimiser step over a list of micro-batches (or one batch dict)."""
        conf = self.config
        batches = [batches] if isinstance(batches, dict) else list(batches)
        for group in self.optimizer.param_groups:
            group["lr"] = conf["optimizer"]["lr"] * learning_rate_factor(self.step,
                                                                         conf["schedule"])
        self.net.train()
        for module in self.frozen:
            module.eval()
        self.optimizer.zero_grad(set_to_none=True)
        n, sums = len(batches), {}
        for micro, batch in enumerate(batches):
            batch = {k: v.to(self.device, non_blocking=True) for k, v in batch.items()}
            last = micro == n - 1
            sync = self.net.no_sync() if (self.ctx.enabled and not last) else \
                contextlib.nullcontext()
            with sync:
                with torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
                    losses, out = self.stage.losses(self.net, batch, self.generator(micro))
                    total = self.total_loss(losses)
                self.scaler.scale(total / n if n > 1 else total).backward()
            for k, v in {"loss": total, **losses}.items():
                sums[k] = sums.get(k, 0.0) + v.detach().float() / n
        extra = list(self.stage.parameters()) if hasattr(self.stage, "parameters") else []
        if self.ctx.enabled:  # DDP averaged the network's gradients; the loss weights' here
            for p in extra:
                if p.grad is not None:
                    distributed.all_reduce_mean(p.grad, self.ctx)
        if conf["grad_clip"]:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), conf["grad_clip"])
        self.scaler.step(self.optimizer)
        self.scaler.update()
        names = list(sums)
        values = distributed.all_reduce_mean(torch.stack([sums[k] for k in names]), self.ctx)
        scalars = dict(zip(names, values.tolist()))
        if not math.isfinite(scalars["loss"]):
            raise TrainingError(f"loss became {scalars['loss']} at step {self.step} "
                                f"({ {k: v for k, v in scalars.items() if k != 'loss'} }); "
                                "lower optimizer.lr or enable grad_clip")
        if hasattr(self.stage, "loss_scalars"):
            scalars.update(self.stage.loss_scalars())
        self._last_batch, self._last_out = batch, out
        return scalars

    def sync_buffers(self) -> None:
        """Rank 0's BatchNorm statistics to every process. DDP sends them at the start of each
        forward pass, so the others' own updates never count; this makes every process hold the
        state that is saved (checkpoints, the end of the run)."""
        if self.ctx.enabled:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)

    def validate(self) -> dict:
        """The stage's validation (call on rank 0 only: it saves best.pt)."""
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

    def out_of_time(self) -> bool:
        """schedule.minutes of wall time (data, steps, validation, checkpoints) are used up;
        every process decides alike (rank 0's clock), so torchrun ranks stop together."""
        minutes = self.config["schedule"]["minutes"]
        if not minutes:
            return False
        return distributed.broadcast_flag(self.ctx, self.elapsed >= minutes * 60)

    def run(self) -> Path:
        conf = self.config
        total = conf["schedule"]["iterations"]
        sums, count, micro = {}, 0, []
        bar = tqdm(total=total, initial=self.step, desc=f"{conf['name']} ({conf['stage']})",
                   unit="step", disable=not self.progress, dynamic_ncols=True)
        t_log = t_last = time.perf_counter()
        for batch in self.loader() if self.step < total else []:
            micro.append(batch)
            if len(micro) < conf["accumulate"]:
                continue
            scalars, micro = self.train_step(micro), []
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
            if self.step % conf["image_every"] == 0 and self.main:
                self.log_image("train", self.stage.preview(self._last_batch, self._last_out))
            if conf["validate_every"] and self.step % conf["validate_every"] == 0 \
                    and self.step < total:
                if self.main:
                    bar.write(f"step {self.step}: " + _format(self.validate()))
                distributed.barrier(self.ctx)
            out_of_time = self.out_of_time()
            if self.step % conf["checkpoint_every"] == 0 or self.step == total or out_of_time:
                self.sync_buffers()
                if self.main:
                    self.save(self.last_path)
                distributed.barrier(self.ctx)
            if out_of_time:
                if self.main:
                    bar.write(f"{conf['name']}: wall-clock budget of "
                              f"{conf['schedule']['minutes']:g} min reached at step {self.step}")
                break
        bar.close()
        self.sync_buffers()
        model_path = self.output / "model.pt"
        if self.main:
            final = self.validate()
            if final:
                tqdm.write(f"validation at step {self.step}: {_format(final)}")
            self.save(self.last_path)
            self.save(model_path, with_state=False)
            if self.writer:
                self.writer.close()
            tqdm.write(f"{conf['name']}: {self.step} steps, {self.elapsed / 60:.1f} min of "
                       f"training -> {model_path}")
        distributed.barrier(self.ctx)
        return model_path


def _format(metrics: dict) -> str:
    return ", ".join(f"{k} {v:.4g}" for k, v in metrics.items())
