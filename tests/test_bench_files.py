"""`vsaccade bench --checkpoint --files`: any trained model over any folder, one new file per call, the cold first call
apart, stages and pixels read from instrumented calls on other files."""

import json

import numpy as np
import pytest
import torch

import vsaccade
from vsaccade.checkpoint import save_checkpoint
from vsaccade.cli import main

pyvips = pytest.importorskip("pyvips")


@pytest.fixture
def checkpoint(tmp_path):
    torch.manual_seed(0)
    model = vsaccade.create_model("saccader", proxy_size=16, location_cells=4, glimpse_size=16, hidden=32, glimpses=2)
    path = tmp_path / "model.pt"
    save_checkpoint({"model_name": "saccader", "model_config": model.config.to_dict(), "state_dict": model.state_dict()}, path)
    return path


def test_bench_over_a_folder_opens_a_new_file_per_call(checkpoint, tmp_path, capsys):
    folder = tmp_path / "files"
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(10):
        pixels = (rng.random((256, 256)) * 255).astype(np.uint8)
        image = pyvips.Image.new_from_memory(pixels.tobytes(), 256, 256, 1, "uchar")
        image.tiffsave(str(folder / f"{i:02d}.tif"), tile=True, tile_width=64, tile_height=64, pyramid=True)
    out = tmp_path / "bench"
    assert main(["bench", "--checkpoint", str(checkpoint), "--files", str(folder), "--threads", "1", "--out", str(out),
                 "--no-progress"]) == 0
    report = json.loads((out / "bench-files.json").read_text())
    assert report["files"] == 10 and report["cold_ms"] > 0 and report["model"] == "saccader"
    assert report["latency_ms"]["repeats"] == 10 - 1 - 2  # the cold call and every 4th file (instrumented) apart
    assert {"open", "proxy", "read", "resample", "encode"} <= set(report["stages_ms"])
    assert report["pixels_read"] > 0 and report["tiles_decoded"] > 0
    assert "distinct files" in capsys.readouterr().out
    assert main(["bench", "--files", str(folder), "--out", str(out), "--no-progress"]) == 2  # no checkpoint: one line
    with pytest.raises(ValueError, match="at least"):
        from vsaccade.bench_files import bench_files

        bench_files(checkpoint, folder, limit=3, progress=False)
