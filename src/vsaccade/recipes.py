"""Recipes: what is trained in which order, as named stages. Each stage is one `vsaccade train` run (a preset with
overrides, optionally starting from an earlier stage's best weights) in OUT/<stage>/; a recipe's run directory
holds its spec (recipe.json) and, at the end, the summary of the whole (summary.json, results.py).

    vsaccade recipe seeds --preset megapixel-500 --seeds 0 1 --control --out runs/mp500

* Resumable: a stage with results.json is done and skipped; a stage with last.pt resumes mid-stage (exact resume,
  train.py); a killed recipe rerun with the same command continues where it stopped.
* A rerun with another spec (preset, overrides, seeds, stages) is refused with a one-line error: use a new --out.
* Progress is train's (tqdm per epoch); every file is written atomically.

`seeds` is the recipe users reach for first: the same preset under several seeds, and optionally the no-glimpse
control, summarised as the mean and each seed's figure beside the control (the form the results pages take).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .atomic import write_text
from .config import ConfigError


@dataclass(frozen=True)
class Stage:
    name: str
    preset: str
    overrides: tuple = ()
    init_from: str = ""  # an earlier stage whose best.pt this one starts from (train.init_weights)


@dataclass
class Recipe:
    name: str
    stages: list = field(default_factory=list)
    seeds: tuple = ()  # the stages named seed<N>: summarised together
    control: str = ""  # the stage whose figures are the no-glimpse control


def seeds_recipe(preset: str, seeds=(0, 1), control: bool = False, overrides=()) -> Recipe:
    """The preset once per seed, and optionally its no-glimpse control (first seed)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"a seeds recipe needs distinct seeds, got {list(seeds)}")
    stages = [Stage(f"seed{s}", preset, (*overrides, f"train.seed={s}")) for s in seeds]
    if control:
        stages.append(Stage("no-glimpses", preset, (*overrides, f"train.seed={seeds[0]}", "model.reader=none")))
    return Recipe(f"seeds:{preset}", stages, tuple(f"seed{s}" for s in seeds), "no-glimpses" if control else "")


def check_spec(recipe: Recipe, out: Path) -> None:
    """Record the recipe's spec in OUT/recipe.json, or refuse a rerun under another one."""
    spec = asdict(recipe)
    spec = json.loads(json.dumps(spec))  # tuples as lists, as read back
    path = out / "recipe.json"
    if path.exists() and json.loads(path.read_text()) != spec:
        raise ConfigError(f"{out} holds a run of another recipe spec ({path}); rerun with the same command or use a "
                          "new --out")
    write_text(path, json.dumps(spec, indent=2) + "\n")


def run_recipe(recipe: Recipe, out, command: str = "", digit_source: str = "auto", data_dir=None,
               progress: bool = True, log=print) -> dict:
    """Run (or continue) every stage in order; returns the recipe's summary (also OUT/summary.json)."""
    from .presets import resolve
    from .results import combine_seeds, summary_of_run, write_summary
    from .train import train

    out = Path(out)
    check_spec(recipe, out)
    results = {}
    for stage in recipe.stages:
        stage_dir = out / stage.name
        if (stage_dir / "results.json").exists():
            log(f"stage {stage.name}: done ({stage_dir / 'results.json'})")
            results[stage.name] = json.loads((stage_dir / "results.json").read_text())
            continue
        overrides = list(stage.overrides)
        if stage.init_from:
            overrides.append(f"train.init_weights={out / stage.init_from / 'best.pt'}")
        log(f"stage {stage.name}: {stage.preset} {' '.join(overrides)}")
        results[stage.name] = train(*resolve(stage.preset, overrides), stage_dir,
                                    resume=(stage_dir / "last.pt").exists(), digit_source=digit_source,
                                    data_dir=data_dir, progress=progress, log=log,
                                    provenance={"preset": stage.preset, "command": command})
    summaries = [summary_of_run(results[name], name, recipe.stages[0].preset, command) for name in recipe.seeds]
    summary = combine_seeds(summaries, recipe.name) if summaries else {}
    if recipe.control and summary:
        control = summary_of_run(results[recipe.control], recipe.control, recipe.stages[0].preset, command)
        summary["controls"] = {**summary["controls"], "no-glimpse control": {h: m["mean"] for h, m in control["metrics"].items()}}
    if summary:
        write_summary(summary, out / "summary.json")
    return summary
