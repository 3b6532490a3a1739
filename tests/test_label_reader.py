"""The fit-reader stage (label_reader.py) and the folder recipe built on it: fitting per-glimpse heads from image
labels alone learns which glimpse shows the object; the recipe runs end to end on a tiny generated folder, never
reads the boxes (bit-identical without them), keeps the epoch that reads validation best, and a killed stage
resumes bitwise."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import vsaccade
from vsaccade.cli import main
from vsaccade.label_reader import read_any
from vsaccade.reader_stages import fit

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def bags(count: int, generator: torch.Generator):
    """(count, T=3, 1, 16, 16) uint8 glimpses of noise and labels in {a, b, none}: an `a` bag shows a bright bar
    across the top of one of its glimpses (which one at random), a `b` bag one down the left side, `none` neither."""
    glimpses = (60 * torch.rand(count, 3, 1, 16, 16, generator=generator)).to(torch.uint8)
    labels = torch.randint(0, 3, (count,), generator=generator)
    where = torch.randint(0, 3, (count,), generator=generator)
    for i in range(count):
        if labels[i] == 0:
            glimpses[i, where[i], 0, 2:5, 2:14] = 255
        elif labels[i] == 1:
            glimpses[i, where[i], 0, 2:14, 2:5] = 255
    return glimpses, labels, where


def test_fitting_from_image_labels_alone_learns_which_glimpse_shows_the_object(tmp_path):
    torch.manual_seed(0)
    heads = [{"name": "label", "num_classes": 3, "kind": "class", "classes": ["a", "b", "none"]}]
    model = vsaccade.create_model("saccader", proxy_size=16, location_cells=4, glimpses=3, glimpse_size=16, hidden=32,
                                  image_channels=1, proxy_channels=1, glimpse_heads=True, reader="separate",
                                  readout="any", background="none", heads=heads)
    generator = torch.Generator().manual_seed(1)
    glimpses, labels, _ = bags(600, generator)
    trained = [*model.reader.separate.parameters(), *model.glimpse_heads.parameters()]
    settings = {"epochs": 6, "lr": 3e-3, "cosine": True, "batch_size": 32, "shift": 0}
    fit(model, trained, lambda g: read_any(model, g), {"glimpse": glimpses, "label": labels}, settings,
        tmp_path / "state.pt", lambda epoch: {}, progress=False, log=lambda *a: None)
    glimpses, labels, where = bags(300, generator)
    with torch.no_grad():
        assert (read_any(model.eval(), glimpses).argmax(1) == labels).float().mean() > 0.9
        per_glimpse = model.glimpse_heads(model.reader.separate(glimpses.flatten(0, 1).float() / 255))["label"]
    said = per_glimpse.argmax(-1).view(300, 3)
    shows = torch.zeros(300, 3, dtype=torch.bool)
    shows[labels != 2, where[labels != 2]] = True
    # no glimpse was told what it shows: each learned it from its image's label
    assert (said[shows] == labels[:, None].expand(-1, 3)[shows]).float().mean() > 0.9
    assert (said[~shows] == 2).float().mean() > 0.9


@pytest.fixture(scope="module")
def folder(tiny_speed_signs):
    return tiny_speed_signs


def recipe_args(root, out):
    sets = (f"task.root={root}", "train.threads=1", "train.epochs=1", "train.batch_size=8", "train.eval_batch_size=8")
    stages = ("read-seed0.epochs=2", "read-seed0.draws=2", "read-seed0.batch_size=8")
    return ["recipe", "folder", "--seeds", "0", "--out", str(out), "--no-progress",
            *[a for s in sets for a in ("--set", s)], *[a for s in stages for a in ("--stage", s)]]


@pytest.fixture(scope="module")
def fitted(folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("recipe") / "r"
    assert main(recipe_args(folder, out)) == 0
    return out


def test_the_folder_recipe_fits_the_reader_and_writes_a_model_evaluate_loads(fitted, capsys):
    summary = json.loads((fitted / "summary.json").read_text())
    assert summary["supervision"] == "labels" and summary["seeds"] == [0] and "label" in summary["metrics"]
    results = json.loads((fitted / "read-seed0" / "results.json").read_text())
    assert summary["metrics"]["label"]["each"] == [results["test"]["model"]["heads"]["label"]["accuracy"]]
    assert summary["commit"] == results["vsaccade_version"].rpartition("+")[2]  # the code that fitted it
    history = results["history"]
    assert [row["epoch"] for row in history] == [0, 1, 2] and results["train_bags"] == 2 * 24
    chosen = max(history, key=lambda row: (row["validation_images"], -row["epoch"]))
    assert results["chosen_epoch"] == chosen["epoch"]  # the epoch that read validation best (the model as it was: 0)
    payload = torch.load(fitted / "read-seed0" / "model.pt", weights_only=False)
    assert payload["model_config"]["readout"] == "any" and payload["model_config"]["reader"] == "separate"
    assert payload["fitted_reader"]["draws"] == 2 and payload["fitted_reader"]["epoch"] == chosen["epoch"]
    by_policy = results["validation_by_policy"]  # how it reads, chosen on validation: what evaluate and predict use
    assert set(by_policy) == {"mode", "samples:1"} and by_policy[results["eval_policy"]] == max(by_policy.values())
    assert payload["train_config"]["eval_policy"] == results["eval_policy"] == results["test"]["policy"]
    capsys.readouterr()
    assert main(["evaluate", str(fitted / "read-seed0" / "model.pt"), "--no-references"]) == 0
    assert "label" in capsys.readouterr().out


def same_weights(a, b) -> bool:
    a, b = (torch.load(p, weights_only=False)["state_dict"] for p in (a, b))
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_the_folder_recipe_never_reads_the_boxes(folder, fitted, tmp_path):
    copy = tmp_path / "photos"
    shutil.copytree(folder, copy)  # no photos-boxes beside it
    assert main(recipe_args(copy, tmp_path / "r")) == 0
    assert same_weights(fitted / "read-seed0" / "model.pt", tmp_path / "r" / "read-seed0" / "model.pt")


def test_a_killed_fit_reader_stage_resumes_bitwise(folder, fitted, tmp_path):
    out = tmp_path / "r"
    shutil.copytree(fitted / "seed0", out / "seed0")  # the train stage done; the fit stage killed after its epoch 1
    env = {**os.environ, "VSACCADE_FAULT": "reader-epoch@1"}
    died = subprocess.run([sys.executable, "-m", "vsaccade.cli", *recipe_args(folder, out)], env=env, capture_output=True)
    assert died.returncode == -9 and (out / "read-seed0" / "state.pt").exists()
    assert not (out / "read-seed0" / "model.pt").exists()
    assert main(recipe_args(folder, out)) == 0
    assert same_weights(fitted / "read-seed0" / "model.pt", out / "read-seed0" / "model.pt")
    read = [[{k: v for k, v in row.items() if k != "seconds"}
             for row in json.loads((run / "read-seed0" / "results.json").read_text())["history"]] for run in (out, fitted)]
    assert read[0] == read[1]


def test_the_separate_reader_may_be_pooled_and_only_a_separate_reader():
    from vsaccade.config import ConfigError
    from vsaccade.model.glimpse_encoder import PooledGlimpseEncoder

    model = vsaccade.create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=64, hidden=32,
                                  glimpse_heads=True, reader="separate", reader_encoder="pooled")
    assert isinstance(model.reader.separate, PooledGlimpseEncoder)
    assert model.reader.separate(torch.rand(5, model.config.image_channels, 64, 64)).shape == (5, 32)
    with pytest.raises(ConfigError, match="reader_encoder=pooled .* needs model.reader=separate"):
        vsaccade.create_model("saccader", reader_encoder="pooled")


def test_predict_reads_as_the_checkpoint_chose_unless_told(folder, fitted):
    from vsaccade.api import own_policy

    model = vsaccade.load(fitted / "read-seed0" / "model.pt")
    image = next((folder / "test").rglob("*.jpg"))
    assert own_policy(model) == model.checkpoint["train_config"]["eval_policy"]
    model.checkpoint["train_config"]["eval_policy"] = "samples:2"

    def read(**policy):
        torch.manual_seed(0)  # the posterior draws
        return vsaccade.predict(model, image, **policy).probabilities["label"]

    assert torch.equal(read(), read(policy="samples:2")) and not torch.equal(read(), read(policy="mode"))
    assert own_policy(vsaccade.create_model("saccader")) == "mode"


def test_window_scale_widens_the_fitted_models_first_window_about_the_same_centre(folder, fitted):
    """The first window comes from the proxy alone; later ones also from what earlier glimpses showed, which a wider
    window changes."""
    from vsaccade.checkpoint import read_checkpoint
    from vsaccade.config import ConfigError
    from vsaccade.label_reader import reader_to_fit
    from vsaccade.reader_stages import folder_task
    from vsaccade.tasks import collate

    init = fitted / "seed0" / "best.pt"
    payload = read_checkpoint(init)
    models = [reader_to_fit(payload, init, "pooled", scale)[0].eval() for scale in (1.0, 1.5)]
    options = payload["train_config"]["task_options"]
    batch = collate([folder_task(options, "validation", models[0].config.proxy_size)[i] for i in range(4)])
    with torch.no_grad():
        z = [m(batch.images, batch.proxy, batch.proxy_mask, sample=False, kl=False).z for m in models]
    assert torch.allclose(z[1][:, 0, 0], 1.5 * z[0][:, 0, 0]) and torch.allclose(z[1][:, 0, 1:], z[0][:, 0, 1:])
    c = models[1].config
    assert c.s_min == 1.5 * models[0].config.s_min and ((z[1][..., 0] >= c.s_min) & (z[1][..., 0] <= c.s_max)).all()
    with pytest.raises(ConfigError, match="window_scale 20"):
        reader_to_fit(payload, init, "pooled", 20.0)


def test_shifted_glimpses_move_each_by_its_own_offset_within_the_shift():
    from vsaccade.reader_stages import shifted

    glimpses = torch.zeros(50, 2, 1, 16, 16, dtype=torch.uint8)
    glimpses[..., 8, 8] = 200  # one bright pixel at the centre of every glimpse
    assert shifted(glimpses, 0) is glimpses
    torch.manual_seed(0)
    moved = shifted(glimpses, 3)
    assert moved.shape == glimpses.shape and moved.dtype == torch.uint8
    flat = moved.flatten(0, 2).flatten(1)
    assert torch.equal(flat.max(1).values, torch.full((100,), 200, dtype=torch.uint8))  # the pixel moved, not lost
    assert torch.equal((flat == 200).sum(1), torch.ones(100, dtype=torch.long))
    where = flat.argmax(1)
    dy, dx = where // 16 - 8, where % 16 - 8
    assert dy.abs().max() <= 3 and dx.abs().max() <= 3
    assert len(set(zip(dy.tolist(), dx.tolist()))) > 20  # offsets drawn per glimpse, not one per batch
    columns = torch.arange(16, dtype=torch.uint8).repeat(30, 1, 16, 1)  # (30, C=1, 16, 16): each pixel its column
    rows = shifted(columns, 4)[:, 0, 0].long()  # the border column repeated into what moves in
    assert all(any(torch.equal(row, (torch.arange(16) + d).clamp(0, 15)) for d in range(-4, 5)) for row in rows)
