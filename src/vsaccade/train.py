"""Training: Adam on the negative ELBO, validation each epoch, checkpoint selection on validation, the test
split evaluated once at the end. A run directory holds:

    config.json       the three configs, the task and the digit source
    metrics.jsonl     one JSON line per epoch (train loss parts, timing, validation scores)
    last.pt / best.pt checkpoints (atomic); last.pt also carries optimiser and RNG state for --resume
    results.json      final test evaluation of best.pt (with localisation and references)
    curves.png        learning curves (loss, validation accuracy, glimpse hit rates)
"""

from __future__ import annotations

import json
import math
import os
import platform
import random
import subprocess
import time
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from .checkpoint import CheckpointError, model_from_checkpoint, read_checkpoint, save_checkpoint
from .config import ModelConfig, ObjectiveConfig, TrainConfig
from .evaluate import evaluate, localisation_counts, summary_line
from .model.glimpse_sampler import glimpse_boxes_pixels
from .model import create_model
from .objective import beta_at, negative_elbo
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
    return {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]), "python_version": random.getstate()[0],
            "numpy": torch.from_numpy(np.random.get_state()[1].astype(np.int64))}


def restore_rng(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), None))
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), 0, 0, 0.0))


def epoch_order(seed: int, epoch: int, size: int) -> list[int]:
    """The training order of one epoch: a pure function of (seed, epoch), so a resumed run skips exactly."""
    return torch.randperm(size, generator=torch.Generator().manual_seed(seed * 100_003 + epoch)).tolist()


