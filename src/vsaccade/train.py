"""Training: Adam on the negative ELBO, validation each epoch, checkpoint selection on validation, the test
split evaluated once at the end. A run directory holds:

    config.json       the three configs, the task and the digit source
    metrics.jsonl     one JSON line per epoch (train loss parts, timing, validation scores)
    last.pt / best.pt checkpoints (atomic); last.pt also carries optimiser and RNG state for --resume
    results.json      final test evaluation of best.pt (with localisation and references)
    curves.png        learning curves (loss, validation accuracy, glimpse hit rates)

Under torchrun every process runs `train` and rank 0 writes the directory (distributed.py). last.pt carries
everything a bitwise-exact resume needs (docs/distributed.md); SIGTERM writes it and stops (exit 143); a step whose
loss or gradient is not finite on any rank is skipped by all, and too many in a row stop the run.
"""

from __future__ import annotations

import gc
import json
import math
import os
import platform
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from . import faults
from .atomic import write_text
from .checkpoint import (CheckpointError, load_initial_weights, model_from_checkpoint, optimizer_state, read_checkpoint,
                         remove_stale_temporaries, save_checkpoint)
from .config import CELL_PIXELS, ConfigError, ModelConfig, ObjectiveConfig, TrainConfig, upgrade_model_fields
from .distributed import Cluster
from .evaluate import evaluate, localisation_counts, measured_boxes, summary_line
from .images import ImageError
from .model.glimpse_sampler import glimpse_boxes_pixels
from .model import create_model, model_outputs
from .model.noise import Noise, sample_key
from .box_supervision import box_inputs
from .objective import Objective, beta_at
from .results import summary_of_run, write_summary
from .tasks import collate, make_task

CHECKPOINT_EVERY_SECONDS = 300  # mid-epoch checkpoints, so a killed run loses at most this much work


def build_tasks(config: TrainConfig, digit_source: str = "auto", data_dir=None) -> dict:
    sizes = {"train": config.train_size, "validation": config.validation_size, "test": config.test_size}
    return {
        split: make_task(config.task, split, seed=config.seed, digit_source=digit_source, data_dir=data_dir,
                         **({"size": sizes[split]} if sizes[split] else {}), **config.task_options)
        for split in sizes
    }


