"""Recipes: what is trained in which order, as named stages run one after the other in OUT/<stage>/. A recipe's run
directory holds its spec (recipe.json) and, at the end, the summary of the whole (summary.json, results.py).

    vsaccade recipe seeds --preset megapixel-500 --seeds 0 1 --control --out runs/mp500
    vsaccade recipe folder --seeds 0 1 --control --out runs/photos --set task.root=DATA
    vsaccade recipe speed-signs-polished --out runs/signs --set task.root=DATA --set task.boxes=DATA-boxes

A stage is of one kind (STAGE_KINDS): `train` (one `vsaccade train` run of a preset with overrides),
`pretrain-reader` and `polish-reader` (reader_stages.py; they read boxes), `fit-reader` (label_reader.py; labels
only), `select` (the candidate stage whose model reads the validation split best, evaluated once on the test split). A stage may start from an earlier stage's product
(`init_from`: a train stage's best.pt, a pretrained reader's weights.pt, a polished or selected model.pt).

* Resumable: a stage with results.json is done and skipped; a stage killed mid-way resumes where it stopped (train's
  exact resume; the reader stages' per-epoch state); a killed recipe rerun with the same command continues.
* A rerun with another spec (presets, overrides, settings, seeds, stages) is refused with a one-line error.
* Progress is tqdm's; every file is written atomically.

`seeds` is the recipe users reach for first: the same preset under several seeds, and optionally the no-glimpse
control, summarised as the mean and each seed's figure beside the control (the form the results pages take).
`folder` is the label-only recipe for a folder of photos: each seed's folder-preset model with its reader fitted to
its own glimpses. `speed-signs-polished` is the box-supervised speed-sign model (docs/benchmarks/files.md).
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable

from .atomic import write_text
from .config import ConfigError
from .label_reader import FIT_SETTINGS, fit_reader
from .reader_stages import POLISH_SETTINGS, PRETRAIN_SETTINGS, polish_reader, pretrain_reader


@dataclass(frozen=True)
class Stage:
    name: str
    preset: str
    overrides: tuple = ()
    init_from: str = ""  # an earlier stage whose product this one starts from
    kind: str = "train"  # one of STAGE_KINDS
    settings: dict = field(default_factory=dict)  # the kind's sizes (reader_stages.py; select: "candidates")


@dataclass
class Recipe:
    name: str
    stages: list = field(default_factory=list)
    seeds: tuple = ()  # the train stages summarised together as seeds
    control: str = ""  # the stage whose figures are the no-glimpse control
    summary_from: str = ""  # a select stage whose test evaluation is the recipe's result


def seeds_recipe(preset: str, seeds=(0, 1), control: bool = False, overrides=()) -> Recipe:
    """The preset once per seed, and optionally its no-glimpse control (first seed)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"a seeds recipe needs distinct seeds, got {list(seeds)}")
    stages = [Stage(f"seed{s}", preset, (*overrides, f"train.seed={s}")) for s in seeds]
    if control:
        stages.append(Stage("no-glimpses", preset, (*overrides, f"train.seed={seeds[0]}", "model.reader=none")))
    return Recipe(f"seeds:{preset}", stages, tuple(f"seed{s}" for s in seeds), "no-glimpses" if control else "")


def folder_recipe(seeds=(0, 1), control: bool = False, overrides=(), preset: str = "folder") -> Recipe:
    """The label-only recipe for a folder of photos (README): the folder preset once per seed, then its reader fitted
    to its own glimpses from the image labels (`fit-reader`, label_reader.py); optionally the no-glimpse control
    (first seed). Summarised over the fitted models, each evaluated once on the test split."""
    trained = seeds_recipe(preset, seeds, control, overrides)
    stages = []
    for stage in trained.stages[:len(seeds)]:
        stages += [stage, Stage(f"read-{stage.name}", preset, tuple(overrides), stage.name, "fit-reader")]
    return Recipe(f"folder:{preset}", stages + trained.stages[len(seeds):], tuple(f"read-seed{s}" for s in seeds),
                  trained.control)


