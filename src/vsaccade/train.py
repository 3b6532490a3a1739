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
from .checkpoint import (CheckpointError, load_initial_weights, model_from_checkpoint, read_checkpoint,
                         remove_stale_temporaries, save_checkpoint)
from .config import ConfigError, ModelConfig, ObjectiveConfig, TrainConfig
from .distributed import Cluster
from .evaluate import evaluate, localisation_counts, summary_line
from .images import ImageError
from .model.glimpse_sampler import glimpse_boxes_pixels
from .model import create_model
from .model.noise import Noise, sample_key
from .objective import beta_at, box_supervision, negative_elbo
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
    cells = min(model_config.location_cells, task.proxy_size)
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
          digit_source: str = "auto", data_dir=None, progress: bool = True, log=print) -> dict:
    """Train, select on validation, evaluate the test split once; returns the results (also in results.json).
    Under torchrun each process calls this; rank 0 writes the run directory."""
    cluster = Cluster.from_environment(config.device)
    stop = {"signal": None}

    def request_stop(signum, frame):
        stop["signal"] = signum

    previous = signal.signal(signal.SIGTERM, request_stop) if threading.current_thread() is threading.main_thread() else None
    deterministic_before = torch.are_deterministic_algorithms_enabled()
    try:
        results = _train(model_config, objective, config, Path(out_dir), resume, digit_source, data_dir,
                         progress and cluster.is_main, log if cluster.is_main else (lambda *a, **k: None), cluster, stop)
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