def model_config_for(task, model_config: ModelConfig) -> ModelConfig:
    """Fill the task-dependent fields (heads, channels, proxy size) of a model config."""
    heads = [{"name": h.name, "num_classes": h.num_classes, "kind": h.kind, **({"classes": list(h.classes)} if h.classes else {})}
             for h in task.heads]
    cells = min(model_config.location_cells or max(1, task.proxy_size // CELL_PIXELS), task.proxy_size)
    return model_config.replace(heads=heads, image_channels=task.image_channels, proxy_channels=task.proxy_channels,
                                proxy_size=task.proxy_size, location_cells=cells)


def code_version() -> str:
    """The package version, plus the git commit when running from a checkout (recorded in every run)."""
    from . import __version__

    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                                text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return f"{__version__}+{commit}" if commit else __version__


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
             "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 0, 0, 0.0))


def epoch_order(seed: int, epoch: int, size: int, weights: torch.Tensor | None = None) -> list[int]:
    """The training order of one epoch: a pure function of (seed, epoch), so a resumed run skips exactly. With
    per-sample weights, `size` draws with replacement in proportion to them (class-balanced sampling)."""
    generator = torch.Generator().manual_seed(seed * 100_003 + epoch)
    if weights is not None:
        return torch.multinomial(weights, size, replacement=True, generator=generator).tolist()
    return torch.randperm(size, generator=generator).tolist()


def balancing_weights(task) -> torch.Tensor:
    """Per-sample weights inversely proportional to the frequency of the sample's class (first head)."""
    if not hasattr(task, "class_labels"):
        raise ConfigError(f"train.balance_classes needs a task that lists its labels; {task.name!r} does not")
    labels = torch.tensor(task.class_labels())
    counts = torch.bincount(labels).double()
    return 1.0 / counts[labels]


class TrainingStopped(RuntimeError):
    """Training ended early on purpose: SIGTERM (a checkpoint was written; --resume continues) or too many
    non-finite steps. `exit_code` is what the command returns."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


EPOCH_SUMS = ("loss", "nll", "kl", "accuracy", "hit_rate", "steps", "images", "skipped")


def train(model_config: ModelConfig, objective: ObjectiveConfig, config: TrainConfig, out_dir, resume: bool = False,
          digit_source: str = "auto", data_dir=None, progress: bool = True, log=print, provenance: dict | None = None) -> dict:
    """Train, select on validation, evaluate the test split once; returns the results (also in results.json, and
    summarised in summary.json: results.py). provenance: {"preset", "command"} for the summary.
    Under torchrun each process calls this; rank 0 writes the run directory."""
    cluster = Cluster.from_environment(config.device)
    stop = {"signal": None}

    def request_stop(signum, frame):
        stop["signal"] = signum

    previous = signal.signal(signal.SIGTERM, request_stop) if threading.current_thread() is threading.main_thread() else None
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        run = start_run(model_config, objective, config, Path(out_dir), resume, digit_source, data_dir,
                        progress and cluster.is_main, log if cluster.is_main else (lambda *a, **k: None), cluster, stop)
        while run.epoch < config.epochs and not run.out_of_time:
            run_epoch(run)
        results = finish_run(run, provenance or {})
        cluster.barrier()  # no rank tears down its process group while another still writes or evaluates
        return results
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        torch.use_deterministic_algorithms(deterministic_before)
        # DDP holds the process group: free it (and any cycle it sits in) now, so the group is destroyed here and
        # not at interpreter exit, where gloo's threads now and then aborted rank 1 (SIGABRT; it failed a CI run).
        gc.collect()
        cluster.close()


def check_run(model_config: ModelConfig, objective: ObjectiveConfig, config: TrainConfig, cluster: Cluster) -> None:
    """The combinations of configs a run refuses, before any data is read."""
    Objective(objective, model_config.estimator).check(model_outputs(model_config))
    if model_config.window_gradient == "detached" and not objective.window_weight:
        raise ConfigError("model.window_gradient=detached leaves the windows' offset and side only the window loss and the KL to "
                          "learn from: set objective.window_weight (with objective.box_window_scale)")
    if config.init_weights and not Path(config.init_weights).is_file():
        raise CheckpointError(f"initial weights not found: {config.init_weights}")
    if config.batch_size % cluster.world_size:
        raise ConfigError(f"train.batch_size ({config.batch_size}) is the global batch and must be divisible by the "
                          f"number of processes ({cluster.world_size})")


SMALL_CLASS = 20  # a class folder with fewer training images than this gets a warning
IMBALANCE = 5.0  # the largest class this many times the smallest: a warning (unless train.balance_classes)


def minutes_left(seconds: float, steps_done: int, steps_left: int, budget_left: float = math.inf) -> float:
    """Minutes the remaining steps take at the pace of `steps_done` in `seconds`, at most `budget_left`."""
    return max(0.0, min(seconds / 60 / max(steps_done, 1) * steps_left, budget_left))


def clock(minutes: float) -> str:
    """12m, 1h05m."""
    minutes = round(minutes)
    return f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"


def freeze(model, prefixes: str) -> list[str]:
    """train.frozen: the parameters of each comma-separated module (its name as in state_dict: `reader.separate`) are
    not trained, and batch norms among them keep their running statistics (momentum 0: they still normalise each batch
    by its own statistics in training, as they did when trained). Returns the names; an unknown one is an error."""
    wanted = [prefix.strip() for prefix in prefixes.split(",") if prefix.strip()]
    modules = dict(model.named_modules())
    unknown = [prefix for prefix in wanted if prefix not in modules]
    if unknown:
        raise ConfigError(f"train.frozen: this model has no module {', '.join(unknown)} (its top-level modules: "
                          f"{', '.join(name for name, _ in model.named_children())})")
    for prefix in wanted:
        modules[prefix].requires_grad_(False)
        for module in modules[prefix].modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = 0.0
    return wanted


class Run:
    """A training run's state: the model, optimiser, progress and metric sums that last.pt saves and --resume
    restores as one object, with what the loop needs beside (configs, tasks, cluster, run directory)."""

    def __init__(self, model, model_config, objective, config, tasks, cluster, out: Path, log, progress, stop):
        self.module, self.model = model, model  # the bare model; `model` becomes its DDP wrapper under torchrun
        self.model_config, self.objective, self.config, self.tasks = model_config, objective, config, tasks
        self.cluster, self.out, self.log, self.progress, self.stop = cluster, out, log, progress, stop
        if freeze(model, config.frozen):
            log(f"not trained (train.frozen): {config.frozen}")
        self.optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.epoch, self.step_in_epoch, self.global_step, self.images_seen = 0, 0, 0, 0
        self.best, self.minutes_before, self.skipped_total, self.consecutive_skips = -math.inf, 0.0, 0, 0
        self.steps_before = 0  # steps a resumed run had made before this process started
        self.sums = dict.fromkeys(EPOCH_SUMS, 0.0)
        self.out_of_time, self.record, self.beta = False, {"epoch": 0}, objective.beta
        self.loss = Objective(objective, model_config.estimator)
        self.started = self.last_save = time.time()
        self.run_info: dict = {}
        self.first_cells = None  # the validation samples' first-glimpse cells at the last epoch's end (evaluate.py)
        self.batches_per_epoch = math.ceil(len(tasks["train"]) / config.batch_size)
        self.autocast = torch.autocast(cluster.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")

    def minutes(self) -> float:
        return self.minutes_before + (time.time() - self.started) / 60

    def minutes_left(self) -> float:
        """The run's remaining wall time at this process's pace so far (validation included), within max_minutes."""
        return minutes_left(time.time() - self.started, self.global_step - self.steps_before,
                            self.config.epochs * self.batches_per_epoch - self.global_step,
                            self.config.max_minutes - self.minutes() if self.config.max_minutes else math.inf)

    def restore(self, payload: dict, path) -> None:
        self.optimizer.load_state_dict(optimizer_state(payload, self.module, path))
        restore_rng(payload["rng"])
        self.epoch, self.step_in_epoch = payload["epoch"], payload["step_in_epoch"]
        self.global_step, self.images_seen, self.best = payload["global_step"], payload["images_seen"], payload["best_validation"]
        self.steps_before = self.global_step
        self.minutes_before = payload.get("train_minutes", 0.0)
        self.sums = {**self.sums, **payload.get("epoch_sums", {})}
        self.skipped_total = payload.get("skipped_steps", 0)
        self.first_cells = payload.get("validation_first_cells")

    def save(self, path: Path, epoch: int, step_in_epoch: int, metrics: dict) -> None:
        if not self.cluster.is_main:
            return
        config = self.config
        save_checkpoint({
            "model_name": self.model_config.architecture, **self.run_info, "state_dict": self.module.state_dict(),
            "optimizer": self.optimizer.state_dict(), "rng": rng_state(), "epoch": epoch, "step_in_epoch": step_in_epoch,
            "global_step": self.global_step, "images_seen": self.images_seen, "best_validation": self.best,
            "metrics": metrics, "train_minutes": self.minutes(), "epoch_sums": self.sums,
            "skipped_steps": self.skipped_total, "validation_first_cells": self.first_cells,
            "scheduler": {"name": config.lr_schedule, "lr": self.optimizer.param_groups[0]["lr"]},
            "data_order": {"seed": config.seed, "epoch": epoch, "step_in_epoch": step_in_epoch,
                           "batch_size": config.batch_size, "processes": self.cluster.world_size},
        }, path)


def start_run(model_config, objective, config, out, resume, digit_source, data_dir, progress, log, cluster, stop) -> Run:
    """Check the configs, build the tasks and model, and restore the run's state from last.pt (--resume) or start it."""
    check_run(model_config, objective, config, cluster)
    if cluster.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(config.seed)
    tasks = build_tasks(config, digit_source, data_dir)
    bad_files = scan_tasks(tasks, config.skip_bad_files, log, model_config.glimpse_size)
    describe_classes(tasks, config, log)
    if objective.box_supervised and getattr(tasks["train"], "boxes", None) == {}:
        raise ConfigError("box supervision (objective.location_weight, search_weight, box_glimpse_weight, window_weight) "
                          "needs boxes, and this folder's training split has none: set task.boxes=DIR, the folder "
                          "`vsaccade generate` writes beside the images (DST-boxes)")
    model_config = model_config_for(tasks["train"], model_config)
    model, last_path, payload = create_model(**model_config.to_dict()), out / "last.pt", None
    if resume and cluster.from_main(last_path.exists):
        if cluster.is_main:
            stale = remove_stale_temporaries(out)
            if stale:
                log(f"removed {len(stale)} unfinished checkpoint write(s) of the killed run")
        payload = cluster.from_main(lambda: read_checkpoint(last_path))
        # compared through from_dict, so fields added to ModelConfig since the run started take their defaults
        if ModelConfig.from_dict(upgrade_model_fields(payload["model_config"])).to_dict() != model_config.to_dict():
            raise CheckpointError(f"{last_path} was written by a run with another model config; use a new --out")
        model = model_from_checkpoint(payload, last_path)
    elif config.init_weights:
        log(f"initialised {load_initial_weights(model, config.init_weights)} tensors from {config.init_weights}")
    run = Run(model.to(cluster.device), model_config, objective, config, tasks, cluster, out, log, progress, stop)
    if payload is not None:
        run.restore(payload, last_path)
        run.record = {"epoch": run.epoch}
        if cluster.is_main:
            drop_metrics_after(out / "metrics.jsonl", run.epoch)
        log(f"resuming from {last_path}: epoch {run.epoch + 1}, step {run.step_in_epoch}")
    if cluster.active:
        run.model = distributed_model(run)
    run.run_info = {
        "model_config": model_config.to_dict(), "objective_config": objective.to_dict(), "train_config": config.to_dict(),
        "task": tasks["train"].describe(), "digit_source": tasks["train"].describe().get("digit_source"),
        "vsaccade_version": code_version(), "torch_threads": torch.get_num_threads(),
        "processes": cluster.world_size, "device": str(cluster.device), "bad_files": bad_files,
        "machine": {"cpus": os.cpu_count(), "load_average_1min_at_start": os.getloadavg()[0], "platform": platform.platform()},
    }
    if cluster.is_main:
        write_text(out / "config.json", json.dumps(run.run_info, indent=2))
    run.started = run.last_save = time.time()
    return run


def distributed_model(run: Run):
    """The model under DDP. Parameters that no term of this run's loss reaches (found by one forward and backward on
    the first batch, which changes nothing) are frozen first, so DDP never waits for their gradients and needs no
    find_unused_parameters: every preset trains every parameter (tests/test_parts.py); ablations such as
    policy=random leave some untrained."""
    cluster, module = run.cluster, run.module
    indices = run.cluster.shard(epoch_order(run.config.seed, run.epoch, len(run.tasks["train"]))[:run.config.batch_size])
    module.zero_grad(set_to_none=True)
    step_loss(run, module, collate([run.tasks["train"][i] for i in indices]).to(cluster.device), indices, run.epoch, 0)[0]\
        .backward()
    # ranks agree: frozen where no rank's shard reached it; a parameter some reached and some did not (no model
    # does that today) falls back to DDP's search for unused parameters rather than hang
    names = [name for name, _ in module.named_parameters()]
    counts = cluster.sum(torch.tensor([float(p.requires_grad and p.grad is None) for p in module.parameters()],
                                      dtype=torch.float64))
    unused = [name for name, count in zip(names, counts.tolist()) if count == cluster.world_size]
    mixed = any(0 < count < cluster.world_size for count in counts.tolist())
    module.zero_grad(set_to_none=True)
    for name, parameter in module.named_parameters():
        parameter.requires_grad_(parameter.requires_grad and name not in unused)
    if unused:
        run.log(f"{len(unused)} parameter tensor(s) no loss term of this run trains are frozen: {', '.join(unused[:6])}"
                + (" ..." if len(unused) > 6 else ""))
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[cluster.device.index] if cluster.device.type == "cuda" else None,
        find_unused_parameters=mixed)


def step_loss(run: Run, model, batch, indices, epoch: int, step: int):
    """(loss, its parts, the model's output) of one batch: box supervision's inputs where the objective asks for them,
    the model's forward and the objective, at the KL weight of this point of training."""
    config, objective = run.config, run.objective
    run.beta = beta_at(objective, epoch + step / run.batches_per_epoch)
    noise = Noise.keyed([sample_key(config.seed, epoch, i) for i in indices], run.cluster.device)
    with run.autocast:
        box = box_inputs(batch.images, batch.boxes, run.model_config, objective, noise, run.cluster.device)
        output = model(batch.images, batch.proxy, batch.proxy_mask, noise=noise,  # only the saccader reads boxes
                       **({"box_z": box.box_z} if box.box_z is not None else {}))
        parts = run.loss(output, batch.labels, run.model_config.heads, run.beta, run.cluster.mean, box)
    return parts["loss"].float(), parts, output


def train_step(run: Run, batch, indices, epoch: int, step: int) -> None:
    """One optimiser step on one batch (this rank's shard), or, where the loss or gradient is not finite on any rank,
    the step skipped by all. SIGTERM on any rank: last.pt is written before this step and the run stops."""
    cluster, config = run.cluster, run.config
    for group in run.optimizer.param_groups:
        group["lr"] = learning_rate(config, (epoch + step / run.batches_per_epoch) / config.epochs)
    batch = batch.to(cluster.device)
    loss, parts, output = step_loss(run, run.model, batch, indices, epoch, step)
    if faults.nan_loss(run.global_step + run.skipped_total + 1, cluster.rank):
        loss = loss * float("nan")
    nonfinite, stopping = cluster.any(not bool(torch.isfinite(loss)), run.stop["signal"] is not None)
    if stopping:  # this step is not taken: the checkpoint resumes right here
        run.save(run.out / "last.pt", epoch, step, {})
        cluster.barrier()
        raise TrainingStopped(f"stopped by signal {run.stop['signal'] or 'on another rank'} at epoch {epoch + 1}, "
                              f"step {step}; checkpoint {run.out / 'last.pt'}; continue with --resume", 128 + signal.SIGTERM)
    if not nonfinite:
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_value:
            torch.nn.utils.clip_grad_value_(run.model.parameters(), config.clip_value)
        grad_norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), config.clip_norm or math.inf)
        nonfinite = not bool(torch.isfinite(grad_norm))  # the same on every rank: gradients are all-reduced
    if nonfinite:
        skip_step(run, epoch, step)
    else:
        run.optimizer.step()
        run.consecutive_skips = 0
        run.global_step += 1
        run.images_seen += len(batch) * cluster.world_size
        add_step_metrics(run, parts, output, batch)


