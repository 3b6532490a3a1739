"""`vsaccade predict`: files, folders and globs -> CSV rows with probabilities and glimpse boxes; bad files are
reported and skipped, and the exit status says so."""

import csv

import numpy as np
import pytest
import torch
from PIL import Image

import vsaccade
from vsaccade.checkpoint import save_checkpoint
from vsaccade.cli import main
from vsaccade.predict_files import expand_paths

pytest.importorskip("pyvips")


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = vsaccade.create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32, glimpses=2,
                                  heads=[{"name": "digit", "num_classes": 3, "kind": "class"}])
    path = tmp_path / "model.pt"
    save_checkpoint({"model_name": "saccader", "model_config": model.config.to_dict(), "state_dict": model.state_dict()}, path)
    return path


@pytest.fixture
def folder(tmp_path):
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    rng = np.random.default_rng(0)
    Image.fromarray((rng.random((120, 200)) * 255).astype(np.uint8)).save(root / "a.png")
    Image.fromarray((rng.random((90, 90, 3)) * 255).astype(np.uint8)).save(root / "sub" / "b.jpg")
    Image.fromarray((rng.random((300, 100)) * 255).astype(np.uint8)).save(root / "sub" / "c.tif")
    (root / "sub" / "broken.jpg").write_bytes(b"\xff\xd8\xff" + b"\x00" * 50)
    (root / "notes.png").write_text("hello")
    (root / "readme.txt").write_text("not an image suffix: ignored when expanding folders")
    return root


def test_expand_paths_finds_files_folders_and_globs(folder):
    found = expand_paths([str(folder)])
    assert [p.name for p in found] == ["a.png", "notes.png", "b.jpg", "broken.jpg", "c.tif"]
    assert [p.name for p in expand_paths([str(folder / "sub" / "*.jpg"), str(folder / "a.png")])] == ["b.jpg", "broken.jpg", "a.png"]
    assert expand_paths([str(folder / "missing.png")]) == [folder / "missing.png"]


def test_predict_writes_csv_and_overlays_and_reports_bad_files(checkpoint, folder, tmp_path, capsys):
    out, overlays = tmp_path / "predictions.csv", tmp_path / "overlays"
    status = main(["predict", str(checkpoint), str(folder), str(folder / "missing.png"), "--out", str(out),
                   "--overlays", str(overlays), "--no-progress"])
    assert status == 1  # some files failed
    err = capsys.readouterr().err
    for name in ("broken.jpg", "notes.png", "missing.png"):
        line = next(line for line in err.splitlines() if name in line)
        assert line.startswith("vsaccade: skipped ")
    rows = list(csv.DictReader(open(out)))
    assert [r["path"].rsplit("/", 1)[-1] for r in rows] == ["a.png", "b.jpg", "c.tif"]
    sizes = {"a.png": (200, 120), "b.jpg": (90, 90), "c.tif": (100, 300)}
    for r in rows:
        probs = [float(r[f"digit_p_{k}"]) for k in range(3)]
        assert sum(probs) == pytest.approx(1, abs=1e-4) and r["digit"] == str(int(np.argmax(probs)))
        width, height = sizes[r["path"].rsplit("/", 1)[-1]]
        for t in (1, 2):
            x0, y0, x1, y1 = (float(r[f"glimpse{t}_{k}"]) for k in ("x0", "y0", "x1", "y1"))
            assert x1 > x0 and y1 > y0 and -x0 < x1 - x0 and x0 < width and y0 < height
    assert len(list(overlays.glob("*.png"))) == 3


def test_predict_exit_status_is_zero_when_all_succeed(checkpoint, folder, tmp_path):
    assert main(["predict", str(checkpoint), str(folder / "a.png"), "--out", str(tmp_path / "p.csv"), "--no-progress"]) == 0