def _train(model_config, objective, config, out, resume, digit_source, data_dir, progress, log, cluster, stop) -> dict:
    if objective.box_supervised:  # fail before any data is read
        if model_config.architecture != "saccader" or model_config.posterior != "mixture":
            raise ConfigError("objective.location_weight, search_weight, box_glimpse_weight and window_weight (box "
                              "supervision) need model.architecture=saccader with model.posterior=mixture")
        if objective.box_glimpse_weight and not model_config.glimpse_heads:
            raise ConfigError("objective.box_glimpse_weight (box supervision) needs model.glimpse_heads=true")
    if model_config.detach_windows and not objective.window_weight:
        raise ConfigError("model.detach_windows leaves the windows' offset and side only the window loss and the KL to "
                          "learn from: set objective.window_weight (with objective.box_window_scale)")
    if config.init_weights and not Path(config.init_weights).is_file():
        raise CheckpointError(f"initial weights not found: {config.init_weights}")
    if config.batch_size % cluster.world_size:
        raise ConfigError(f"train.batch_size ({config.batch_size}) is the global batch and must be divisible by the "
                          f"number of processes ({cluster.world_size})")
    if cluster.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    if config.deterministic:
        torch.use_deterministic_algorithms(True)
    seed_everything(config.seed)
    tasks = build_tasks(config, digit_source, data_dir)
    bad_files = scan_tasks(tasks, config.skip_bad_files, log)
    model_config = model_config_for(tasks["train"], model_config)
    model = create_model(**model_config.to_dict())
    start_epoch, start_step, global_step, images_seen, best, elapsed_before = 0, 0, 0, 0, -math.inf, 0.0
    sums, skipped_total = dict.fromkeys(EPOCH_SUMS, 0.0), 0
    last_path, best_path = out / "last.pt", out / "best.pt"
    payload = None
    if resume and cluster.from_main(last_path.exists):
        if cluster.is_main:
            stale = remove_stale_temporaries(out)
            if stale:
                log(f"removed {len(stale)} unfinished checkpoint write(s) of the killed run")
        payload = cluster.from_main(lambda: read_checkpoint(last_path))
        # compared through from_dict, so fields added to ModelConfig since the run started take their defaults
        if ModelConfig.from_dict(payload["model_config"]).to_dict() != model_config.to_dict():
            raise CheckpointError(f"{last_path} was written by a run with another model config; use a new --out")
        model = model_from_checkpoint(payload, last_path)
        restore_rng(payload["rng"])
        start_epoch, start_step = payload["epoch"], payload["step_in_epoch"]
        global_step, images_seen, best = payload["global_step"], payload["images_seen"], payload["best_validation"]
        elapsed_before = payload.get("train_minutes", 0.0)
        sums = {**sums, **payload.get("epoch_sums", {})}
        skipped_total = payload.get("skipped_steps", 0)
        if cluster.is_main:
            drop_metrics_after(out / "metrics.jsonl", start_epoch)
        log(f"resuming from {last_path}: epoch {start_epoch + 1}, step {start_step}")
    elif config.init_weights:
        log(f"initialised {load_initial_weights(model, config.init_weights)} tensors from {config.init_weights}")
    model.to(cluster.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    if payload is not None:
        optimizer.load_state_dict(payload["optimizer"])
    module = model
    if cluster.active:  # find_unused_parameters: ablations and options leave some parameters out of the loss
        model = torch.nn.parallel.DistributedDataParallel(
            module, device_ids=[cluster.device.index] if cluster.device.type == "cuda" else None,
            find_unused_parameters=True)
    run_info = {
        "model_config": model_config.to_dict(), "objective_config": objective.to_dict(), "train_config": config.to_dict(),
        "task": tasks["train"].describe(), "digit_source": tasks["train"].describe().get("digit_source"),
        "vsaccade_version": code_version(), "torch_threads": torch.get_num_threads(),
        "processes": cluster.world_size, "device": str(cluster.device), "bad_files": bad_files,
        "machine": {"cpus": os.cpu_count(), "load_average_1min_at_start": os.getloadavg()[0], "platform": platform.platform()},
    }
    if cluster.is_main:
        (out / "config.json").write_text(json.dumps(run_info, indent=2))
    started = last_save = time.time()

    def minutes():
        return elapsed_before + (time.time() - started) / 60

    def save(path, epoch, step_in_epoch, metrics, epoch_sums):
        if not cluster.is_main:
            return
        save_checkpoint({
            "model_name": model_config.architecture, **run_info, "state_dict": module.state_dict(),
            "optimizer": optimizer.state_dict(), "rng": rng_state(), "epoch": epoch, "step_in_epoch": step_in_epoch,
            "global_step": global_step, "images_seen": images_seen, "best_validation": best, "metrics": metrics,
            "train_minutes": minutes(), "epoch_sums": epoch_sums, "skipped_steps": skipped_total,
            "scheduler": {"name": config.lr_schedule, "lr": optimizer.param_groups[0]["lr"]},
            "data_order": {"seed": config.seed, "epoch": epoch, "step_in_epoch": step_in_epoch,
                           "batch_size": config.batch_size, "processes": cluster.world_size},
        }, path)

    train_task = tasks["train"]
    weights = balancing_weights(train_task) if config.balance_classes else None
    batches_per_epoch = math.ceil(len(train_task) / config.batch_size)
    heads = model_config.heads
    autocast = torch.autocast(cluster.device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16")
    out_of_time, consecutive_skips = False, 0
    record, beta = {"epoch": start_epoch}, objective.beta
    for epoch in range(start_epoch, config.epochs):
        model.train()
        order = epoch_order(config.seed, epoch, len(train_task), weights)
        global_batches = [order[i * config.batch_size:(i + 1) * config.batch_size] for i in range(batches_per_epoch)]
        shards = [cluster.shard(b) for b in global_batches[start_step:]]
        loader = torch.utils.data.DataLoader(train_task, batch_sampler=shards, collate_fn=collate,
                                             num_workers=config.num_workers, generator=torch.Generator())
        bar = tqdm(zip(range(start_step, batches_per_epoch), shards, loader), total=len(shards),
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
        seconds = {"data": 0.0, "step": 0.0}
        t0 = time.time()
        for step, indices, batch in bar:
            t1 = time.time()
            beta = beta_at(objective, epoch + step / batches_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, (epoch + step / batches_per_epoch) / config.epochs)
            batch = batch.to(cluster.device)
            noise = Noise.keyed([sample_key(config.seed, epoch, i) for i in indices], cluster.device)
            with autocast:
                box_z, targets, fitted = box_supervision(batch.images, batch.boxes, model_config, objective, noise,
                                                         cluster.device)
                output = model(batch.images, batch.proxy, batch.proxy_mask, noise=noise,  # only the saccader reads boxes
                               **({"box_z": box_z} if box_z is not None else {}))
                parts = negative_elbo(output, batch.labels, heads, objective, beta, model_config.estimator, cluster.mean,
                                      targets, fitted)
            loss = parts["loss"].float()
            if faults.nan_loss(global_step + skipped_total + 1, cluster.rank):
                loss = loss * float("nan")
            nonfinite, stopping = cluster.any(not bool(torch.isfinite(loss)), stop["signal"] is not None)
            if stopping:  # this step is not taken: the checkpoint resumes right here
                save(last_path, epoch, step, {}, sums)
                cluster.barrier()
                raise TrainingStopped(f"stopped by signal {stop['signal'] or 'on another rank'} at epoch {epoch + 1}, "
                                      f"step {step}; checkpoint {last_path}; continue with --resume", 128 + signal.SIGTERM)
            if not nonfinite:
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.clip_value:
                    torch.nn.utils.clip_grad_value_(model.parameters(), config.clip_value)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm or math.inf)
                nonfinite = not bool(torch.isfinite(grad_norm))  # the same on every rank: gradients are all-reduced
            if nonfinite:
                optimizer.zero_grad(set_to_none=True)
                skipped_total += 1
                consecutive_skips += 1
                sums["skipped"] += 1
                log(f"step {global_step + 1} (epoch {epoch + 1}, step {step}) skipped: non-finite loss or gradient "
                    f"({consecutive_skips} in a row, {skipped_total} in all)")
                if consecutive_skips >= config.max_nonfinite_steps:
                    save(last_path, epoch, step + 1, {}, sums)
                    raise TrainingStopped(f"training stopped: {consecutive_skips} consecutive steps had a non-finite loss "
                                          f"or gradient (train.max_nonfinite_steps); the weights are those before the "
                                          f"first of them, in {last_path}; try a lower train.lr or train.clip_norm", 1)
            else:
                optimizer.step()
                consecutive_skips = 0
                global_step += 1
                images_seen += len(batch) * cluster.world_size
                sums["loss"] += float((parts["nll"] + beta * parts["kl"]).mean())
                sums["nll"] += float(parts["nll"].mean())
                sums["kl"] += float(parts["kl"].mean())
                if heads[0]["kind"] != "multilabel":
                    first = heads[0]["name"]
                    sums["accuracy"] += float((output.logits[first].argmax(1) == batch.labels[first]).float().mean())
                found = localisation_counts(batch.boxes, glimpse_boxes_pixels(batch.images, output.z.detach().float().cpu()))
                sums["hit_rate"] += found["hits"] / max(found["glimpses"], 1)
                sums["steps"] += 1
                sums["images"] += len(batch) * cluster.world_size
            seconds["data"] += t1 - t0
            seconds["step"] += time.time() - t1
            done = max(sums["steps"], 1)
            bar.set_postfix(loss=f"{sums['loss'] / done:.3f}", acc=f"{sums['accuracy'] / done:.3f}", kl=f"{sums['kl'] / done:.2f}")
            out_of_time = bool(config.max_minutes and cluster.any(minutes() > config.max_minutes)[0])
            periodic = (config.checkpoint_every_steps and global_step % config.checkpoint_every_steps == 0) or \
                cluster.any(time.time() - last_save > CHECKPOINT_EVERY_SECONDS)[0]
            if out_of_time or (periodic and step + 1 < batches_per_epoch):
                save(last_path, epoch, step + 1, {}, sums)
                last_save = time.time()
            faults.kill_if_armed("step", global_step)
            if out_of_time:
                break
            t0 = time.time()
        bar.close()
        start_step = 0
        train_metrics = epoch_metrics(sums, cluster)
        train_metrics["data_fraction"] = seconds["data"] / max(seconds["data"] + seconds["step"], 1e-9)
        train_metrics["images_per_second"] = sums["images"] / max(seconds["data"] + seconds["step"], 1e-9)
        validation = evaluate(module, tasks["validation"], "mode", config.eval_batch_size, references=False,
                              progress=progress, seed=config.seed, cluster=cluster)
        score = mean_head_score(validation)
        improved = score > best
        best = max(best, score)
        record = {"epoch": epoch + 1 if not out_of_time else epoch + step / batches_per_epoch, "global_step": global_step,
                  "beta": beta, "minutes": minutes(), "train": train_metrics, "validation": validation}
        if cluster.is_main:
            with open(out / "metrics.jsonl", "a") as handle:
                handle.write(json.dumps(record) + "\n")
        log(f"epoch {record['epoch']:.2f}: train loss {train_metrics['loss']:.3f} acc {100 * train_metrics['accuracy']:.1f}% "
            f"hit {100 * train_metrics['hit_rate']:.0f}% "
            f"({train_metrics['images_per_second']:.0f} img/s, data {100 * train_metrics['data_fraction']:.0f}%) | "
            f"validation {summary_line(validation)}")
        sums = dict.fromkeys(EPOCH_SUMS, 0.0)
        if improved:
            save(best_path, epoch + 1, 0, record, sums)
        if not out_of_time:
            save(last_path, epoch + 1, 0, record, sums)
            last_save = time.time()
            faults.kill_if_armed("epoch", epoch + 1)
        else:
            log(f"time limit of {config.max_minutes} minutes reached")
            break

    cluster.barrier()  # best.pt is complete before any rank reads it
    best_model = model_from_checkpoint(cluster.from_main(lambda: read_checkpoint(best_path)), best_path).to(cluster.device)
    test = evaluate(best_model, tasks["test"], config.eval_policy, config.eval_batch_size, references=True,
                    progress=progress, seed=config.seed, cluster=cluster)
    results = {**run_info, "train_minutes": minutes(), "images_seen": images_seen, "skipped_steps": skipped_total,
               "epochs_completed": record["epoch"], "best_validation": best, "test": test,
               "checkpoint": str(best_path)}
    if cluster.is_main:
        (out / "results.json").write_text(json.dumps(results, indent=2))
        if (out / "metrics.jsonl").exists():
            from .show import plot_curves

            plot_curves(out / "metrics.jsonl", out / "curves.png")
    log(f"test ({test['samples']} images, best validation checkpoint): {summary_line(test)}")
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


def scan_tasks(tasks: dict, skip_bad: bool, log) -> dict:
    """Open every file of the file-backed splits before training. A bad file stops the run with a one-line error
    naming it, or with skip_bad is left out, logged and counted. Returns {split: [[path, reason], ...]}."""
    bad = {}
    for split, task in tasks.items():
        if not hasattr(task, "scan"):
            continue
        problems = task.scan()
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


def learning_rate(config: TrainConfig, progress: float) -> float:
    """The learning rate after `progress` (0..1) of the planned epochs."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr


def mean_head_score(result: dict) -> float:
    """Model selection score: the mean over heads of accuracy (or exact match)."""
    heads = result["model"]["heads"]
    return sum(next(iter(v.values())) for v in heads.values()) / len(heads)