def skip_step(run: Run, epoch: int, step: int) -> None:
    run.optimizer.zero_grad(set_to_none=True)
    run.skipped_total += 1
    run.consecutive_skips += 1
    run.sums["skipped"] += 1
    run.log(f"step {run.global_step + 1} (epoch {epoch + 1}, step {step}) skipped: non-finite loss or gradient "
            f"({run.consecutive_skips} in a row, {run.skipped_total} in all)")
    if run.consecutive_skips >= run.config.max_nonfinite_steps:
        run.save(run.out / "last.pt", epoch, step + 1, {})
        raise TrainingStopped(f"training stopped: {run.consecutive_skips} consecutive steps had a non-finite loss "
                              f"or gradient (train.max_nonfinite_steps); the weights are those before the "
                              f"first of them, in {run.out / 'last.pt'}; try a lower train.lr or train.clip_norm", 1)


def add_step_metrics(run: Run, parts: dict, output, batch) -> None:
    sums, heads = run.sums, run.model_config.heads
    sums["loss"] += float((parts["nll"] + run.beta * parts["kl"]).mean())
    sums["nll"] += float(parts["nll"].mean())
    sums["kl"] += float(parts["kl"].mean())
    if heads[0]["kind"] != "multilabel":
        first = heads[0]["name"]
        sums["accuracy"] += float((output.logits[first].argmax(1) == batch.labels[first]).float().mean())
    found = localisation_counts(batch.boxes, glimpse_boxes_pixels(batch.images, output.z.detach().float().cpu()))
    sums["hit_rate"] += found["hits"] / max(found["glimpses"], 1)
    sums["steps"] += 1
    sums["images"] += len(batch) * run.cluster.world_size


