"""Evaluation: accuracy per label head and where the glimpses went.

Localisation, objects = the task's boxes (digits only, never distractors or noise):
  * hit rate: the fraction of glimpse centres inside an object box;
  * coverage: the fraction of objects lying wholly inside some glimpse window whose side is at most
    4x the object's longer side (seen, at a usable resolution).
Both are reported for the model's glimpses and, as references, for uniformly random glimpses and for
glimpses drawn from the learned prior alone.

Without boxes (a user's folder), whether location learning has started shows in signals read from labels and the
model alone (`model.location`): the proxy attention's own accuracy (anchor=attention/presence: what the proxy alone
says; with the presence anchor also whether it says rightly that an object is there, which rises from the share of
the larger of object and background as the anchor finds the objects), and the spread of the first glimpse's distribution over
cells (its entropy over the log of the valid cells: 1 = uniform, falling as the model settles where to look);
the trainer adds how often the first glimpse's cell repeats the last epoch's.
"""

from __future__ import annotations

import torch
from tqdm import tqdm

from .config import parse_policy
from .distributed import Cluster
from .model.classifier import any_object_heads
from .model.glimpse_sampler import glimpse_boxes_pixels
from .model.noise import Noise, sample_key
from .tasks.base import collate

COVERAGE_MAX_RATIO = 4.0