def train(model_config: ModelConfig, objective: ObjectiveConfig, config: TrainConfig, out_dir, resume: bool = False,
          digit_source: str = "auto", data_dir=None, progress: bool = True, log=print) -> dict:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if config.threads:
        torch.set_num_threads(config.threads)
    seed_everything(config.seed)
    tasks = build_tasks(config, digit_source, data_dir)
    model_config = model_config_for(tasks["train"], model_config)
    model = create_model(**model_config.to_dict())
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    start_epoch, start_step, global_step, images_seen, best, elapsed_before = 0, 0, 0, 0, -math.inf, 0.0
    last_path, best_path = out / "last.pt", out / "best.pt"
    if resume and last_path.exists():
        payload = read_checkpoint(last_path)
        # compared through from_dict, so fields added to ModelConfig since the run started take their defaults
        if ModelConfig.from_dict(payload["model_config"]).to_dict() != model_config.to_dict():
            raise CheckpointError(f"{last_path} was written by a run with another model config; use a new --out")
        model = model_from_checkpoint(payload, last_path)
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        optimizer.load_state_dict(payload["optimizer"])
        restore_rng(payload["rng"])
        start_epoch, start_step = payload["epoch"], payload["step_in_epoch"]
        global_step, images_seen, best = payload["global_step"], payload["images_seen"], payload["best_validation"]
        elapsed_before = payload.get("train_minutes", 0.0)
        log(f"resuming from {last_path}: epoch {start_epoch + 1}, step {start_step}")
    run_info = {
        "model_config": model_config.to_dict(), "objective_config": objective.to_dict(), "train_config": config.to_dict(),
        "task": tasks["train"].describe(), "digit_source": tasks["train"].describe().get("digit_source"),
        "vsaccade_version": code_version(), "torch_threads": torch.get_num_threads(),
        "machine": {"cpus": os.cpu_count(), "load_average_1min_at_start": os.getloadavg()[0], "platform": platform.platform()},
    }
    (out / "config.json").write_text(json.dumps(run_info, indent=2))

    def minutes():
        return elapsed_before + (time.time() - started) / 60

    def checkpoint_payload(epoch, step_in_epoch, metrics):
        return {"model_name": model_config.architecture, **run_info, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
                "rng": rng_state(), "epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": global_step,
                "images_seen": images_seen,
                "best_validation": best, "metrics": metrics, "train_minutes": minutes()}

    train_task = tasks["train"]
    batches_per_epoch = math.ceil(len(train_task) / config.batch_size)
    started = last_save = time.time()
    out_of_time = False
    record, beta = {"epoch": start_epoch}, objective.beta
    for epoch in range(start_epoch, config.epochs):
        model.train()
        order = epoch_order(config.seed, epoch, len(train_task))
        sums = {"loss": 0.0, "nll": 0.0, "kl": 0.0, "accuracy": 0.0, "hit_rate": 0.0, "data_seconds": 0.0, "step_seconds": 0.0}
        steps = epoch_images = 0
        batches = [order[i * config.batch_size : (i + 1) * config.batch_size] for i in range(start_step, batches_per_epoch)]
        loader = torch.utils.data.DataLoader(train_task, batch_sampler=batches, collate_fn=collate,
                                             num_workers=config.num_workers)
        bar = tqdm(zip(range(start_step, batches_per_epoch), loader), total=len(batches),
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress)
        t0 = time.time()
        for step, batch in bar:
            t1 = time.time()
            beta = beta_at(objective, epoch + step / batches_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = learning_rate(config, (epoch + step / batches_per_epoch) / config.epochs)
            output = model(batch.images, batch.proxy, batch.proxy_mask)
            parts = negative_elbo(output, batch.labels, model_config.heads, objective, beta, model_config.estimator)
            optimizer.zero_grad(set_to_none=True)
            parts["loss"].backward()
            if config.clip_value:
                torch.nn.utils.clip_grad_value_(model.parameters(), config.clip_value)
            if config.clip_norm:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_norm)
            optimizer.step()
            global_step += 1
            images_seen += len(batch)
            epoch_images += len(batch)
            steps += 1
            first_head = model_config.heads[0]["name"]
            sums["loss"] += float((parts["nll"] + beta * parts["kl"]).mean())
            sums["nll"] += float(parts["nll"].mean())
            sums["kl"] += float(parts["kl"].mean())
            if model_config.heads[0]["kind"] == "class":
                sums["accuracy"] += float((output.logits[first_head].argmax(1) == batch.labels[first_head]).float().mean())
            found = localisation_counts(batch.boxes, glimpse_boxes_pixels(batch.images, output.z.detach()))
            sums["hit_rate"] += found["hits"] / max(found["glimpses"], 1)
            sums["data_seconds"] += t1 - t0
            sums["step_seconds"] += time.time() - t1
            bar.set_postfix(loss=f"{sums['loss'] / steps:.3f}", acc=f"{sums['accuracy'] / steps:.3f}", kl=f"{sums['kl'] / steps:.2f}")
            if config.max_minutes and minutes() > config.max_minutes:
                out_of_time = True
                save_checkpoint(checkpoint_payload(epoch, step + 1, {}), last_path)
                break
            if time.time() - last_save > CHECKPOINT_EVERY_SECONDS:
                save_checkpoint(checkpoint_payload(epoch, step + 1, {}), last_path)
                last_save = time.time()
            t0 = time.time()
        bar.close()
        start_step = 0
        train_metrics = {k: v / max(steps, 1) for k, v in sums.items() if not k.endswith("seconds")}
        train_metrics["data_fraction"] = sums["data_seconds"] / max(sums["data_seconds"] + sums["step_seconds"], 1e-9)
        train_metrics["images_per_second"] = epoch_images / max(sums["data_seconds"] + sums["step_seconds"], 1e-9)
        validation = evaluate(model, tasks["validation"], "mode", config.eval_batch_size, references=False, progress=progress)
        score = mean_head_score(validation)
        improved = score > best
        best = max(best, score)
        record = {"epoch": epoch + 1 if not out_of_time else epoch + step / batches_per_epoch, "global_step": global_step,
                  "beta": beta, "minutes": minutes(), "train": train_metrics, "validation": validation}
        with open(out / "metrics.jsonl", "a") as handle:
            handle.write(json.dumps(record) + "\n")
        log(f"epoch {record['epoch']:.2f}: train loss {train_metrics['loss']:.3f} acc {100 * train_metrics['accuracy']:.1f}% "
            f"hit {100 * train_metrics['hit_rate']:.0f}% "
            f"({train_metrics['images_per_second']:.0f} img/s, data {100 * train_metrics['data_fraction']:.0f}%) | "
            f"validation {summary_line(validation)}")
        if improved:
            save_checkpoint(checkpoint_payload(epoch + 1, 0, record), best_path)
        if not out_of_time:
            save_checkpoint(checkpoint_payload(epoch + 1, 0, record), last_path)
            last_save = time.time()
        else:
            log(f"time limit of {config.max_minutes} minutes reached")
            break

    model = model_from_checkpoint(read_checkpoint(best_path), best_path)
    test = evaluate(model, tasks["test"], config.eval_policy, config.eval_batch_size, references=True, progress=progress)
    results = {**run_info, "train_minutes": minutes(), "images_seen": images_seen,
               "epochs_completed": record["epoch"], "best_validation": best, "test": test,
               "checkpoint": str(best_path)}
    (out / "results.json").write_text(json.dumps(results, indent=2))
    if (out / "metrics.jsonl").exists():
        from .show import plot_curves

        plot_curves(out / "metrics.jsonl", out / "curves.png")
    log(f"test ({len(tasks['test'])} images, best validation checkpoint): {summary_line(test)}")
    return results


def learning_rate(config: TrainConfig, progress: float) -> float:
    """The learning rate after `progress` (0..1) of the planned epochs."""
    if config.lr_schedule == "cosine":
        return config.lr * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    return config.lr


def mean_head_score(result: dict) -> float:
    """Model selection score: the mean over heads of accuracy (or exact match)."""
    heads = result["model"]["heads"]
    return sum(next(iter(v.values())) for v in heads.values()) / len(heads)
