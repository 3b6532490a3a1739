"""Are the recipe's weights (new/) bitwise those of the scripts it replaced (old/), stage by stage? Run by
equivalence.sh in its work directory; writes a small JSON."""

import argparse
import json

import torch

import vsaccade

parser = argparse.ArgumentParser()
parser.add_argument("--json", required=True)
args = parser.parse_args()


def weights(path: str) -> dict:
    """A checkpoint's weights in today's names (old spellings upgraded by vsaccade.load), or a bare weights file as
    saved (the reader stages')."""
    data = torch.load(path, weights_only=False)
    return vsaccade.load(path).state_dict() if "model_config" in data else data


def stored(path: str) -> int:
    data = torch.load(path, weights_only=False)
    return len(data.get("state_dict", data))


def bitwise_equal(a: dict, b: dict) -> bool:
    """Checkpoints by name; bare weight files (written at 704c464 in that day's spelling) tensor by tensor in order."""
    if a.keys() != b.keys():
        a, b = dict(enumerate(a.values())), dict(enumerate(b.values()))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


pairs = [("reader", "old/reader.pt", "new/reader/weights.pt"), ("hard", "old/hard.pt", "new/hard/weights.pt")]
for seed in (0, 1):
    pairs += [(f"search-s{seed}", f"old/search-s{seed}/best.pt", f"new/search-s{seed}/best.pt"),
              (f"polish-s{seed}", f"old/search-s{seed}-polished.pt", f"new/polish-s{seed}/model.pt")]
rows = []
for name, old, new in pairs:
    a, b = weights(old), weights(new)
    # readout=any models no longer build the classifier they never trained: the old files hold 4 more tensors
    rows.append({"stage": name, "tensors_compared": len(b), "tensors_in_old_file": stored(old),
                 "bitwise_equal": bitwise_equal(a, b)})
    print(rows[-1])
select = json.load(open("new/select/results.json"))
for seed in (0, 1):
    old = json.load(open(f"old/search-s{seed}-polished-validation.json"))["model"]["heads"]["label"]["accuracy"]
    rows.append({"stage": f"polish-s{seed}", "validation_accuracy_old": old,
                 "validation_accuracy_new": select["validation"][f"polish-s{seed}"]})
    print(rows[-1])
with open(args.json, "w") as handle:
    json.dump({"command": "bash experiments/speed-signs/equivalence.sh WORKDIR", "old_commit": "704c464",
               "stages": rows}, handle, indent=1)
    handle.write("\n")