def run_epoch(run: Run) -> None:
    """The rest of epoch `run.epoch` (from `run.step_in_epoch`), then its validation, metrics line and checkpoints."""
    config, cluster, epoch, train_task = run.config, run.cluster, run.epoch, run.tasks["train"]
    run.model.train()
    weights = balancing_weights(train_task) if config.balance_classes else None
    order = epoch_order(config.seed, epoch, len(train_task), weights)
    global_batches = [order[i * config.batch_size:(i + 1) * config.batch_size] for i in range(run.batches_per_epoch)]
    shards = [cluster.shard(b) for b in global_batches[run.step_in_epoch:]]
    # Workers are spawned, not forked: a child forked after libvips started its thread pool waits forever on it
    # (seen as an epoch stuck at 0/N with num_workers=1 on a folder of JPEGs).
    loader = torch.utils.data.DataLoader(train_task, batch_sampler=shards, collate_fn=collate,
                                         num_workers=config.num_workers, generator=torch.Generator(),
                                         multiprocessing_context="spawn" if config.num_workers else None)
    bar = tqdm(zip(range(run.step_in_epoch, run.batches_per_epoch), shards, loader), total=len(shards),
               desc=f"epoch {epoch + 1}/{config.epochs}", disable=not run.progress)
    seconds, step, t0 = {"data": 0.0, "step": 0.0}, run.step_in_epoch, time.time()
    for step, indices, batch in bar:
        t1 = time.time()
        train_step(run, batch, indices, epoch, step)
        seconds["data"] += t1 - t0
        seconds["step"] += time.time() - t1
        done = max(run.sums["steps"], 1)
        bar.set_postfix(loss=f"{run.sums['loss'] / done:.3f}", acc=f"{run.sums['accuracy'] / done:.3f}",
                        kl=f"{run.sums['kl'] / done:.2f}", run_left=clock(run.minutes_left()))
        run.out_of_time = bool(config.max_minutes and cluster.any(run.minutes() > config.max_minutes)[0])
        periodic = (config.checkpoint_every_steps and run.global_step % config.checkpoint_every_steps == 0) or \
            cluster.any(time.time() - run.last_save > CHECKPOINT_EVERY_SECONDS)[0]
        if run.out_of_time or (periodic and step + 1 < run.batches_per_epoch):
            run.save(run.out / "last.pt", epoch, step + 1, {})
            run.last_save = time.time()
        faults.kill_if_armed("step", run.global_step)
        if run.out_of_time:
            break
        t0 = time.time()
    bar.close()
    run.step_in_epoch = 0
    end_epoch(run, step, seconds)


