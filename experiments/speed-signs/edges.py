"""Where each step's glimpse lands vertically: the share of a folder model's posterior-mode glimpse centres in the
bottom rows of the image (v > 0.9, the bottom 5%; the low-resolution view is padded with black below a landscape
image), per glimpse step, on a split of the folder it was trained on. Labels only: no boxes are read.

    python experiments/speed-signs/edges.py --checkpoint runs/folder/read-seed1/model.pt --split validation

--proxy-padding edge reads the same trained model with the view's padding filled by the nearest image pixel
(model.proxy_padding, which has no parameters): if the glimpses leave the edge, the black step drew them.
"""

import argparse
import json

import torch

import vsaccade


def bottom_edge_shares(model, split: str, limit: int | None, batch_size: int = 32) -> list[float]:
    options = model.checkpoint["train_config"]["task_options"]
    task = vsaccade.make_task("folder", split, root=options["root"], proxy_size=model.config.proxy_size,
                              channels=options.get("channels", 3), boxes="")
    count = len(task) if limit is None else min(limit, len(task))
    rows = []
    with torch.no_grad():
        for start in range(0, count, batch_size):
            batch = vsaccade.collate([task[i] for i in range(start, min(start + batch_size, count))])
            rows.append(model(batch.images, batch.proxy, batch.proxy_mask, sample=False, kl=False).z[..., 2])
    v = torch.cat(rows)  # (N, T) vertical centres in [-1, 1]
    return [round(float(share), 4) for share in (v > 0.9).float().mean(0)]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--split", default="validation")
    parser.add_argument("--limit", type=int)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--proxy-padding", choices=["zero", "edge"], help="default: the model's own")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = vsaccade.load(args.checkpoint, settings=[f"model.proxy_padding={args.proxy_padding}"] if args.proxy_padding
                          else [])
    print(json.dumps({"checkpoint": args.checkpoint, "split": args.split, "proxy_padding": model.config.proxy_padding,
                      "bottom_edge_share_per_step": bottom_edge_shares(model, args.split, args.limit)}))


if __name__ == "__main__":
    main()