def windows_contain(windows: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """windows (T, 4), boxes (N, 4), both (x0, y0, x1, y1) -> (T, N): window t contains all of box n."""
    w, b = windows[:, None], boxes[None]
    return (w[..., 0] <= b[..., 0]) & (w[..., 1] <= b[..., 1]) & (w[..., 2] >= b[..., 2]) & (w[..., 3] >= b[..., 3])


def localisation_counts(boxes: list, windows: torch.Tensor) -> dict:
    """boxes: B tensors (N_b, 4); windows: (B, T, 4) -> counts of hits and covered objects."""
    hits = glimpses = covered = objects = 0
    for objs, wins in zip(boxes, windows):
        glimpses += len(wins)
        if len(objs) == 0:
            continue
        cx, cy = (wins[:, 0] + wins[:, 2]) / 2, (wins[:, 1] + wins[:, 3]) / 2
        inside = (cx[:, None] >= objs[:, 0]) & (cx[:, None] < objs[:, 2]) & (cy[:, None] >= objs[:, 1]) & (cy[:, None] < objs[:, 3])
        hits += int(inside.any(1).sum())
        contains = windows_contain(wins, objs)
        object_side = torch.maximum(objs[:, 2] - objs[:, 0], objs[:, 3] - objs[:, 1])
        small_enough = (wins[:, None, 2] - wins[:, None, 0]) <= COVERAGE_MAX_RATIO * object_side[None]
        covered += int((contains & small_enough).any(0).sum())
        objects += len(objs)
    return {"hits": hits, "glimpses": glimpses, "covered": covered, "objects": objects}


class HeadScores:
    """Accumulates accuracy (class heads) or exact match and macro-F1 (multilabel heads)."""

    def __init__(self, heads: list[dict]):
        self.heads = heads
        self.correct = {h["name"]: 0 for h in heads}
        self.count = 0
        self.confusion = {h["name"]: torch.zeros(3, h["num_classes"]) for h in heads if h["kind"] == "multilabel"}
        self.absolute_error = {h["name"]: 0 for h in heads if h["kind"] == "count"}  # count heads: sum |k^ - k|

    def add(self, probs: dict, labels: dict):
        self.count += len(next(iter(labels.values())))
        for head in self.heads:
            name, p, y = head["name"], probs[head["name"]].cpu(), labels[head["name"]].cpu()
            if head["kind"] == "multilabel":
                pred, truth = p > 0.5, y > 0.5
                self.correct[name] += int((pred == truth).all(1).sum())
                conf = self.confusion[name]
                conf[0] += (pred & truth).sum(0)
                conf[1] += (pred & ~truth).sum(0)
                conf[2] += (~pred & truth).sum(0)
            else:
                self.correct[name] += int((p.argmax(1) == y).sum())
                if name in self.absolute_error:
                    self.absolute_error[name] += int((p.argmax(1) - y).abs().sum())

    def merge_ranks(self, cluster: Cluster) -> None:
        """Sum the counts of every rank into each rank's copy (exact: they are integer counts)."""
        if not cluster.active:
            return
        names = [h["name"] for h in self.heads]
        errors = list(self.absolute_error)
        packed = torch.tensor([float(self.count)] + [float(self.correct[n]) for n in names]
                              + [float(self.absolute_error[n]) for n in errors], dtype=torch.float64)
        packed = cluster.sum(packed)
        self.count, self.correct = int(packed[0]), {n: int(v) for n, v in zip(names, packed[1:1 + len(names)])}
        self.absolute_error = {n: int(v) for n, v in zip(errors, packed[1 + len(names):])}
        self.confusion = {n: cluster.sum(c) for n, c in self.confusion.items()}

    def result(self) -> dict:
        out = {}
        for head in self.heads:
            name = head["name"]
            key = "exact_match" if head["kind"] == "multilabel" else "accuracy"
            out[name] = {key: self.correct[name] / max(self.count, 1)}
            if name in self.absolute_error:
                out[name]["mean_absolute_error"] = self.absolute_error[name] / max(self.count, 1)
            if name in self.confusion:
                tp, fp, fn = self.confusion[name]
                out[name]["macro_f1"] = float((2 * tp / (2 * tp + fp + fn).clamp_min(1)).mean())
        return out


def head_probabilities(logits: dict, heads: list[dict]) -> dict:
    return {
        h["name"]: torch.sigmoid(logits[h["name"]]) if h["kind"] == "multilabel" else torch.softmax(logits[h["name"]], -1)
        for h in heads
    }


EVALUATION_STREAM = 1 << 40  # noise streams of evaluation passes, apart from the training epochs' (model/noise.py)


def evaluation_noise(indices, seed: int, draw: int, device=None) -> Noise | None:
    """Noise for posterior draw `draw` of the samples `indices`: keyed by (seed, draw, index), so a sample's glimpses
    do not depend on its batch or rank. None (torch's global generator) without indices."""
    if indices is None:
        return None
    return Noise.keyed([sample_key(seed, EVALUATION_STREAM + draw, i) for i in indices], device)


@torch.no_grad()
def predict_batch(model, batch, policy: str = "mode", source: str = "posterior", indices=None, seed: int = 0):
    """Class probabilities (averaged over K posterior samples for "samples:K") and the first pass's output.
    indices: the samples' dataset indices, which key their random draws (see evaluation_noise)."""
    samples = parse_policy(policy)
    heads = model.config.heads
    device = batch.proxy.device
    first = model(batch.images, batch.proxy, batch.proxy_mask, source=source, sample=samples > 0 or source != "posterior",
                  noise=evaluation_noise(indices, seed, 0, device), kl=False)
    probs = head_probabilities(first.logits, heads)
    for draw in range(1, max(samples, 1)):
        more = model(batch.images, batch.proxy, batch.proxy_mask, source=source, sample=True, kl=False,
                     noise=evaluation_noise(indices, seed, draw, device))
        more = head_probabilities(more.logits, heads)
        probs = {k: probs[k] + more[k] for k in probs}
    if samples > 1:
        probs = {k: v / samples for k, v in probs.items()}
    return probs, first


@torch.no_grad()
def evaluate(model, task, policy: str = "mode", batch_size: int = 128, references: bool = True, progress: bool = True,
             limit: int | None = None, seed: int = 0, cluster: Cluster | None = None, first_cells: bool = False) -> dict:
    """Accuracy per head and localisation on `task`, with random/prior-glimpse references if asked; first_cells: the
    (N,) cells of every sample's first glimpse under "first_cells" (-1 without a cell grid), for the trainer.

    Random draws are keyed by (seed, draw, sample index) and leave the caller's generator untouched. With a
    cluster of N processes, each evaluates a contiguous 1/N of the samples (each sample exactly once) and every
    rank returns the totals, equal to a one-process evaluation's."""
    model.eval()
    cluster = cluster or Cluster()
    count = len(task) if limit is None else min(limit, len(task))
    mine = cluster.split(count)
    device = next(iter(model.parameters())).device
    sources = ["posterior"] + (list(model.reference_sources) if references else [])
    scores = {s: HeadScores(model.config.heads) for s in sources}
    counts = {s: {"hits": 0, "glimpses": 0, "covered": 0, "objects": 0} for s in sources}
    reads = {"pixels": 0, "tiles": 0, "image_pixels": 0}  # the model's own pass, proxy included (images.LargeImage)
    looks = LookSignals(model.config, count)
    starts = range(mine.start, mine.stop, batch_size)
    for start in tqdm(starts, desc="evaluate", disable=not progress, leave=False):
        indices = range(start, min(start + batch_size, mine.stop))
        batch = collate([task[i] for i in indices]).to(device)
        for source in sources:
            probs, output = predict_batch(model, batch, policy if source == "posterior" else "mode", source, indices, seed)
            if source == "posterior":  # fresh images: what they counted so far is the proxy and this pass
                reads = add_reads(reads, batch.images)
                looks.add(output, batch.labels, start)
            scores[source].add(probs, batch.labels)
            found = localisation_counts(batch.boxes, glimpse_boxes_pixels(batch.images, output.z.cpu()))
            counts[source] = {k: counts[source][k] + found[k] for k in found}
    for source in sources:
        scores[source].merge_ranks(cluster)
        keys = sorted(counts[source])
        totals = cluster.sum(torch.tensor([counts[source][k] for k in keys], dtype=torch.float64))
        counts[source] = {k: int(v) for k, v in zip(keys, totals)}
    c = model.config
    pixels, tiles, image_pixels = (float(v) for v in cluster.sum(torch.tensor(
        [reads["pixels"], reads["tiles"], reads["image_pixels"]], dtype=torch.float64)))
    samples = max(scores["posterior"].count, 1)
    result = {
        "samples": scores["posterior"].count,
        "policy": policy,
        "architecture": c.architecture,
        "glimpses": model.glimpses_per_image,
        # where the model has glimpses (a baseline's config holds only what it reads: config.BASELINE_FIELDS)
        **{k: v for k, v in c.to_dict().items() if k in ("glimpse_size", "s_min", "s_max", "reader")},
        "pixels_read": pixels / samples,  # per image, by images.LargeImage's definition (proxy and margins included)
        "pixels_read_fraction": pixels / image_pixels if image_pixels else None,
        "tiles_decoded": tiles / samples,  # per image, where files are tiled (else 0)
    }
    for source in sources:
        n = counts[source]
        result["model" if source == "posterior" else f"{source}_glimpses"] = {
            "heads": scores[source].result(), "hit_rate": n["hits"] / max(n["glimpses"], 1),
            "coverage": n["covered"] / max(n["objects"], 1), "objects": n["objects"]}
    location, cells = looks.result(cluster, samples)
    result["model"].update({"location": location} if location else {})
    return {**result, "first_cells": cells} if first_cells else result


class LookSignals:
    """Where the model looks, without boxes (the module's docstring): the proxy attention's own scores, the first
    look's spread over cells and every sample's first cell."""

    def __init__(self, config, count: int):
        self.heads, self.proxy_scores = config.heads, HeadScores(config.heads)
        # anchor=presence: how often the proxy alone says rightly whether an object is there (its class may be
        # illegible on the proxy: this is the part that shows the anchor has found the objects)
        self.background = any_object_heads(config.heads, config.background) if config.anchor == "presence" else {}
        self.present = {name: 0 for name in self.background}
        # per sample, so that the totals do not depend on how the samples were split among ranks
        self.spreads, self.cells = torch.zeros(count, dtype=torch.float64), torch.zeros(count, dtype=torch.long)

    def add(self, output, labels: dict, start: int) -> None:
        if output.proxy_logits is not None:
            self.proxy_scores.add(head_probabilities(output.proxy_logits, self.heads), labels)
            for name, background in self.background.items():
                said = output.proxy_logits[name].argmax(1).cpu() != background
                self.present[name] += int((said == (labels[name].cpu() != background)).sum())
        if output.cell_log_probs is not None:
            batch = slice(start, start + len(output.cells))
            self.spreads[batch] = first_look_spread(output.cell_log_probs[:, 0]).cpu().double()
            self.cells[batch] = output.cells[:, 0].cpu() + 1  # 0: not filled by this rank

    def result(self, cluster: Cluster, samples: int) -> tuple[dict, torch.Tensor]:
        """-> ({"proxy_heads", "first_look_spread"} where the model has them, the (N,) first cells (-1: none))."""
        has_proxy_heads, has_cells = cluster.any(self.proxy_scores.count > 0, bool(self.cells.any()))  # a rank may have no samples
        location = {}
        if has_proxy_heads:
            self.proxy_scores.merge_ranks(cluster)
            location["proxy_heads"] = self.proxy_scores.result()
            present = cluster.sum(torch.tensor([float(v) for v in self.present.values()], dtype=torch.float64))
            for (name, _), right in zip(self.present.items(), present):
                location["proxy_heads"][name]["object_or_background"] = float(right) / samples
        if has_cells:
            location["first_look_spread"] = float(cluster.sum(self.spreads).sum()) / samples
        return location, cluster.sum(self.cells) - 1


def first_look_spread(log_probs: torch.Tensor) -> torch.Tensor:
    """(B, c^2) log q over cells (-inf where invalid) -> (B,) entropy / log(valid cells), in [0, 1]."""
    valid = torch.isfinite(log_probs) & (log_probs > -1e8)
    entropy = -torch.where(valid, log_probs.exp() * log_probs, torch.zeros_like(log_probs)).sum(1)
    return entropy / valid.sum(1).clamp_min(2).log()


def add_reads(reads: dict, images) -> dict:
    """Add a batch's pixels requested, tiles decoded and image pixels (each image counted once: a batch may hold
    one image twice)."""
    unique = {id(image): image for image in images}.values()
    return {"pixels": reads["pixels"] + sum(i.pixels_requested for i in unique),
            "tiles": reads["tiles"] + sum(i.tiles_decoded for i in unique),
            "image_pixels": reads["image_pixels"] + sum(i.height * i.width for i in unique)}


def measured_boxes(result: dict) -> bool:
    """Whether an evaluation had boxes to count hits by (a user's folder has none). Results written before objects
    were counted say so only by a hit or a covered object."""
    model = result["model"]
    return model["objects"] > 0 if "objects" in model else bool(model["hit_rate"] or model["coverage"])


def summary_line(result: dict) -> str:
    """One line for logs: accuracy per head, hit rate and coverage beside the references (where the split has boxes
    to measure them by), the box-free signals where the model has them."""
    parts = []
    for name, score in result["model"]["heads"].items():
        parts.append(f"{name} {100 * next(iter(score.values())):.1f}%"
                     + (f" (MAE {score['mean_absolute_error']:.2f})" if "mean_absolute_error" in score else ""))
    boxes = measured_boxes(result)
    line = ", ".join(parts)
    if boxes:
        line += f" | hit {100 * result['model']['hit_rate']:.1f}% cover {100 * result['model']['coverage']:.1f}%"
    location = result["model"].get("location", {})
    for name, score in location.get("proxy_heads", {}).items():
        line += f" | proxy alone: {name} {100 * next(iter(score.values())):.1f}%" + (
            f" (object or not {100 * score['object_or_background']:.1f}%)" if "object_or_background" in score else "")
    if "first_look_spread" in location:
        line += f" | first look: spread {location['first_look_spread']:.2f}"
    if "first_look_repeat" in location:
        line += f", repeat {100 * location['first_look_repeat']:.0f}%"
    for ref in ("random_glimpses", "prior_glimpses"):
        if ref in result and boxes:
            line += f" | {ref.split('_')[0]}: hit {100 * result[ref]['hit_rate']:.1f}% cover {100 * result[ref]['coverage']:.1f}%"
    return line
