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


def test_batches_read_ahead_by_threads_give_the_rows_of_one_image_at_a_time(checkpoint, folder, tmp_path):
    one, many = tmp_path / "one.csv", tmp_path / "many.csv"
    main(["predict", str(checkpoint), str(folder), "--out", str(one), "--no-progress", "--batch-size", "1", "--readers", "1"])
    main(["predict", str(checkpoint), str(folder), "--out", str(many), "--no-progress", "--batch-size", "2",
          "--readers", "3", "--threads", "1"])
    a, b = list(csv.reader(open(one))), list(csv.reader(open(many)))
    assert [r[0] for r in a] == [r[0] for r in b] and len(a) == 4  # header + 3 readable files, in input order
    for x, y in zip(a[1:], b[1:]):
        assert x[1] == y[1] and np.allclose([float(v) for v in x[2:]], [float(v) for v in y[2:]], atol=1e-5)


def test_a_killed_run_resumes_from_its_rows_and_another_models_rows_are_not_reused(checkpoint, folder, tmp_path, capsys):
    out = tmp_path / "p.csv"
    assert main(["predict", str(checkpoint), str(folder / "a.png"), "--out", str(out), "--no-progress"]) == 0
    whole = list(csv.reader(open(out)))
    partial = tmp_path / "p.csv.partial"  # a run killed after b.jpg's row and in the middle of c.tif's
    main(["predict", str(checkpoint), str(folder / "sub" / "b.jpg"), "--out", str(tmp_path / "b.csv"), "--no-progress"])
    b_row = list(csv.reader(open(tmp_path / "b.csv")))[1]
    partial.write_text(",".join(whole[0]) + "\r\n" + ",".join(b_row) + "\r\n" + str(folder / "sub" / "c.tif") + ",1,0.3")
    capsys.readouterr()
    assert main(["predict", str(checkpoint), str(folder / "a.png"), str(folder / "sub" / "b.jpg"),
                 str(folder / "sub" / "c.tif"), "--out", str(out), "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("1 image(s) predicted")  # c.tif alone: a.png and b.jpg were done
    rows = list(csv.reader(open(out)))
    assert [r[0].rsplit("/", 1)[-1] for r in rows[1:]] == ["a.png", "b.jpg", "c.tif"] and rows[1] == whole[1]
    assert rows[2] == b_row and not partial.exists()
    retrained = tmp_path / "retrained.pt"  # the same model, other weights: nothing of the old CSV is reused
    payload = torch.load(checkpoint, weights_only=False)
    payload["state_dict"] = {k: v + 0.01 if v.is_floating_point() else v for k, v in payload["state_dict"].items()}
    save_checkpoint(payload, retrained)
    assert main(["predict", str(retrained), str(folder / "a.png"), str(folder / "sub" / "b.jpg"), "--out", str(out),
                 "--no-progress"]) == 0
    assert capsys.readouterr().out.startswith("2 image(s) predicted")
    assert list(csv.reader(open(out)))[1] != rows[1]
    from vsaccade.predict_files import done_rows, header

    other = tmp_path / "other.csv"
    other.write_text("path,label\n")
    with pytest.raises(vsaccade.ImageError, match="another model"):
        done_rows(other, header(vsaccade.load(checkpoint)))
    (tmp_path / "p.csv.partial").write_bytes(b"")  # killed before its header: ignored, not "another model"
    assert main(["predict", str(retrained), str(folder / "a.png"), "--out", str(out), "--no-progress"]) == 0


def test_two_processes_under_torchrun_write_the_csv_of_one(checkpoint, folder, tmp_path):
    import subprocess
    import sys

    from training_runs import free_port, torchrun

    for name in ("d.png", "e.png", "f.png"):  # 6 readable files in batches of 2: 3 batches over 2 processes
        Image.fromarray((np.random.default_rng(len(name)).random((80, 120)) * 255).astype(np.uint8)).save(folder / name)
    args = ["predict", str(checkpoint), str(folder), "--no-progress", "--batch-size", "2", "--threads", "1"]
    one = subprocess.run([sys.executable, "-m", "vsaccade.cli", *args, "--out", str(tmp_path / "one.csv")],
                         capture_output=True, text=True)
    assert one.returncode == 1  # the bad files
    two = torchrun(["--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port())],
                   args + ["--out", str(tmp_path / "two.csv")])
    output, _ = two.communicate(timeout=180)
    assert two.returncode != 0 and "6 image(s) predicted, 2 skipped" in output  # the bad files: exit 1
    assert (tmp_path / "one.csv").read_text() == (tmp_path / "two.csv").read_text()
    assert not list(tmp_path.glob("two.csv.partial*"))


def test_a_file_that_opens_but_cannot_be_decoded_is_skipped_alone(checkpoint, tmp_path, capsys):
    folder = tmp_path / "cut"
    folder.mkdir()
    rng = np.random.default_rng(1)
    for name in ("a.jpg", "b.jpg", "c.jpg"):
        Image.fromarray((rng.random((600, 800)) * 255).astype(np.uint8)).save(folder / name, quality=95)
    data = (folder / "b.jpg").read_bytes()
    (folder / "b.jpg").write_bytes(data[: len(data) // 3])  # the header and the top third
    out = tmp_path / "cut.csv"
    assert main(["predict", str(checkpoint), str(folder), "--out", str(out), "--no-progress", "--batch-size", "3"]) == 1
    assert [r["path"].rsplit("/", 1)[-1] for r in csv.DictReader(open(out))] == ["a.jpg", "c.jpg"]
    err = capsys.readouterr().err
    assert len([line for line in err.splitlines() if "b.jpg" in line]) == 1 and "skipped" in err