def end_epoch(run: Run, step: int, seconds: dict) -> None:
    """Validation, the metrics line, best.pt where validation improved, and last.pt (unless the time ran out)."""
    config, cluster, epoch = run.config, run.cluster, run.epoch
    train_metrics = epoch_metrics(run.sums, cluster)
    train_metrics["data_fraction"] = seconds["data"] / max(seconds["data"] + seconds["step"], 1e-9)
    train_metrics["images_per_second"] = run.sums["images"] / max(seconds["data"] + seconds["step"], 1e-9)
    validation = evaluate(run.module, run.tasks["validation"], "mode", config.eval_batch_size, references=False,
                          progress=run.progress, seed=config.seed, cluster=cluster, first_cells=True)
    first_cells = validation.pop("first_cells")
    if run.first_cells is not None and (first_cells >= 0).any():
        repeat = float((first_cells == run.first_cells).double().mean())
        validation["model"].setdefault("location", {})["first_look_repeat"] = repeat
    run.first_cells = first_cells
    score = mean_head_score(validation)
    improved = score > run.best
    run.best = max(run.best, score)
    run.record = {"epoch": epoch + 1 if not run.out_of_time else epoch + step / run.batches_per_epoch,
                  "global_step": run.global_step, "beta": run.beta, "minutes": run.minutes(), "train": train_metrics,
                  "validation": validation}
    if cluster.is_main:
        with open(run.out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(run.record) + "\n")
    run.log(f"epoch {run.record['epoch']:.2f}: train loss {train_metrics['loss']:.3f} "
            f"acc {100 * train_metrics['accuracy']:.1f}% "
            + (f"hit {100 * train_metrics['hit_rate']:.0f}% " if measured_boxes(validation) else "") +
            f"({train_metrics['images_per_second']:.0f} img/s, data {100 * train_metrics['data_fraction']:.0f}%) | "
            f"validation {summary_line(validation)}")
    run.sums = dict.fromkeys(EPOCH_SUMS, 0.0)
    if improved:
        run.save(run.out / "best.pt", epoch + 1, 0, run.record)
    if not run.out_of_time:
        run.save(run.out / "last.pt", epoch + 1, 0, run.record)
        run.last_save = time.time()
        faults.kill_if_armed("epoch", epoch + 1)
        run.epoch += 1
    else:
        run.log(f"time limit of {config.max_minutes} minutes reached")


