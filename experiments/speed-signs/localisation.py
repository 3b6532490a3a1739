"""Can the proxy say where the speed sign is? A diagnostic for the speed-sign benchmarks (docs/benchmarks/files.md,
docs/benchmarks/labels-only.md).

The proxies of a folder dataset (`vsaccade generate speed-signs`) are read once through the real pipeline
(`FolderTask`, cached beside the root) and a per-cell localiser over the saccader's cell grid is trained on them
alone, cheaply, in one of these ways (each cell's features: --reader shallow, one convolution over the cell and half
a cell around it, as model.anchor_network=cell; or deep, four strided 3x3 convolutions, as anchor_network=strided without its batch normalisation; the presence
mode uses the model's own module, normalised):

  * supervised-shallow / supervised-deep: the sign's cell is the target (softmax over cells; images with a sign
    only). An upper bound on what the proxy shows: it uses the boxes, which the method never sees;
  * mil-attention: the class label, through an attention-pooled classifier (model/proxy_attention.py, what
    model.anchor=attention trains with objective.proxy_loss_weight);
  * presence: the class label, through the model's own presence classifier (vsaccade.ProxyAttention with the
    background class `none`: model.anchor=presence);
  * mil-max: "sign or none", max-pooled over cells (--top K: the mean of the K best cells; --heads K: K score maps,
    each max-pooled; --dense-negatives: every cell of a none image is a negative);
  * mil-noisy-or: "sign or none", p(none) = product over cells of sigmoid(-score);
  * mil-instances: "sign or none" given to every cell (cross-entropy averaged over cells);
  * mil-max-classes: the class label, each class's logit max-pooled over cells (cells ranked by their largest logit
    of a class other than none);
  * mil-max-ovr: the class label as one-vs-rest targets, each class's logit max-pooled (cells ranked by the sum of
    their class probabilities);
  * mil-max-evidence: the class label, through K evidence channels per cell (--evidence K), each max-pooled, and a
    linear classifier on the K maxima (cells ranked by their evidence, each channel weighed by its column's norm).

Printed per epoch, on the validation split: whether the top-scoring cell and any of the top 4 cells lie within
one cell of the sign's (top-4: what 4 glimpses could reach), and for the label-only modes the classifier's
sign-vs-none accuracy. Results go to --json. --anchor-of CHECKPOINT trains nothing and measures a trained model's
anchor instead (its hits, how often its top cell is exactly the sign's or one column left of it) and where its first
glimpse lands (the sign's centre from the glimpse's, median and quartiles in pixels, on the first --signs validation
signs, 64 by default). Hits use the boxes: diagnosis only, never selection.

    python experiments/speed-signs/localisation.py --root DATA --boxes DATA-boxes --mode mil-max --reader deep \
        --proxy-size 384 --cells 48 --epochs 3 --seed 0
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
from torch import nn
import torch.nn.functional as F

CELLS, PROXY = 64, 256  # defaults: the speed-signs preset's grid on the DSLR rung (--cells, --proxy-size)


def cached_proxies(root: str, cache: Path, boxes: str = "", proxy_size: int = PROXY) -> dict:
    """The train and validation proxies (vsaccade.cached_proxies, one file per split) in the form used below."""
    import vsaccade

    data = {}
    for split in ("train", "validation"):
        task = vsaccade.make_task("folder", split, root=root, proxy_size=proxy_size, channels=3, boxes=boxes)
        cached = vsaccade.cached_proxies(task, cache.with_name(f"{cache.stem}-{split}.pt"))
        data[split] = {"proxy": cached["proxy"], "label": cached["labels"]["label"],
                       "box": torch.stack([b[0] if len(b) else torch.full((4,), -1.0) for b in cached["boxes"]]),
                       "none": task.classes.index("none"), "height": int(cached["sizes"][0, 0]),
                       "width": int(cached["sizes"][0, 1])}
    return data


def sign_cells(boxes: torch.Tensor, longer_side: int, cells: int = CELLS) -> torch.Tensor:
    scale = cells / longer_side  # image pixels -> cells
    x, y = (boxes[:, 0] + boxes[:, 2]) / 2 * scale, (boxes[:, 1] + boxes[:, 3]) / 2 * scale
    return y.long() * cells + x.long()


def near(found: torch.Tensor, target: torch.Tensor, cells: int = CELLS) -> torch.Tensor:
    return ((found // cells - target // cells).abs() <= 1) & ((found % cells - target % cells).abs() <= 1)


class MaxEvidence(nn.Module):
    def __init__(self, cells_net: nn.Module, evidence: int, classes: int):
        super().__init__()
        self.cells_net, self.head = cells_net, nn.Linear(evidence, classes)

    def forward(self, x, valid, cells):
        evidence = F.adaptive_avg_pool2d(self.cells_net(x), cells).flatten(2).masked_fill(~valid[:, None], -1e9)  # (B, K, c^2)
        weight = self.head.weight.detach().norm(dim=0)  # (K,)
        return torch.einsum("k,bkn->bn", weight, evidence.clamp_min(-1e4)).masked_fill(~valid, -1e9), self.head(evidence.amax(2))


def cell_network(reader: str, out: int, proxy_size: int, cells: int) -> nn.Module:
    """shallow: each cell sees itself and half a cell around it (ProxyAttention's instance network);
    deep: four strided 3x3 convolutions (receptive field 31 input pixels), for inputs larger than the proxy."""
    if reader == "deep":
        return nn.Sequential(nn.Conv2d(3, 16, 3, 2, 1), nn.ReLU(), nn.Conv2d(16, 32, 3, 2, 1), nn.ReLU(),
                             nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, out, 1))
    cell = proxy_size // cells
    return nn.Sequential(nn.Conv2d(3, 32, 2 * cell, cell, cell // 2), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU(), nn.Conv2d(32, out, 1))


def scorer(mode: str, classes: int, proxy_size: int = PROXY, cells: int = CELLS, evidence: int = 1,
           reader: str = "shallow", none: int = -1, heads: int = 1) -> nn.Module:
    if mode == "supervised-deep":
        return nn.Sequential(nn.Conv2d(3, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(),
                             nn.Conv2d(32, 32, 3, 2, 1), nn.ReLU(), nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(), nn.Conv2d(32, 1, 1))
    if mode == "mil-attention" and reader == "shallow" or mode == "presence":
        from vsaccade import ProxyAttention

        return ProxyAttention(3, proxy_size, cells, 32, [{"name": "label", "num_classes": classes, "kind": "class"}],
                              {"label": none} if mode == "presence" else None, "strided" if reader == "deep" else "cell")
    out = {"mil-attention": 1 + classes, "mil-max-classes": classes, "mil-max-ovr": classes, "mil-max-evidence": evidence,
           "mil-max": heads}
    net = cell_network(reader, out.get(mode, 1), proxy_size, cells)
    return MaxEvidence(net, evidence, classes) if mode == "mil-max-evidence" else net


def scores_for_negatives(net, proxy, valid, cells):
    """(N, K, c^2) every head's cell scores (invalid cells at -1e4, where their cross-entropy with 0 is 0)."""
    return F.adaptive_avg_pool2d(net(proxy.float() / 255), cells).flatten(2).masked_fill(~valid, -1e4)


def run(net, mode, proxy, valid, cells: int = CELLS, none: int = -1, top: int = 1, novelty: float = 0.0):
    """-> per-cell scores (B, c^2) for ranking, and classifier logits (or None)."""
    x = proxy.float() / 255
    if mode in ("mil-attention", "presence") and not isinstance(net, nn.Sequential):
        log_attention, logits = net(x, valid)
        return log_attention, logits["label"]
    if mode == "mil-attention":  # the deep reader: attention logit and class logits per cell
        out = F.adaptive_avg_pool2d(net(x), cells).flatten(2)
        log_attention = out[:, 0].masked_fill(~valid, -1e9).log_softmax(1)
        return log_attention, torch.einsum("bn,bkn->bk", log_attention.exp(), out[:, 1:])
    if mode == "mil-max-evidence":
        return net(x, valid, cells)
    if mode == "mil-max-ovr":
        per_class = F.adaptive_avg_pool2d(net(x), cells).flatten(2)  # (B, K, c^2)
        return per_class.sigmoid().sum(1).masked_fill(~valid, -1e9), per_class.masked_fill(~valid[:, None], -1e9).amax(2)
    if mode == "mil-max-classes":
        per_class = F.adaptive_avg_pool2d(net(x), cells).flatten(2).masked_fill(~valid[:, None], -1e9)  # (B, K, c^2)
        objects = [k for k in range(per_class.shape[1]) if k != none]
        return per_class[:, objects].amax(1), per_class.amax(2)
    if mode == "mil-max" and novelty:  # one head; the pooled cell chosen with the novelty prior
        features = F.adaptive_avg_pool2d(net[:-1](x), cells).flatten(2)  # (B, F, c^2)
        maps = torch.einsum("fk,bfn->bkn", net[-1].weight[:, :, 0, 0].t(), features) + net[-1].bias[None, :, None]
        maps = maps.masked_fill(~valid[:, None], -1e9)
        with torch.no_grad():
            mean = (features * valid[:, None]).sum(2, keepdim=True) / valid.sum(1)[:, None, None]
            distance = (features - mean).norm(dim=1)
            far = (distance - distance.mean(1, keepdim=True)) / distance.std(1, keepdim=True).clamp_min(1e-6)
            chosen = (maps[:, 0] + novelty * far).masked_fill(~valid, -1e9).argmax(1)
        return maps.log_softmax(2).amax(1), maps[:, 0].gather(1, chosen[:, None])
    if mode == "mil-max":  # (B, K, c^2) per head; -> ranking (B, c^2), logits (B, K)
        maps = F.adaptive_avg_pool2d(net(x), cells).flatten(2).masked_fill(~valid[:, None], -1e9)
        return maps.log_softmax(2).amax(1), maps.topk(top, 2).values.mean(2)
    scores = F.adaptive_avg_pool2d(net(x), cells).flatten(1).masked_fill(~valid, -1e9)
    if mode == "mil-instances":
        return scores, scores
    if mode == "mil-noisy-or":  # -> log p(none): the logit of "sign" is log p(sign) - log p(none)
        log_none = F.logsigmoid(-scores).sum(1).clamp(max=-1e-6)
        return scores, torch.log(-torch.expm1(log_none)) - log_none
    return scores, None


def measure(net, mode, validation, valid_cells, cells, none, top, longer) -> dict:
    """Hits of the ranking on the validation split (and, for the label-only modes, sign-vs-none accuracy)."""
    was_training = net.training
    net.eval()
    with torch.no_grad():
        scores, logits = run(net, mode, validation["proxy"], valid_cells.expand(len(validation["label"]), -1), cells, none, top)
    net.train(was_training)
    has_sign = validation["box"][:, 0] >= 0
    target = sign_cells(validation["box"][has_sign], longer, cells)
    ranked = scores[has_sign].topk(4, 1).indices
    record = {"top1_within_one_cell": float(near(ranked[:, 0], target, cells).float().mean()),
              "top4_within_one_cell": float(near(ranked, target[:, None], cells).any(1).float().mean())}
    if logits is not None:
        binary = mode in ("mil-max", "mil-noisy-or", "mil-instances")
        said_sign = logits.reshape(len(logits), -1).amax(1) > 0 if binary else logits.argmax(1) != none
        record["sign_vs_none_accuracy"] = float((said_sign == has_sign).float().mean())
    return record


def anchor_offsets(model, validation, valid_cells, cells, longer) -> dict:
    """Where the anchor's top cell lies from the sign's cell, on the validation signs: exactly on it, one column left."""
    with torch.no_grad():
        log_attention, _ = model.anchor.attention(validation["proxy"].float() / 255,
                                                  valid_cells.expand(len(validation["label"]), -1))
    has_sign = validation["box"][:, 0] >= 0
    top, target = log_attention[has_sign].argmax(1), sign_cells(validation["box"][has_sign], longer, cells)
    rows, columns = top // cells - target // cells, top % cells - target % cells
    return {"top_cell_exact": float(((rows == 0) & (columns == 0)).float().mean()),
            "top_cell_one_column_left": float((columns == -1).float().mean())}


def glimpse_offsets(model, root: str, boxes: str, proxy_size: int, count: int = 64) -> dict:
    """The sign's centre from the first glimpse's centre (median, image pixels) and the window side, over the first
    `count` validation images with a sign (the model's mode policy)."""
    import vsaccade

    task = vsaccade.make_task("folder", "validation", root=root, proxy_size=proxy_size, channels=3, boxes=boxes)
    samples = [sample for sample in (task[i] for i in range(len(task))) if len(sample.boxes)][:count]
    window = torch.stack([torch.as_tensor(vsaccade.predict(model, s.image).boxes[0], dtype=torch.float32) for s in samples])
    sign = torch.stack([s.boxes[0] for s in samples])
    centre = lambda b: ((b[:, 0] + b[:, 2]) / 2, (b[:, 1] + b[:, 3]) / 2)
    (sx, sy), (gx, gy) = centre(sign), centre(window)
    quartiles = lambda d: [round(float(q), 1) for q in torch.quantile(d, torch.tensor([0.25, 0.75]))]
    return {"sign_right_of_first_glimpse_px": float((sx - gx).median()), "sign_below_first_glimpse_px": float((sy - gy).median()),
            "right_quartiles_px": quartiles(sx - gx), "below_quartiles_px": quartiles(sy - gy),
            "window_side_px": float((window[:, 2] - window[:, 0]).median())}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--root", required=True)
    parser.add_argument("--mode", required=True,
                        choices=("supervised-shallow", "supervised-deep", "mil-attention", "mil-max", "mil-max-classes",
                                 "mil-max-evidence", "mil-max-ovr", "mil-noisy-or", "mil-instances", "presence"))
    parser.add_argument("--reader", choices=("shallow", "deep"), default="shallow",
                        help="the per-cell network of the label-only modes (deep: for inputs larger than the proxy)")
    parser.add_argument("--evidence", type=int, default=1, help="evidence channels per cell (mil-max-evidence)")
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--balance", action="store_true",
                        help="weigh the label losses by inverse class frequency (Attention Sampling's speed-limit setting)")
    parser.add_argument("--proxy-size", type=int, default=PROXY, help="the proxy's longer side")
    parser.add_argument("--cells", type=int, default=CELLS, help="cells per side of the location grid")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--anchor-of", default=None, metavar="CHECKPOINT",
                        help="train nothing: measure the hits of a trained model's proxy attention (anchor=attention "
                             "or presence) on the validation proxies")
    parser.add_argument("--signs", type=int, default=64,
                        help="--anchor-of: the validation signs where the first glimpse's place is measured")
    parser.add_argument("--dense-negatives", action="store_true",
                        help="mil-max: in images of the background class every cell is a negative (cross-entropy "
                             "averaged over cells) instead of the max alone")
    parser.add_argument("--novelty", type=float, default=0.0,
                        help="mil-max: the pooled cell is the argmax of score + W x novelty, where novelty is how far "
                             "a cell's features lie from the image's mean feature (z-scored, no gradient)")
    parser.add_argument("--heads", type=int, default=1,
                        help="mil-max: K score maps from the shared features, each max-pooled and trained on its own; "
                             "cells ranked by their best head's score (after each head's own softmax over cells)")
    parser.add_argument("--top", type=int, default=1, help="mil-max: pool the mean of the top K cells' scores (1: the max)")
    parser.add_argument("--boxes", default="", help="the boxes folder beside the root (vsaccade generate's DST-boxes)")
    parser.add_argument("--cache", default=None, help="default: ROOT/../<root name>-proxies.pt")
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    root = Path(args.root)
    proxy_size, cells = args.proxy_size, args.cells
    data = cached_proxies(args.root, Path(args.cache or root.parent / f"{root.name}-proxies-{proxy_size}.pt"), args.boxes,
                          proxy_size)
    train, validation = data["train"], data["validation"]
    longer = max(train["height"], train["width"])
    rows = round(cells * train["height"] / longer)
    valid_grid = torch.zeros(cells, cells, dtype=torch.bool)
    valid_grid[:rows, : round(cells * train["width"] / longer)] = True
    valid_cells = valid_grid.flatten()
    none = train["none"]
    if args.anchor_of:
        import vsaccade

        model = vsaccade.load(args.anchor_of)
        record = {"checkpoint": args.anchor_of, **measure(model.anchor.attention, "presence", validation, valid_cells, cells,
                                                          none, 1, longer),
                  **anchor_offsets(model, validation, valid_cells, cells, longer),
                  **glimpse_offsets(model, args.root, args.boxes, proxy_size, args.signs)}
        print(json.dumps(record))
        if args.json:
            Path(args.json).write_text(json.dumps(record, indent=2))
        return record
    net = scorer(args.mode, int(train["label"].max()) + 1, proxy_size, cells, args.evidence, args.reader, train["none"], args.heads)
    optimizer = torch.optim.Adam(net.parameters(), args.lr)
    supervised = args.mode.startswith("supervised")
    keep = train["box"][:, 0] >= 0 if supervised else torch.ones(len(train["label"]), dtype=torch.bool)
    proxies, labels, boxes = train["proxy"][keep], train["label"][keep], train["box"][keep]
    counts = torch.bincount(labels, minlength=int(train["label"].max()) + 1).float()
    weights = (1 / counts.clamp_min(1)) / (1 / counts.clamp_min(1)).mean() if args.balance else None
    binary_weights = None
    if args.balance:
        sign_share = float((labels != none).float().mean())
        binary_weights = torch.tensor([0.5 / (1 - sign_share), 0.5 / sign_share])  # none, sign
    history, started = [], time.time()
    for epoch in range(args.epochs):
        order = torch.randperm(len(proxies))
        for start in range(0, len(order), 16):
            index = order[start : start + 16]
            scores, logits = run(net, args.mode, proxies[index], valid_cells.expand(len(index), -1), cells, none, args.top,
                                 args.novelty)
            if supervised:
                loss = F.cross_entropy(scores, sign_cells(boxes[index], longer, cells))
            elif args.mode == "mil-instances":
                target = (labels[index] != none).float()[:, None].expand(-1, logits.shape[1])
                loss = F.binary_cross_entropy_with_logits(logits, target, weight=valid_cells.float().expand_as(target),
                                                          reduction="sum") / (len(index) * valid_cells.sum())
            elif args.mode in ("mil-max", "mil-noisy-or"):
                target = (labels[index] != none).float()
                weight = binary_weights[target.long()] if binary_weights is not None else None
                if logits.ndim == 2:  # one logit per head
                    target = target[:, None].expand_as(logits)
                    weight = weight[:, None].expand_as(logits) if weight is not None else None
                if args.dense_negatives:
                    positive = target[:, 0] > 0
                    cell_scores = scores_for_negatives(net, proxies[index][~positive], valid_cells, cells)
                    negatives = F.binary_cross_entropy_with_logits(cell_scores, torch.zeros_like(cell_scores), reduction="none")
                    loss = (F.binary_cross_entropy_with_logits(logits[positive], target[positive], reduction="sum")
                            + (negatives * valid_cells).sum() / valid_cells.sum()) / len(index)
                else:
                    loss = F.binary_cross_entropy_with_logits(logits, target, weight=weight)
            elif args.mode == "mil-max-ovr":
                target = F.one_hot(labels[index], logits.shape[1]).float()
                pos_weight = (len(labels) - counts) / counts.clamp_min(1) if args.balance else None
                loss = F.binary_cross_entropy_with_logits(logits, target, pos_weight=pos_weight)
            else:
                loss = F.cross_entropy(logits, labels[index], weight=weights)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        record = {"epoch": epoch + 1, "seconds": time.time() - started,
                  **measure(net, args.mode, validation, valid_cells, cells, none, args.top, longer)}
        history.append(record)
        print(json.dumps(record), flush=True)
        report = {"command": "python experiments/speed-signs/localisation.py " + " ".join(argv if argv is not None else sys.argv[1:]),
                  "mode": args.mode, "seed": args.seed, "top": args.top, "heads": args.heads, "dense_negatives": args.dense_negatives, "novelty": args.novelty, "evidence": args.evidence, "reader": args.reader, "proxy_size": proxy_size, "cells": cells, "balance": args.balance, "root": args.root, "train_images": len(proxies), "validation_images": len(validation["label"]),
                  "sign_share_validation": float((validation["box"][:, 0] >= 0).float().mean()), "threads": args.threads,
                  "history": history}
        if args.json:  # after every epoch, so a stopped run keeps what it measured
            Path(args.json).write_text(json.dumps(report, indent=2))
    return report


if __name__ == "__main__":
    main()