def speed_signs_polished_recipe(overrides=(), seeds=(0, 1)) -> Recipe:
    """The box-supervised speed-sign model (docs/benchmarks/files.md): a reader pretrained on oracle glimpses at the
    boxes and 60,000 drawn crops; 3 more epochs on hard negatives (a decoy where a sign would be); the search preset
    from that reader once per seed; each one's reader polished; of the four, the one that reads validation best.
    2 threads, search stages 10 epochs within 95 minutes; `overrides` come after these (each seed's stage keeps its
    seed)."""
    if not seeds or len(set(seeds)) != len(seeds):
        raise ConfigError(f"the speed-signs-polished recipe needs distinct seeds, got {list(seeds)}")
    common = ("train.threads=2", *overrides)
    stages = [Stage("reader", "speed-signs-boxes", common, kind="pretrain-reader", settings={"crops": 60000}),
              Stage("hard", "speed-signs-boxes", common, "reader", "pretrain-reader",
                    {"crops": 20000, "centred_decoys": 1.0, "epochs": 3, "lr": 3e-4})]
    for seed in seeds:
        searching = ("train.threads=2", "train.epochs=10", "train.max_minutes=95", *overrides, f"train.seed={seed}")
        stages += [Stage(f"search-s{seed}", "speed-signs-search", searching, "hard"),
                   Stage(f"polish-s{seed}", "speed-signs-search", common, f"search-s{seed}", "polish-reader")]
    stages.append(Stage("select", "speed-signs-search", common, kind="select",
                        settings={"candidates": [f"{kind}-s{seed}" for kind in ("search", "polish") for seed in seeds]}))
    return Recipe("speed-signs-polished", stages, summary_from="select")


def with_stage_settings(recipe: Recipe, items) -> Recipe:
    """`STAGE.KEY=VALUE` items: a setting of that stage (reader stages: crops, epochs, ...), or, where KEY names a
    config field (train.epochs, model.hidden, ...), an override of it."""
    from .presets import parse_value

    stages = {stage.name: stage for stage in recipe.stages}
    for item in items:
        key, sep, value = item.partition("=")
        name, dot, setting = key.partition(".")
        if not sep or not dot or name not in stages:
            raise ConfigError(f"--stage {item!r} must look like STAGE.SETTING=VALUE with STAGE one of {list(stages)}")
        stage = stages[name]
        if setting.partition(".")[0] in ("model", "objective", "train", "task"):
            stages[name] = replace(stage, overrides=(*stage.overrides, f"{setting}={value}"))
        else:
            stages[name] = replace(stage, settings={**stage.settings, setting: parse_value(value)})
    return replace(recipe, stages=[stages[stage.name] for stage in recipe.stages])


def check_spec(recipe: Recipe, out: Path) -> None:
    """Record the recipe's spec in OUT/recipe.json, or refuse a rerun under another one."""
    spec = json.loads(json.dumps(asdict(recipe)))  # tuples as lists, as read back
    path = out / "recipe.json"
    if path.exists() and json.loads(path.read_text()) != spec:
        raise ConfigError(f"{out} holds a run of another recipe spec ({path}); rerun with the same command or use a "
                          "new --out")
    write_text(path, json.dumps(spec, indent=2) + "\n")


def train_stage(stage: Stage, out: Path, init, run: dict) -> dict:
    from .presets import resolve
    from .train import train

    stage_dir = out / stage.name
    overrides = list(stage.overrides) + ([f"train.init_weights={init}"] if init else [])
    return train(*resolve(stage.preset, overrides), stage_dir, resume=(stage_dir / "last.pt").exists(),
                 digit_source=run["digit_source"], data_dir=run["data_dir"], progress=run["progress"], log=run["log"],
                 provenance={"preset": stage.preset, "command": run["command"]})


def evaluate_checkpoint(path: Path, split: str, references: bool, progress: bool, policy: str | None = None) -> dict:
    """A checkpoint's model on a split of its own task, evaluated as its run was (its eval_policy, unless `policy`
    says otherwise, and its eval_batch_size)."""
    from .checkpoint import load
    from .evaluate import evaluate
    from .tasks import make_task

    model = load(path)
    config = model.checkpoint["train_config"]
    task = make_task(config["task"], split, seed=config["seed"], **config["task_options"])
    return evaluate(model, task, policy or config["eval_policy"], config["eval_batch_size"], references=references,
                    seed=config["seed"], progress=progress)