def finish_run(run: Run, provenance: dict) -> dict:
    """The test split evaluated once with best.pt; results.json, summary.json and curves.png."""
    cluster, config, out = run.cluster, run.config, run.out
    cluster.barrier()  # best.pt is complete before any rank reads it
    best_path = out / "best.pt"
    best_model = model_from_checkpoint(cluster.from_main(lambda: read_checkpoint(best_path)), best_path).to(cluster.device)
    test = evaluate(best_model, run.tasks["test"], config.eval_policy, config.eval_batch_size, references=True,
                    progress=run.progress, seed=config.seed, cluster=cluster)
    results = {**run.run_info, "train_minutes": run.minutes(), "images_seen": run.images_seen,
               "skipped_steps": run.skipped_total, "epochs_completed": run.record["epoch"], "best_validation": run.best,
               "test": test, "checkpoint": str(best_path)}
    if cluster.is_main:
        write_text(out / "results.json", json.dumps(results, indent=2))  # atomic: a recipe takes it as "stage done"
        write_summary(summary_of_run(results, out.name, provenance.get("preset", ""), provenance.get("command", "")),
                      out / "summary.json")
        if (out / "metrics.jsonl").exists():
            from .show import plot_curves

            plot_curves(out / "metrics.jsonl", out / "curves.png")
    run.log(f"test ({test['samples']} images, best validation checkpoint): {summary_line(test)}")
    return results


