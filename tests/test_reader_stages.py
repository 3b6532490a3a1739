"""The recipe stages that train the reader apart from looking (reader_stages.py) and the speed-signs-polished recipe
built from them: end to end on a tiny generated folder, a killed stage resumes bitwise, a changed setting is refused,
and what cannot work is refused in one line before anything trains."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from vsaccade.cli import main
from vsaccade.config import ConfigError
from vsaccade.recipes import Recipe, Stage, run_recipe, speed_signs_polished_recipe, with_stage_settings

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def signs(tiny_speed_signs):
    return tiny_speed_signs


def overrides(root):
    return (f"task.root={root}", f"task.boxes={root}-boxes", "train.threads=1", "train.batch_size=8",
            "train.eval_batch_size=8")


def pretrain(root, **settings) -> Recipe:
    return Recipe("pretrain", [Stage("reader", "speed-signs-boxes", overrides(root), kind="pretrain-reader",
                                     settings={"crops": 0, "epochs": 2, "batch_size": 8, **settings})])


def test_the_polished_recipe_runs_end_to_end_and_writes_one_model_evaluate_loads(signs, tmp_path, capsys):
    out = tmp_path / "polished"
    argv = ["recipe", "speed-signs-polished", "--seeds", "0", "--out", str(out), "--no-progress",
            *[a for s in overrides(signs) for a in ("--set", s)],
            *[a for s in ("reader.crops=16", "reader.epochs=1", "reader.workers=1", "hard.crops=16", "hard.epochs=1",
                          "hard.workers=1", "search-s0.train.epochs=1", "polish-s0.crops=16", "polish-s0.held_out=8",
                          "polish-s0.epochs=1", "polish-s0.workers=1") for a in ("--stage", s)]]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["supervision"] == "boxes" and summary["seeds"] == [0] and "label" in summary["metrics"]
    select = json.loads((out / "select" / "results.json").read_text())
    assert sorted(select["validation"]) == ["polish-s0", "search-s0"] and select["chosen"] in select["validation"]
    assert f"{select['chosen']} chosen on validation" in summary["note"]
    hard = torch.load(out / "hard" / "weights.pt")
    assert any(k.startswith("reader.encoder.") for k in hard) and any(k.startswith("glimpse_heads.") for k in hard)
    search = json.loads((out / "search-s0" / "config.json").read_text())
    assert search["train_config"]["init_weights"].endswith("hard/weights.pt")
    polished = torch.load(out / "polish-s0" / "model.pt", weights_only=False)
    assert polished["model_config"]["reader"] == "separate" and polished["polished_reader"]["crops"] == 16
    chosen = out / select["chosen"] / ("model.pt" if select["chosen"] == "polish-s0" else "best.pt")
    assert (out / "select" / "model.pt").read_bytes() == chosen.read_bytes()
    capsys.readouterr()
    assert main(["evaluate", str(out / "select" / "model.pt"), "--no-references"]) == 0
    assert "label" in capsys.readouterr().out
    assert main(argv) == 0  # every stage done: skipped
    assert capsys.readouterr().out.count("done (") == 5
    changed = [a.replace("polish-s0.epochs=1", "polish-s0.epochs=2") for a in argv]
    assert main(changed) == 2
    assert "another recipe spec" in capsys.readouterr().err


def test_a_reader_stage_killed_after_an_epoch_resumes_bitwise(signs, tmp_path):
    whole = tmp_path / "whole"
    run_recipe(pretrain(signs), whole, progress=False, log=lambda *a: None)
    killed = tmp_path / "killed"
    script = textwrap.dedent(f"""
        from vsaccade.recipes import Recipe, Stage, run_recipe
        recipe = Recipe("pretrain", [Stage("reader", "speed-signs-boxes", {overrides(signs)!r}, kind="pretrain-reader",
                                           settings={{"crops": 0, "epochs": 2, "batch_size": 8}})])
        assert recipe == {pretrain(signs)!r}
        run_recipe(recipe, {str(killed)!r}, progress=False, log=lambda *a: None)
    """)
    env = {**os.environ, "VSACCADE_FAULT": "reader-epoch@1"}
    died = subprocess.run([sys.executable, "-c", script], env=env)
    assert died.returncode == -9 and (killed / "reader" / "state.pt").exists()
    assert not (killed / "reader" / "weights.pt").exists()
    logged = []
    run_recipe(pretrain(signs), killed, progress=False, log=logged.append)
    assert any("resumed after epoch 1" in line for line in logged)
    a, b = torch.load(whole / "reader" / "weights.pt"), torch.load(killed / "reader" / "weights.pt")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    history = json.loads((killed / "reader" / "results.json").read_text())["history"]
    assert [row["epoch"] for row in history] == [1, 2]


def test_stage_settings_and_order_are_checked_before_anything_trains(signs, tmp_path):
    recipe = speed_signs_polished_recipe(overrides(signs), seeds=(0,))
    assert with_stage_settings(recipe, ["reader.crops=5"]).stages[0].settings["crops"] == 5
    assert with_stage_settings(recipe, ["search-s0.train.epochs=1"]).stages[2].overrides[-1] == "train.epochs=1"
    with pytest.raises(ConfigError, match="STAGE.SETTING=VALUE"):
        with_stage_settings(recipe, ["nostage.crops=5"])
    backwards = Recipe("bad", [Stage("polish", "speed-signs-search", kind="polish-reader", init_from="search"),
                               Stage("search", "speed-signs-search")])
    with pytest.raises(ConfigError, match="not an earlier stage"):
        run_recipe(backwards, tmp_path / "bad", progress=False)
    with pytest.raises(ConfigError, match="unknown kind"):
        run_recipe(Recipe("bad", [Stage("x", "tiny", kind="distil")]), tmp_path / "bad2", progress=False)
    with pytest.raises(ConfigError, match="fitted to the sign"):
        run_recipe(Recipe("bad", [Stage("reader", "speed-signs-search", overrides(signs), kind="pretrain-reader",
                                        settings={"crops": 4})]), tmp_path / "bad3", progress=False)


def test_a_rerun_under_other_overrides_or_without_a_stage_product_is_refused(signs, tmp_path):
    out = tmp_path / "r"
    run_recipe(pretrain(signs, epochs=1), out, progress=False, log=lambda *a: None)
    with pytest.raises(ConfigError, match="another recipe spec"):  # a --set changed since the first run
        recipe = pretrain(signs, epochs=1)
        recipe.stages[0] = Stage("reader", "speed-signs-boxes", (*overrides(signs), "model.hidden=16"),
                                 kind="pretrain-reader", settings=recipe.stages[0].settings)
        run_recipe(recipe, out, progress=False)
    (out / "reader" / "weights.pt").unlink()
    with pytest.raises(ConfigError, match="results.json but no weights.pt"):
        run_recipe(pretrain(signs, epochs=1), out, progress=False)


def test_user_overrides_come_after_the_recipes_own_and_unknown_settings_are_refused(signs, tmp_path):
    recipe = speed_signs_polished_recipe(("train.epochs=2", "train.seed=7"), seeds=(0, 1))
    search = [stage for stage in recipe.stages if stage.name.startswith("search")]
    from vsaccade.presets import resolve

    assert [resolve(s.preset, list(s.overrides))[2].epochs for s in search] == [2, 2]
    assert [resolve(s.preset, list(s.overrides))[2].seed for s in search] == [0, 1]  # --seeds decides each stage's
    for typo in (["reader.crop=10"], ["search-s0.epochs=3"]):
        with pytest.raises(ConfigError, match="unknown setting"):
            run_recipe(with_stage_settings(recipe, typo), tmp_path / "typo", progress=False)
    with pytest.raises(ConfigError, match="distinct seeds"):
        speed_signs_polished_recipe(seeds=(0, 0))


def test_polishing_needs_a_model_that_reads_out_any_object(signs, tmp_path):
    first = Recipe("mean", [Stage("search", "speed-signs-boxes", (*overrides(signs), "train.epochs=1")),
                            Stage("polish", "speed-signs-boxes", overrides(signs), "search", "polish-reader",
                                  {"crops": 0, "held_out": 0})])
    with pytest.raises(ConfigError, match="readout is 'mean'; polishing the reader needs readout=any"):
        run_recipe(first, tmp_path / "r", progress=False, log=lambda *a: None)