def select_stage(stage: Stage, out: Path, init, run: dict) -> dict:
    """The candidate whose model reads the validation split best (first head's metric; ties: the first), copied to
    OUT/<stage>/model.pt and evaluated once on the test split, with the random- and prior-glimpse controls."""
    from .atomic import write_bytes
    from .results import head_metrics

    def evaluation(path: Path, split: str, references: bool) -> dict:
        return evaluate_checkpoint(path, split, references, run["progress"])

    candidates = {name: product(run["recipe"], out, name) for name in stage.settings["candidates"]}
    validation = {name: next(iter(head_metrics(evaluation(path, "validation", False)).values()))
                  for name, path in candidates.items()}
    chosen = max(validation, key=lambda name: (validation[name], -list(validation).index(name)))
    model = write_bytes(out / stage.name / "model.pt", candidates[chosen].read_bytes())
    run["log"](f"stage {stage.name}: {chosen} reads validation best ({validation})")
    return {"stage": stage.name, "kind": stage.kind, "validation": validation, "chosen": chosen,
            "test": evaluation(model, "test", True)}


@dataclass(frozen=True)
class StageKind:
    run: Callable  # (stage with its settings filled in, OUT, the init_from stage's product or None, run) -> results
    product: str  # the file in OUT/<stage>/ that later stages start from
    settings: dict  # the settings it takes, with their defaults


STAGE_KINDS = {"train": StageKind(train_stage, "best.pt", {}),
               "pretrain-reader": StageKind(pretrain_reader, "weights.pt", PRETRAIN_SETTINGS),
               "polish-reader": StageKind(polish_reader, "model.pt", POLISH_SETTINGS),
               "fit-reader": StageKind(fit_reader, "model.pt", FIT_SETTINGS),
               "select": StageKind(select_stage, "model.pt", {"candidates": []})}


def stage_named(recipe: Recipe, name: str) -> Stage:
    return next(stage for stage in recipe.stages if stage.name == name)


def product(recipe: Recipe, out: Path, name: str) -> Path:
    """Where the stage `name` leaves what later stages start from."""
    return out / name / STAGE_KINDS[stage_named(recipe, name).kind].product


def check_recipe(recipe: Recipe) -> None:
    """Refuse, in one line and before anything trains, a recipe that cannot run as written."""
    names = [stage.name for stage in recipe.stages]
    if len(set(names)) != len(names):
        raise ConfigError(f"stage names must be distinct, got {names}")
    for index, stage in enumerate(recipe.stages):
        if stage.kind not in STAGE_KINDS:
            raise ConfigError(f"stage {stage.name}: unknown kind {stage.kind!r}; choose one of {sorted(STAGE_KINDS)}")
        known = STAGE_KINDS[stage.kind].settings
        unknown = sorted(set(stage.settings) - set(known))
        if unknown:
            raise ConfigError(f"stage {stage.name}: unknown setting {unknown[0]!r} for a {stage.kind} stage; "
                              f"its settings: {', '.join(known) or 'none (use config overrides)'}")
        earlier = set(names[:index])
        needed = {stage.init_from} - {""} | set(stage.settings.get("candidates", []))
        if not needed <= earlier:
            raise ConfigError(f"stage {stage.name} starts from {sorted(needed - earlier)}, not an earlier stage")
        if stage.kind == "select" and not stage.settings.get("candidates"):
            raise ConfigError(f"stage {stage.name}: a select stage needs candidates")
    if recipe.summary_from and stage_named(recipe, recipe.summary_from).kind != "select":
        raise ConfigError(f"a recipe's summary comes from a select stage, not {recipe.summary_from!r}")


def seed_of(recipe: Recipe, results: dict, name: str) -> int:
    """The seed of the train stage that the stage `name` descends from."""
    stage = stage_named(recipe, name)
    return results[name]["train_config"]["seed"] if stage.kind == "train" else seed_of(recipe, results, stage.init_from)


