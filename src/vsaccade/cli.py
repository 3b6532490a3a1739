"""The `vsaccade` command: train, evaluate, show, predict, prepare, generate, demo, export, bench, presets."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path



def add_data_arguments(parser):
    parser.add_argument("--data-dir", help="directory holding the MNIST IDX files (or an mnist/ folder); "
                        "default: $VSACCADE_DATA/mnist, then the cache")
    parser.add_argument("--digits", choices=("auto", "mnist", "font"), default=None,
                        help="digit source: MNIST, the font-rendered fallback, or auto (MNIST if available)")


def add_checkpoint_arguments(parser):
    """Arguments of the commands that read a checkpoint and rebuild its task."""
    parser.add_argument("checkpoint", help="a checkpoint file or the name of a bundled one")
    parser.add_argument("--split", default="test", choices=("train", "validation", "test"))
    parser.add_argument("--boxes", help="folder datasets: a folder of <split>.csv object boxes (vsaccade generate's "
                                        "DST-boxes), read to measure where the glimpses landed; a model trained from "
                                        "labels alone never saw them")
    add_test_time_arguments(parser)
    add_data_arguments(parser)


def add_test_time_arguments(parser):
    parser.add_argument("--set", action="append", metavar="model.FIELD=VALUE",
                        help="a test-time setting of the trained model (e.g. model.inhibit=cell+window)")


def load_model(args):
    from .checkpoint import load, with_test_time_settings

    return with_test_time_settings(load(args.checkpoint), args.set)


def policy_of(args, model) -> str:
    from .api import own_policy

    return args.policy or own_policy(model)


def command_train(args):
    from .config import ConfigError
    from .presets import resolve
    from .train import train

    overrides = list(args.set or [])
    if args.no_glimpses:
        overrides.append("model.reader=none")
    if args.skip_bad:
        overrides.append("train.skip_bad_files=true")
    for flag, key in (("epochs", "train.epochs"), ("max_minutes", "train.max_minutes"), ("seed", "train.seed")):
        if getattr(args, flag) is not None:
            overrides.append(f"{key}={getattr(args, flag)}")
    model, objective, config = resolve(args.preset, overrides)
    out = Path(args.out or f"runs/{args.preset}{'-noglimpse' if args.no_glimpses else ''}-seed{config.seed}")
    is_main = int(os.environ.get("RANK", "0")) == 0  # under torchrun only rank 0 checks and reports the run directory
    if (out / "last.pt").exists() and not args.resume and is_main:
        raise ConfigError(f"{out} already holds a run; pass --resume to continue it or choose another --out")
    results = train(model, objective, config, out, resume=args.resume, digit_source=args.digits or "auto",
                    data_dir=args.data_dir, progress=not args.no_progress,
                    provenance={"preset": args.preset, "command": command_line(args)})
    if is_main:
        print(f"checkpoint: {results['checkpoint']}\nresults: {out / 'results.json'}")
    return results


def task_from_checkpoint(model, split, args, size=None):
    from .tasks import make_task

    train_config = model.checkpoint["train_config"]
    recorded = (model.checkpoint.get("digit_source") or {}).get("source", "auto")
    options = dict(train_config["task_options"])
    if getattr(args, "boxes", None):
        if train_config["task"] != "folder":
            from .config import ConfigError
            raise ConfigError(f"--boxes is for folder datasets; this model was trained on {train_config['task']!r}")
        options["boxes"] = args.boxes
    size = size or train_config.get(f"{split}_size") or None
    return make_task(train_config["task"], split, seed=train_config["seed"], digit_source=args.digits or recorded,
                     data_dir=args.data_dir, **({"size": size} if size else {}), **options)


def command_evaluate(args):
    from .distributed import Cluster
    from .evaluate import evaluate, summary_line

    cluster = Cluster.from_environment(args.device)  # under torchrun, each process evaluates its share
    try:
        model = load_model(args).to(cluster.device)
        task = task_from_checkpoint(model, args.split, args)
        seed = model.checkpoint["train_config"]["seed"] if args.seed is None else args.seed
        result = evaluate(model, task, policy_of(args, model), args.batch_size, references=not args.no_references, limit=args.limit,
                          seed=seed, cluster=cluster, progress=cluster.is_main)
    finally:
        cluster.close()
    result.update(checkpoint=str(args.checkpoint), split=args.split, task=task.describe(), seed=seed,
                  test_time_settings=model.checkpoint.get("test_time_settings", {}))
    if cluster.is_main:
        print(f"{args.split} ({result['samples']} images): {summary_line(result)}")
        if args.json:
            Path(args.json).write_text(json.dumps(result, indent=2))
            print(f"results: {args.json}")
    return result


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return int(text)


def command_show(args):
    from .show import show_samples

    model = load_model(args)
    task = task_from_checkpoint(model, args.split, args)
    indices = range(args.index, len(task), args.every)[:args.count]
    out = args.out or str(Path(args.checkpoint).with_suffix("")) + f"-{args.split}-glimpses.png"
    path = show_samples(model, [task[i] for i in indices], out)
    print(path)
    return path


def command_demo(args):
    """Train the small embedded default, evaluate it on its test split and draw where it looked."""
    from .checkpoint import load
    from .presets import resolve
    from .show import show_samples
    from .train import build_tasks, train

    model_config, objective, config = resolve("demo", args.set or [])
    out = Path(args.out)
    results = train(model_config, objective, config, out, resume=(out / "last.pt").exists(),
                    digit_source=args.digits or "auto", data_dir=args.data_dir, progress=not args.no_progress,
                    provenance={"preset": "demo", "command": command_line(args)})
    model = load(results["checkpoint"])
    test = build_tasks(config, args.digits or "auto", args.data_dir)["test"]
    path = show_samples(model, [test[i] for i in range(4)], out / "glimpses.png")
    print(f"glimpse picture: {path}")
    return path


def command_predict(args):
    from .predict_files import predict_paths

    import torch

    import hashlib

    from .checkpoint import resolve_checkpoint
    from .distributed import Cluster

    if args.threads:
        torch.set_num_threads(args.threads)
    cluster = Cluster.from_environment("cpu")  # under torchrun, each process predicts its share (docs/files.md)
    try:
        model = load_model(args)
        with open(resolve_checkpoint(args.checkpoint), "rb") as handle:
            digest = hashlib.file_digest(handle, "sha256").hexdigest()
        policy = policy_of(args, model)
        identity = {"checkpoint_sha256": digest, "policy": policy, "settings": args.set or []}
        done, failed = predict_paths(model, args.paths, args.out, policy, args.overlays,
                                     progress=not args.no_progress, readers=args.readers, batch_size=args.batch_size,
                                     cluster=cluster, identity=identity)
    finally:
        cluster.close()
    if cluster.is_main:
        print(f"{done} image(s) predicted, {failed} skipped: {args.out}" + (f"; overlays in {args.overlays}" if args.overlays else ""))
    return 1 if failed else 0


def command_prepare(args):
    from .prepare import prepare_folder

    done, failed = prepare_folder(args.source, args.destination, args.compression, args.quality, progress=not args.no_progress)
    print(f"{done} image(s) in {args.destination} as tiled pyramidal TIFF, {failed} skipped")
    return 1 if failed else 0


def default(value, fallback):
    return fallback if value is None else value


def command_generate(args):
    if args.benchmark == "megapixel":
        from .tasks.megapixel import write_files

        sizes = {"train": default(args.train, 4500), "validation": default(args.validation, 500),
                 "test": default(args.test, 1000)}
        if args.size is not None and not args.size.isdigit():
            from .config import ConfigError
            raise ConfigError(f"megapixel --size is the canvas side in pixels, e.g. 6000; got {args.size!r}")
        root = write_files(args.destination, sizes, seed=args.seed, digit_source=args.digits or "auto",
                           data_dir=args.data_dir, progress=not args.no_progress,
                           **({"canvas_size": int(args.size)} if args.size else {}))
        print(f"Megapixel MNIST in {root} (labels of all four heads in {root}-labels, digit boxes in {root}-boxes; "
              f"vsaccade train --preset folder --set task.root={root} --set task.channels=1 --set model.anchor=attention "
              f"--set task.boxes={root}-boxes; every canvas shows digits: no background class for the presence anchor)")
        return root
    from .config import ConfigError
    from .tasks.folder import boxes_folder
    from .tasks.speed_signs import SceneSize, generate

    width, _, height = default(args.size, "4000x3000").partition("x")
    if not (width.isdigit() and height.isdigit()):
        raise ConfigError(f"--size must be WIDTHxHEIGHT, e.g. 1280x960; got {args.size!r}")
    try:
        size = SceneSize(int(width), int(height), tuple(args.sign_sides))
    except ValueError as error:
        raise ConfigError(str(error)) from None
    sizes = {"train": default(args.train, 3000), "test": default(args.test, 1000),
             **({"validation": args.validation} if args.validation else {})}
    root = generate(args.destination, sizes, seed=args.seed, progress=not args.no_progress, size=size)
    print(f"speed-sign benchmark in {root}, its boxes in {boxes_folder(root)} (folder dataset: vsaccade train "
          f"--preset folder --set task.root={root}; box-supervised presets also --set task.boxes={boxes_folder(root)})")
    return root


def command_export(args):
    from .checkpoint import export_checkpoint

    path = export_checkpoint(args.checkpoint, args.out, args.set or [])
    print(f"{path} ({path.stat().st_size / 1e6:.1f} MB, optimiser and RNG state dropped)")
    return path


def command_bench(args):
    from .bench import bench

    if args.checkpoint or args.files:
        return command_bench_files(args)
    report = bench(sizes=args.sizes, models=args.models, kinds=args.kinds, threads=args.threads, repeats=args.repeats,
                   warmup=args.warmup, batch=args.batch, device=args.device, out=args.out, cache=args.cache,
                   seed=args.seed, digit_source=args.digits or "auto", data_dir=args.data_dir,
                   memory=not args.no_memory, progress=not args.no_progress,
                   command=command_line(args))
    out = Path(args.out)
    print((out / "bench.md").read_text())
    print(f"results: {out / 'bench.json'}, {out / 'bench.md'}, {out / 'bench.png'}")
    return report


def command_bench_files(args):
    from .bench_files import bench_files, describe
    from .config import ConfigError

    if not (args.checkpoint and args.files):
        raise ConfigError("bench over a folder needs both --checkpoint CKPT and --files DIR")
    out = Path(args.out) / "bench-files.json"
    report = bench_files(args.checkpoint, args.files, args.threads[0], args.files_limit, args.set or [], out,
                         progress=not args.no_progress, command=command_line(args))
    print(describe(report))
    print(f"results: {out}")
    return report


def command_presets(args):
    from .presets import PRESETS

    print(json.dumps(PRESETS if args.verbose else sorted(PRESETS), indent=2))


def add_train_command(sub) -> None:
    p = sub.add_parser("train", help="train a model from a preset",
                       epilog="Several processes or machines: torchrun ... -m vsaccade.cli train ... (docs/distributed.md)")
    p.add_argument("--preset", default="cluttered-pair", help="see `vsaccade presets`")
    p.add_argument("--out", help="run directory (default runs/PRESET-seedN)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a config field (repeatable)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--max-minutes", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--no-glimpses", action="store_true", help="control run: glimpse features zeroed")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    p.add_argument("--skip-bad", action="store_true", help="file datasets: leave out unreadable images (logged and "
                   "counted) instead of stopping")
    p.add_argument("--no-progress", action="store_true")
    add_data_arguments(p)
    p.set_defaults(handler=command_train)


def add_evaluate_command(sub) -> None:
    p = sub.add_parser("evaluate", help="accuracy and localisation of a checkpoint")
    add_checkpoint_arguments(p)
    p.add_argument("--policy", help="'mode' or 'samples:K' (default: the checkpoint's own, train.eval_policy)")
    p.add_argument("--limit", type=int, help="evaluate only the first N images")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--no-references", action="store_true", help="skip the random- and prior-glimpse references")
    p.add_argument("--json", help="write the results here")
    p.add_argument("--seed", type=int, help="seed of the posterior draws (default: the run's train.seed)")
    p.add_argument("--device", default="cpu", choices=("auto", "cpu", "cuda"))
    p.set_defaults(handler=command_evaluate)


def add_show_command(sub) -> None:
    p = sub.add_parser("show", help="PNG of the proxy, the glimpse windows and the glimpses")
    add_checkpoint_arguments(p)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--count", type=int, default=4)
    p.add_argument("--every", type=positive_int, default=1, help="take every N-th sample from --index on (spread over a sorted folder's classes)")
    p.add_argument("--out", help="PNG path")
    p.set_defaults(handler=command_show)


def add_demo_command(sub) -> None:
    p = sub.add_parser("demo", help="train the embedded default for a few minutes, evaluate, draw the glimpses")
    p.add_argument("--out", default="runs/demo")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE")
    p.add_argument("--no-progress", action="store_true")
    add_data_arguments(p)
    p.set_defaults(handler=command_demo)


def add_predict_command(sub) -> None:
    from .predict_files import BATCH_SIZE

    p = sub.add_parser("predict", help="classify image files/folders/globs into a CSV (glimpse boxes included)")
    p.add_argument("checkpoint", help="a checkpoint file or the name of a bundled one")
    p.add_argument("paths", nargs="+", help="image files, folders (recursive) or glob patterns")
    add_test_time_arguments(p)
    p.add_argument("--out", default="predictions.csv", help="CSV to write (default predictions.csv)")
    p.add_argument("--overlays", metavar="DIR", help="also write a PNG per image with its glimpse windows")
    p.add_argument("--policy", help="'mode' or 'samples:K' (default: the checkpoint's own, train.eval_policy)")
    p.add_argument("--threads", type=positive_int, help="torch threads for the model (default: torch's)")
    p.add_argument("--readers", type=positive_int, default=2, help="threads opening files ahead of the model (default 2)")
    p.add_argument("--batch-size", type=positive_int, default=BATCH_SIZE, help=f"images per forward (default {BATCH_SIZE})")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=command_predict)


def add_prepare_command(sub) -> None:
    p = sub.add_parser("prepare", help="convert a folder of images to tiled pyramidal TIFFs (same layout)")
    p.add_argument("source")
    p.add_argument("destination")
    p.add_argument("--compression", default="jpeg", choices=("jpeg", "deflate", "lzw", "none"))
    p.add_argument("--quality", type=int, default=90, help="JPEG quality of the tiles (default 90)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=command_prepare)


def add_generate_command(sub) -> None:
    p = sub.add_parser("generate", help="write a synthetic benchmark as a folder dataset (speed-signs, megapixel)")
    p.add_argument("benchmark", choices=("speed-signs", "megapixel"))
    p.add_argument("destination")
    p.add_argument("--train", type=int, help="images (default: speed-signs 3000, megapixel 4500; 0 skips the split)")
    p.add_argument("--test", type=int, help="images (default 1000)")
    p.add_argument("--validation", type=int,
                   help="images (default: speed-signs 0, every 10th training image held out; megapixel 500)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--size", help="speed-signs: WIDTHxHEIGHT of each scene (default 4000x3000); megapixel: the square "
                   "canvas side (default 1500)")
    p.add_argument("--sign-sides", type=int, nargs=2, default=[40, 120], metavar=("LO", "HI"),
                   help="speed-signs: sides of signs and decoys in pixels (default 40 120)")
    add_data_arguments(p)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(handler=command_generate)


def add_export_command(sub) -> None:
    p = sub.add_parser("export", help="copy a checkpoint without its optimiser/RNG state (to ship or predict)")
    p.add_argument("checkpoint")
    p.add_argument("out")
    add_test_time_arguments(p)
    p.set_defaults(handler=command_export)


def add_bench_command(sub) -> None:
    p = sub.add_parser("bench", help="latency, throughput, memory and FLOPs of every model vs image size (JSON, "
                       "Markdown, PNG)", description="See the docstring of vsaccade/bench.py for what is measured and how.")
    p.add_argument("--sizes", nargs="+", type=int, default=[500, 1000, 1500, 3000, 6000], help="canvas sides in pixels")
    p.add_argument("--models", nargs="+", default=["saccader", "fullres", "proxy", "ats"],
                   help="registered models (ats is skipped with a note where it is not registered)")
    p.add_argument("--kinds", nargs="+", choices=("memory", "file"), default=["memory", "file"],
                   help="in-memory canvases and/or tiled pyramidal TIFF files")
    p.add_argument("--threads", nargs="+", type=int, default=[1, 2], help="torch threads, each measured")
    p.add_argument("--repeats", type=int, default=20, help="timed calls per model after the warm-up (default 20)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--batch", type=int, default=16, help="throughput batch (halved to a power of two on OOM)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    p.add_argument("--out", default="runs/bench", help="writes OUT/bench.json, bench.md, bench.png")
    p.add_argument("--cache", help="canvases and TIFF files (default OUT/cache)")
    p.add_argument("--seed", type=int, default=0, help="scene and weight seed")
    p.add_argument("--no-memory", action="store_true", help="skip the memory subprocesses")
    p.add_argument("--checkpoint", help="with --files: bench this trained model (a file or a bundled name) over a folder")
    p.add_argument("--files", metavar="DIR", help="with --checkpoint: a folder of images, one new file per call "
                   "(bench_files.py); writes OUT/bench-files.json")
    p.add_argument("--files-limit", type=int, help="use at most this many files of DIR")
    p.add_argument("--set", action="append", metavar="model.FIELD=VALUE", help="with --checkpoint: a test-time setting")
    p.add_argument("--no-progress", action="store_true")
    add_data_arguments(p)
    p.set_defaults(handler=command_bench)


def add_results_command(sub) -> None:
    p = sub.add_parser("results", help="render the results page from a folder of run summaries (results.py)")
    p.add_argument("folder", nargs="?", default="docs/results", help="summary JSONs (default docs/results)")
    p.add_argument("--out", default="docs/results.md")
    p.add_argument("--check", action="store_true", help="exit 1 if OUT is not the regeneration")
    p.set_defaults(handler=command_results)


def add_recipe_command(sub) -> None:
    p = sub.add_parser("recipe", help="train named stages in order, resumable (recipes.py): `seeds` of a preset and "
                       "its no-glimpse control (mean and each seed); `folder`, the label-only recipe for a folder of "
                       "photos (the folder preset per seed, then its reader fitted to its own glimpses); or "
                       "`speed-signs-polished`, the box-supervised speed-sign model (pretrained reader, search, "
                       "polish, chosen on validation)")
    p.add_argument("recipe", choices=("seeds", "folder", "speed-signs-polished"))
    p.add_argument("--preset", help="seeds: the preset (see `vsaccade presets`); folder: default folder")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--control", action="store_true", help="seeds: also train the no-glimpse control (first seed)")
    p.add_argument("--set", action="append", metavar="SECTION.FIELD=VALUE", help="override a config field (every stage)")
    p.add_argument("--stage", action="append", metavar="STAGE.SETTING=VALUE",
                   help="one stage's setting (e.g. reader.crops=1000) or config field (e.g. search-s0.train.epochs=2)")
    p.add_argument("--out", required=True, help="the recipe's run directory (a folder per stage)")
    p.add_argument("--no-progress", action="store_true")
    add_data_arguments(p)
    p.set_defaults(handler=command_recipe)


def command_recipe(args):
    from .config import ConfigError
    from .recipes import folder_recipe, run_recipe, seeds_recipe, speed_signs_polished_recipe, with_stage_settings

    if args.recipe == "seeds":
        if not args.preset:
            raise ConfigError("recipe seeds needs --preset")
        recipe = seeds_recipe(args.preset, tuple(args.seeds), args.control, tuple(args.set or []))
    elif args.recipe == "folder":
        recipe = folder_recipe(tuple(args.seeds), args.control, tuple(args.set or []), args.preset or "folder")
    else:
        if args.preset or args.control:
            raise ConfigError("recipe speed-signs-polished names its own presets and has no control: drop --preset "
                              "and --control")
        recipe = speed_signs_polished_recipe(tuple(args.set or []), tuple(args.seeds))
    recipe = with_stage_settings(recipe, args.stage or [])
    summary = run_recipe(recipe, args.out, command_line(args), args.digits or "auto", args.data_dir,
                         progress=not args.no_progress)
    print(f"summary: {Path(args.out) / 'summary.json'}")
    return summary


def add_presets_command(sub) -> None:
    p = sub.add_parser("presets", help="list the presets")
    p.add_argument("--verbose", action="store_true")
    p.set_defaults(handler=command_presets)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vsaccade", description="Variational Saccading for huge images.")
    sub = parser.add_subparsers(dest="command", required=True)
    add_train_command(sub)
    add_evaluate_command(sub)
    add_show_command(sub)
    add_demo_command(sub)
    add_predict_command(sub)
    add_prepare_command(sub)
    add_generate_command(sub)
    add_export_command(sub)
    add_bench_command(sub)
    add_results_command(sub)
    add_recipe_command(sub)
    add_presets_command(sub)
    return parser


def command_line(args) -> str:
    """The command as typed (quoted where needed), for run records."""
    import shlex

    return "vsaccade " + shlex.join(args.argv)


def command_results(args):
    from .results import read_summaries, render

    page = render(read_summaries(args.folder), args.folder)
    out = Path(args.out)
    if args.check:
        if not out.exists() or out.read_text() != page:
            print(f"{out} is not the regeneration of {args.folder}: run vsaccade results {args.folder} --out {out}",
                  file=sys.stderr)
            return 1
        return 0
    out.write_text(page)
    print(f"results page: {out}")
    return 0


def one_line(error: Exception) -> str:
    return " ".join(str(error).split())


def main(argv=None) -> int:
    from .checkpoint import CheckpointError
    from .config import ConfigError
    from .data.digits import DataSourceError
    from .images import ImageError
    from .train import TrainingStopped

    args = build_parser().parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    try:
        status = args.handler(args)
    except (ConfigError, CheckpointError, DataSourceError, ImageError) as error:
        print(f"vsaccade: error: {one_line(error)}", file=sys.stderr)
        return 2
    except TrainingStopped as stopped:
        print(f"vsaccade: {one_line(stopped)}", file=sys.stderr)
        return stopped.exit_code
    except KeyboardInterrupt:
        print("vsaccade: interrupted", file=sys.stderr)
        return 130
    return status if isinstance(status, int) else 0


if __name__ == "__main__":
    sys.exit(main())
