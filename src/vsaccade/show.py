"""Pictures of where the model looked: proxy | full image with numbered glimpse windows | the glimpses."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from .evaluate import head_probabilities, measured_boxes  # noqa: E402
from .model.glimpse_sampler import glimpse_boxes_pixels  # noqa: E402

VIEW_SIZE = 768  # the full image is drawn from a view this many pixels on its longer side


def to_display(pixels: torch.Tensor):
    """(C, H, W) -> an array matplotlib shows (grey for 1 channel, RGB for 3, first channel otherwise)."""
    pixels = pixels.detach().float().clamp(0, 1).cpu()
    return pixels.permute(1, 2, 0).numpy() if pixels.shape[0] == 3 else pixels[0].numpy()


@torch.no_grad()
def show_samples(model, samples: list, path, titles: list[str] | None = None) -> Path:
    """Draw one row per sample and save a PNG; returns the path."""
    from .tasks.base import collate

    model.eval()
    batch = collate(samples)
    output = model(batch.images, batch.proxy, batch.proxy_mask, sample=False, kl=False)
    probs = head_probabilities(output.logits, model.config.heads)
    windows = glimpse_boxes_pixels(batch.images, output.z)
    steps = output.glimpses.shape[1]
    columns = 2 + steps
    fig, axes = plt.subplots(len(samples), columns, figsize=(2.2 * columns + 2.2, 2.6 * len(samples)), squeeze=False,
                             gridspec_kw={"width_ratios": [1, 2] + [0.8] * steps})
    colours = plt.cm.autumn(torch.linspace(0, 1, steps).numpy())
    for row, sample in enumerate(samples):
        ax = axes[row]
        ax[0].imshow(to_display(sample.proxy), cmap="gray", vmin=0, vmax=1)
        ax[0].set_title("proxy", fontsize=8)
        image = sample.image
        scale = VIEW_SIZE / max(image.height, image.width)
        view = image.proxy(VIEW_SIZE)
        view = view / view.amax().clamp_min(1e-6)  # area-downsampled small objects are faint: stretch for display
        ax[1].imshow(to_display(view), cmap="gray", vmin=0, vmax=1)
        ax[1].set_xlim(0, image.width * scale)
        ax[1].set_ylim(image.height * scale, 0)
        for box in sample.boxes:
            x0, y0, x1, y1 = (box * scale).tolist()
            ax[1].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="cyan", lw=0.6, ls="--"))
        for t, box in enumerate(windows[row]):
            x0, y0, x1, y1 = (box * scale).tolist()
            ax[1].add_patch(plt.Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=colours[t], lw=1.4))
            ax[1].text(x0, y0, str(t + 1), color=colours[t], fontsize=8, va="bottom", fontweight="bold")
        head = model.config.heads[0]
        p = probs[head["name"]][row]
        truth = sample.labels[head["name"]]
        predicted = (p > 0.5).nonzero().flatten().tolist() if head["kind"] == "multilabel" else int(p.argmax())
        if head["kind"] == "multilabel":
            truth = truth.nonzero().flatten().tolist()
        elif head.get("classes"):  # folder datasets name their classes
            predicted, truth = head["classes"][predicted], head["classes"][int(truth)]
        title = titles[row] if titles else f"{head['name']}: predicted {predicted}, true {truth}"
        ax[1].set_title(f"{title}  ({image.width}x{image.height})", fontsize=8)
        for t in range(steps):
            ax[2 + t].imshow(to_display(output.glimpses[row, t]), cmap="gray", vmin=0, vmax=1)
            counted = (f": counts {output.glimpse_counts[head['name']][row, t]:.1f}"
                       if output.glimpse_counts and head["name"] in output.glimpse_counts else "")
            ax[2 + t].set_title(f"glimpse {t + 1}{counted}", fontsize=8, color=colours[t])
        for a in ax:
            a.set_xticks([])
            a.set_yticks([])
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def draw_overlay(image, boxes: torch.Tensor, caption: str, path, view_size: int = VIEW_SIZE) -> Path:
    """A PNG of the whole image (from a view_size view) with the numbered glimpse windows drawn on it."""
    from PIL import Image, ImageDraw

    scale = view_size / max(image.height, image.width)
    rows, cols = max(1, round(image.height * scale)), max(1, round(image.width * scale))
    view = image.proxy(view_size)[:, :rows, :cols]
    view = (view / view.amax().clamp_min(1e-6)).clamp(0, 1)
    pixels = (view.expand(3, -1, -1) if view.shape[0] == 1 else view[:3]).permute(1, 2, 0).mul(255).byte().numpy()
    picture = Image.fromarray(pixels).convert("RGB")
    draw = ImageDraw.Draw(picture)
    colours = plt.cm.autumn(torch.linspace(0, 1, len(boxes)).numpy())
    for t, box in enumerate(boxes):
        colour = tuple(int(255 * c) for c in colours[t][:3])
        x0, y0, x1, y1 = (box * scale).tolist()
        draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
        draw.text((x0 + 2, max(0, y0 - 11)), str(t + 1), fill=colour)
    draw.text((4, 4), caption, fill=(0, 255, 255))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    picture.save(path)
    return path


def plot_curves(metrics_path, path) -> Path:
    """Learning curves of a run (metrics.jsonl): training loss, accuracy per head, and where the model looks: glimpse
    hit rates where the task has boxes, the box-free signals where the model has them (evaluate.py)."""
    import json

    records = [json.loads(line) for line in Path(metrics_path).read_text().splitlines() if line.strip()]
    epochs = [r["epoch"] for r in records]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 3.6))
    loss_ax.plot(epochs, [r["train"]["loss"] for r in records], "o-", label="train loss (nll + beta KL)")
    loss_ax.set_xlabel("epoch")
    loss_ax.legend(fontsize=8)
    for name in records[0]["validation"]["model"]["heads"]:
        scores = [next(iter(r["validation"]["model"]["heads"][name].values())) for r in records]
        acc_ax.plot(epochs, [100 * s for s in scores], "o-", label=f"validation {name}")
    if measured_boxes(records[-1]["validation"]):
        acc_ax.plot(epochs, [100 * r["validation"]["model"]["hit_rate"] for r in records], "s--", label="validation hit rate")
        acc_ax.plot(epochs, [100 * r["train"]["hit_rate"] for r in records], "^:", label="train hit rate (sampled)")
    looks = [r["validation"]["model"].get("location", {}) for r in records]
    for name, score in looks[-1].get("proxy_heads", {}).items():
        if "object_or_background" in score:
            acc_ax.plot(epochs, [100 * look["proxy_heads"][name]["object_or_background"] for look in looks], "d-.",
                        label=f"proxy alone: object or not ({name})")
    if "first_look_spread" in looks[-1]:
        acc_ax.plot(epochs, [100 * look["first_look_spread"] for look in looks], "x:", label="first look's spread x 100")
    acc_ax.set_xlabel("epoch")
    acc_ax.set_ylabel("%")
    acc_ax.set_ylim(0, 100)
    acc_ax.grid(alpha=0.3)
    acc_ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