def summary_of_selection(recipe: Recipe, results: dict, command: str) -> dict:
    """The summary of a recipe whose result is a select stage's test evaluation (one model: the chosen one's seed).
    Minutes: the train stages' training minutes plus the other stages' wall time (that of the call that finished
    each); images seen: the train stages'."""
    from .results import summary_of_evaluation

    select = results[recipe.summary_from]
    trained = [results[stage.name] for stage in recipe.stages if stage.kind == "train"]
    seconds = sum(r["seconds"] for r in results.values() if "seconds" in r)
    return summary_of_evaluation(
        select["test"], name=recipe.name, task=trained[0]["task"].get("name", ""), preset=recipe.name,
        seeds=[seed_of(recipe, results, select["chosen"])], supervision="boxes",
        minutes=round(sum(r["train_minutes"] for r in trained) + seconds / 60, 1),
        images_seen=sum(r["images_seen"] for r in trained),
        commit=trained[0].get("vsaccade_version", "").rpartition("+")[2], command=command,
        note=f"{select['chosen']} chosen on validation accuracy ({select['validation']}); test evaluated once; "
             f"trained seeds {[r['train_config']['seed'] for r in trained]}")


def seed_summary(recipe: Recipe, results: dict, name: str, command: str) -> dict:
    """One seed's summary: a train stage's run, or a fit-reader stage's model (its test evaluation and code version;
    minutes: its train stage's and its own; images seen: its train stage's)."""
    from .results import summary_of_run

    stage = stage_named(recipe, name)
    if stage.kind == "train":
        return summary_of_run(results[name], name, stage.preset, command)
    trained = results[stage.init_from]
    minutes = trained["train_minutes"] + results[name]["minutes"]
    return summary_of_run({**trained, "test": results[name]["test"], "train_minutes": minutes,
                           "vsaccade_version": results[name].get("vsaccade_version", "")}, name, stage.preset, command)


def summarise(recipe: Recipe, results: dict, command: str) -> dict:
    from .results import combine_seeds, summary_of_run

    if recipe.summary_from:
        return summary_of_selection(recipe, results, command)
    summaries = [seed_summary(recipe, results, name, command) for name in recipe.seeds]
    summary = combine_seeds(summaries, recipe.name) if summaries else {}
    if recipe.control and summary:
        control = summary_of_run(results[recipe.control], recipe.control, recipe.stages[0].preset, command)
        summary["controls"] = {**summary["controls"], "no-glimpse control": {h: m["mean"] for h, m in control["metrics"].items()}}
    return summary


def run_recipe(recipe: Recipe, out, command: str = "", digit_source: str = "auto", data_dir=None,
               progress: bool = True, log=print) -> dict:
    """Run (or continue) every stage in order; returns the recipe's summary (also OUT/summary.json)."""
    from .results import write_summary

    out = Path(out)
    check_recipe(recipe)
    check_spec(recipe, out)
    run = {"recipe": recipe, "command": command, "digit_source": digit_source, "data_dir": data_dir,
           "progress": progress, "log": log}
    results = {}
    for stage in recipe.stages:
        done, kind = out / stage.name / "results.json", STAGE_KINDS[stage.kind]
        if done.exists():
            if not (out / stage.name / kind.product).exists():
                raise ConfigError(f"stage {stage.name} has results.json but no {kind.product}: remove {out / stage.name} "
                                  "to run it again")
            log(f"stage {stage.name}: done ({done})")
            results[stage.name] = json.loads(done.read_text())
            continue
        init = product(recipe, out, stage.init_from) if stage.init_from else None
        stage = replace(stage, settings={**kind.settings, **stage.settings})
        log(f"stage {stage.name} ({stage.kind}): {stage.preset} {' '.join(stage.overrides)} {stage.settings or ''}")
        started = time.time()
        results[stage.name] = kind.run(stage, out, init, run)
        if stage.kind != "train":  # train writes its own
            results[stage.name]["seconds"] = time.time() - started
            write_text(done, json.dumps(results[stage.name], indent=2) + "\n")
    summary = summarise(recipe, results, command)
    if summary:
        write_summary(summary, out / "summary.json")
    return summary
