"""Recipes: stages in order, each a resumable training run; a rerun skips what is done and refuses another spec;
the seeds recipe summarises mean and each seed beside the no-glimpse control."""

import json

import pytest

from vsaccade.cli import main
from vsaccade.config import ConfigError
from vsaccade.recipes import Stage, run_recipe, seeds_recipe

SMALL = ("train.train_size=64", "train.validation_size=32", "train.test_size=32", "train.threads=1", "train.epochs=1")


def test_the_seeds_recipe_trains_each_seed_and_the_control_then_summarises(tmp_path, capsys):
    out = tmp_path / "recipe"
    argv = ["recipe", "seeds", "--preset", "tiny", "--seeds", "0", "1", "--control", "--out", str(out),
            "--digits", "font", "--no-progress"] + [a for s in SMALL for a in ("--set", s)]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["seeds"] == [0, 1] and len(summary["metrics"]["digit"]["each"]) == 2
    each = summary["metrics"]["digit"]["each"]
    assert summary["metrics"]["digit"]["mean"] == pytest.approx(sum(each) / 2)
    assert "no-glimpse control" in summary["controls"] and summary["command"].startswith("vsaccade recipe seeds")
    control = json.loads((out / "no-glimpses" / "results.json").read_text())
    assert control["model_config"]["reader"] == "none" and control["train_config"]["seed"] == 0
    assert json.loads((out / "seed1" / "results.json").read_text())["train_config"]["seed"] == 1
    capsys.readouterr()
    assert main(argv) == 0  # everything done: every stage skipped
    assert capsys.readouterr().out.count("done (") == 3
    assert main(argv[:6] + ["2"] + argv[7:]) == 2  # another spec under the same --out
    assert "another recipe spec" in capsys.readouterr().err


def test_a_stage_can_start_from_an_earlier_stage(tmp_path):
    recipe = seeds_recipe("tiny", (0,), overrides=SMALL)
    recipe.stages.append(Stage("finetune", "tiny", SMALL + ("train.lr=0.0005",), init_from="seed0"))
    run_recipe(recipe, tmp_path / "r", digit_source="font", progress=False, log=lambda *a: None)
    config = json.loads((tmp_path / "r" / "finetune" / "config.json").read_text())
    assert config["train_config"]["init_weights"].endswith("seed0/best.pt")
    with pytest.raises(ConfigError, match="distinct seeds"):
        seeds_recipe("tiny", (1, 1))