def drop_metrics_after(path: Path, epochs_done: int) -> None:
    """Keep the metrics lines of the epochs a resumed run will not redo (a run killed after logging an epoch but
    before its checkpoint redoes that epoch's tail and logs it again)."""
    if path.exists():
        lines = [line for line in path.read_text().splitlines() if line.strip()]
        kept = [line for line in lines if json.loads(line)["epoch"] <= epochs_done]
        if len(kept) != len(lines):
            path.write_text("".join(line + "\n" for line in kept))


def epoch_metrics(sums: dict, cluster: Cluster) -> dict:
    """Per-step means of the epoch's training figures over every rank's steps, and the steps skipped."""
    keys = ("loss", "nll", "kl", "accuracy", "hit_rate")
    totals = cluster.sum(torch.tensor([sums[k] for k in (*keys, "steps")], dtype=torch.float64))
    steps = max(float(totals[-1]), 1.0)
    return {**{k: float(v) / steps for k, v in zip(keys, totals)}, "skipped_steps": int(sums["skipped"])}


def scan_tasks(tasks: dict, skip_bad: bool, log, glimpse_size: int = 1) -> dict:
    """Open every file of the file-backed splits before training. A bad file (or one smaller than a glimpse) stops
    the run with a one-line error naming it, or with skip_bad is left out, logged and counted. Returns
    {split: [[path, reason], ...]}."""
    bad = {}
    for split, task in tasks.items():
        if not hasattr(task, "scan"):
            continue
        problems = task.scan(min_side=glimpse_size)
        if problems and not skip_bad:
            path, reason = problems[0]
            more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
            raise ImageError(f"{split} split: {reason}{more}; fix or remove it, or pass --skip-bad to leave bad files out")
        if problems:
            task.exclude([path for path, _ in problems])
            for path, reason in problems:
                log(f"skipped ({split}): {reason}")
            log(f"{split} split: {len(problems)} bad file(s) left out, {len(task)} kept")
        bad[split] = [[str(path), reason] for path, reason in problems]
    return bad


def describe_classes(tasks: dict, config: TrainConfig, log) -> None:
    """For tasks made of class folders: each split's images per class, and a warning where classes are too small
    or too unequal to learn as they are."""
    if not all(hasattr(task, "class_counts") for task in tasks.values()):
        return
    for split, task in tasks.items():
        how = " (held out of the training folder)" if split == "validation" and task.held_out else ""
        log(f"{split}: {len(task)} images{how}: " + ", ".join(f"{k} {n}" for k, n in task.class_counts().items()))
    counts = tasks["train"].class_counts()
    small = [f"{name} ({count})" for name, count in counts.items() if count < SMALL_CLASS]
    if small:
        log(f"warning: fewer than {SMALL_CLASS} training images in {', '.join(small)}: from labels alone, expect "
            "these classes to be learned poorly or not at all")
    ratio = max(counts.values()) / max(min(counts.values()), 1)
    if ratio > IMBALANCE and not config.balance_classes:
        log(f"warning: the largest class has {ratio:.0f}x the training images of the smallest: a model may learn "
            "to answer the large ones; --set train.balance_classes=true draws every class equally often")


def learning_rate(config: TrainConfig, progress: float) -> float:
    """The learning rate after `progress` (0..1) of the planned epochs."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr


def mean_head_score(result: dict) -> float:
    """Model selection score: the mean over heads of accuracy (or exact match)."""
    heads = result["model"]["heads"]
    return sum(next(iter(v.values())) for v in heads.values()) / len(heads)
