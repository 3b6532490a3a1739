"""The command line: train -> evaluate -> show, resume, and one-line errors for bad arguments."""

import json
import subprocess
import sys

import pytest
import torch

from vsaccade.cli import main

TINY = ["--preset", "tiny", "--no-progress", "--set", "train.train_size=64", "--set", "train.validation_size=32",
        "--set", "train.test_size=32", "--epochs", "1"]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    assert main(["train", "--out", str(out)] + TINY) == 0
    return out


def test_train_writes_checkpoints_metrics_and_results(trained, needs_mnist):
    assert {"best.pt", "last.pt", "config.json", "metrics.jsonl", "results.json"} <= {p.name for p in trained.iterdir()}
    results = json.loads((trained / "results.json").read_text())
    assert results["digit_source"]["source"] == "mnist" and results["test"]["samples"] == 32
    assert len((trained / "metrics.jsonl").read_text().splitlines()) == 1


def test_evaluate_and_show(trained, tmp_path, capsys, monkeypatch, needs_mnist):
    assert main(["evaluate", str(trained / "best.pt"), "--limit", "16", "--json", str(tmp_path / "e.json")]) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["samples"] == 16 and "random_glimpses" in result and "prior_glimpses" in result
    assert main(["show", str(trained / "best.pt"), "--count", "2", "--out", str(tmp_path / "g.png")]) == 0
    assert (tmp_path / "g.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(tmp_path / "g.png") in capsys.readouterr().out
    import argparse

    import vsaccade.show
    from vsaccade.checkpoint import load
    from vsaccade.cli import task_from_checkpoint

    shown = []
    monkeypatch.setattr(vsaccade.show, "show_samples", lambda model, samples, path: shown.extend(samples) or path)
    assert main(["show", str(trained / "best.pt"), "--count", "2", "--every", "10", "--index", "1", "--out", "s.png"]) == 0
    task = task_from_checkpoint(load(trained / "best.pt"), "test", argparse.Namespace(data_dir=None, digits=None))
    assert len(shown) == 2 and all(torch.equal(a.proxy, task[i].proxy) for a, i in zip(shown, (1, 11)))
    with pytest.raises(SystemExit):
        main(["show", str(trained / "best.pt"), "--every", "0"])
    assert "expected a positive integer" in capsys.readouterr().err


def test_resume_continues_where_it_stopped(trained, capsys, needs_mnist):
    assert main(["train", "--out", str(trained)] + TINY) == 2
    assert "pass --resume" in capsys.readouterr().err
    assert main(["train", "--out", str(trained), "--resume"] + TINY[:-1] + ["2"]) == 0
    lines = (trained / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["epoch"] for line in lines] == [1, 2]


@pytest.mark.parametrize("argv,message", [
    (["train", "--preset", "nope"], "unknown preset 'nope'"),
    (["train", "--preset", "tiny", "--set", "model.colour=3"], "unknown ModelConfig field"),
    (["train", "--preset", "tiny", "--set", "glimpses=3"], "must look like model.FIELD=VALUE"),
    (["train", "--preset", "tiny", "--set", "train.lr=-1"], "lr must be positive"),
    (["evaluate", "missing.pt"], "checkpoint not found: missing.pt"),
    (["evaluate", "missing.pt", "--policy", "best"], "checkpoint not found"),
])
def test_bad_arguments_get_one_line_errors(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_explicit_mnist_without_data_fails_clearly(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("VSACCADE_DATA", raising=False)
    from vsaccade.data.digits import clear_cache
    clear_cache()
    assert main(["train", "--preset", "tiny", "--digits", "mnist", "--out", str(tmp_path / "r")] + TINY[2:]) == 2
    err = capsys.readouterr().err
    assert "MNIST" in err and len(err.strip().splitlines()) == 1, err


def test_console_script_runs():
    done = subprocess.run([sys.executable, "-m", "vsaccade.cli", "presets"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "megapixel" in done.stdout


def test_megapixel_four_heads_train_and_evaluate(tmp_path, needs_mnist):
    """One model, four heads (majority, max, top, multi): trains a step and reports every head."""
    argv = ["train", "--preset", "megapixel", "--out", str(tmp_path / "mp"), "--no-progress", "--epochs", "1",
            "--set", "task.canvas_size=400", "--set", "train.train_size=32", "--set", "train.validation_size=16",
            "--set", "train.test_size=16", "--set", "train.batch_size=16"]
    assert main(argv) == 0
    results = json.loads((tmp_path / "mp" / "results.json").read_text())
    heads = results["test"]["model"]["heads"]
    assert set(heads) == {"majority", "max", "top", "multi"}
    assert set(heads["multi"]) == {"exact_match", "macro_f1"} and "accuracy" in heads["top"]
    assert results["task"]["name"] == "megapixel"


def test_bundled_megapixel_checkpoint_reads_megapixel_mnist(tmp_path, capsys, needs_mnist):
    # The committed checkpoint (docs/benchmarks/megapixel.md) works out of the box, by name, and has learned.
    argv = ["evaluate", "megapixel", "--limit", "96", "--no-references", "--json", str(tmp_path / "e.json")]
    assert main(argv) == 0
    result = json.loads((tmp_path / "e.json").read_text())
    assert result["samples"] == 96 and result["model"]["heads"]["majority"]["accuracy"] > 0.6  # chance: 0.1
    assert result["model"]["hit_rate"] > 0.6
    assert main(["show", "megapixel", "--count", "1", "--out", str(tmp_path / "show.png")]) == 0
    assert (tmp_path / "show.png").stat().st_size > 10_000


def test_every_preset_resolves_to_valid_configs_that_round_trip():
    from vsaccade.presets import PRESETS, resolve

    for name in PRESETS:
        configs = resolve(name)  # raises on an invalid preset
        for config in configs:
            assert type(config).from_dict(config.to_dict()) == config, name
