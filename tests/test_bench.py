"""`vsaccade bench` on tiny canvases: the report's schema, the accounting tools against known workloads (FLOPs and
parameters of a tiny conv net, live tensor bytes, a subprocess that allocates 100 MB), out-of-memory handling in
the throughput search, and the written Markdown and PNG. The bench's figures themselves are not asserted."""

import json

import pytest
import torch
from torch import nn

from vsaccade import bench
from vsaccade.cli import main

ROW_KEYS = {"model", "size", "pixels", "kind", "threads", "device", "latency_ms", "instrumented_latency_ms", "stages_ms",
            "named_stages_ms",
            "throughput", "memory", "flops", "params", "pixels_read", "pixels_read_fraction", "tiles_decoded", "region_area_fraction",
            "load_1min_at_start", "foreign_cpu_cores", "busy", "busy_by_load_rule"}
LATENCY_KEYS = {"median", "q1", "q3", "iqr", "min", "max", "repeats", "samples"}
MEMORY_KEYS = {"peak_tensor_bytes", "tensor_method", "peak_rss_above_baseline_bytes", "peak_rss_above_baseline_warm_bytes",
               "baseline_rss_bytes", "rss_method", "subprocess_seconds"}
FLOPS_KEYS = {"conv_matmul", "analytic_resize", "analytic_breakdown", "total", "note"}
SIZES = (128, 160)  # the smallest Megapixel canvases that hold its 5 digits (>= 126 px)


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = ["bench", "--sizes", *map(str, SIZES), "--models", "saccader", "fullres", "--kinds", "memory", "file",
            "--threads", "1", "--repeats", "2", "--warmup", "1", "--batch", "2", "--out", str(out), "--no-progress"]
    assert main(argv) == 0
    return out, json.loads((out / "bench.json").read_text())


def test_report_schema(report):
    out, data = report
    assert {"command", "date", "machine", "settings", "methods", "load_average_at_start", "models", "skipped",
            "canvases", "rows"} <= set(data)
    assert {"cpu_count", "torch", "platform", "load_average"} <= set(data["machine"])
    assert data["settings"]["threads"] == [1] and "randomly initialised" in data["settings"]["weights"]
    assert data["command"].startswith("vsaccade bench --sizes 128 160")
    rows = data["rows"]
    assert {(r["model"], r["size"], r["kind"]) for r in rows} == {
        (m, s, k) for m in ("saccader", "fullres") for s in SIZES for k in ("memory", "file")}
    for row in rows:
        assert ROW_KEYS <= set(row), ROW_KEYS - set(row)
        assert LATENCY_KEYS <= set(row["latency_ms"]) and row["latency_ms"]["repeats"] == 2
        assert MEMORY_KEYS <= set(row["memory"]), row["memory"]
        assert row["memory"]["peak_tensor_bytes"] > 0 and row["memory"]["peak_rss_above_baseline_bytes"] is not None
        assert FLOPS_KEYS <= set(row["flops"]) and row["flops"]["conv_matmul"] > 0
        assert row["throughput"]["status"] == "ok" and row["throughput"]["batch"] == 2
        assert isinstance(row["busy"], bool) and row["pixels"] == row["size"] ** 2
        assert row["params"] == data["models"][row["model"]]["params"]
        # the stages are exclusive times within the same calls: they add up to about the call
        staged = row["instrumented_latency_ms"]
        assert 0.5 * staged["min"] <= sum(row["stages_ms"].values()) <= 1.5 * staged["max"] + 1
        if row["kind"] == "file":
            assert "open" in row["stages_ms"]
    for row in rows:
        if row["model"] == "fullres":
            assert row["pixels_read_fraction"] == 1.0 and "read" in row["stages_ms"] and "proxy" not in row["stages_ms"]
        else:
            assert row["pixels_read"] > 6 * 32 * 32 and {"proxy", "read", "resample", "encode", "rest"} <= set(row["stages_ms"])
            if row["kind"] == "memory":  # no pyramid: the proxy alone reads every pixel
                assert row["pixels_read_fraction"] > 1
            assert row["flops"]["analytic_breakdown"]["bilinear_sampling"] == 8 * 6 * 32 * 32
    assert all(data["canvases"][str(s)]["tiff"] for s in SIZES)


def test_markdown_and_png_written(report):
    out, data = report
    text = (out / "bench.md").read_text()
    assert "Ours (saccader) vs fullres" in text and "| 160x160 | file |" in text and "latency ratio" in text
    assert "conv/matmul only" in text and "randomly initialised" in text
    assert (out / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert bench.markdown(data) == text


def test_flops_and_parameters_of_a_tiny_conv_net():
    net = nn.Sequential(nn.Conv2d(1, 4, 3, stride=2, padding=1), nn.ReLU(), nn.Conv2d(4, 8, 3), nn.Flatten(),
                        nn.Linear(8 * 2 * 2, 10))
    flops, out = bench.count_flops(lambda: net(torch.zeros(1, 1, 8, 8)))
    # conv 1: 4x4x4 outputs x 9 MACs; conv 2: 8x2x2 outputs x 36 MACs; linear: 32 x 10 MACs; 2 FLOPs per MAC
    assert out.shape == (1, 10)
    assert flops == 2 * (4 * 4 * 4 * 9 + 8 * 2 * 2 * 36 + 32 * 10) == 4096
    assert bench.count_parameters(net) == (4 * 9 + 4) + (8 * 4 * 9 + 8) + (32 * 10 + 10) == 666
    assert bench.count_flops(lambda: nn.Linear(10, 5)(torch.zeros(1, 10)))[0] == 100


def test_tensor_tracker_counts_live_bytes():
    existing = torch.ones(1000)
    with bench.TensorTracker() as tracker:
        view = existing[:10]  # a view of a storage made before: nothing new
        existing.add_(1)  # in place: nothing new
        assert tracker.peak_bytes() == 0
        a = torch.empty(250_000)  # 1 MB
        b = torch.ones(500_000)  # 2 MB while a is alive
        assert tracker.live["cpu"] == 3_000_000
        c = b[::2].view(-1)  # views: nothing new
        del a, b, c
        assert tracker.live["cpu"] == 0
        d = torch.empty(250_000)
        assert tracker.live["cpu"] == 1_000_000
    assert tracker.peak_bytes() == 3_000_000  # unchanged by the later 1 MB
    del d, view


def test_memory_subprocess_reports_an_allocation():
    result = bench.measure_memory({"workload": "allocate", "bytes": 100_000_000, "threads": 1})
    assert "error" not in result, result
    assert result["peak_tensor_bytes"] == 100_000_000
    assert 0.9e8 <= result["peak_rss_above_baseline_bytes"] <= 1.3e8, result


def test_throughput_records_out_of_memory(monkeypatch):
    calls = []

    def fake_batch(model, name, kind, source, batch, device):
        calls.append(batch)
        if batch > 2:
            raise RuntimeError(f"CUDA out of memory. Tried to allocate {batch} GiB")

    monkeypatch.setattr(bench, "_run_batch", fake_batch)
    result = bench.throughput(None, "fullres", "memory", None, torch.device("cpu"), 16, 2, None)
    assert result["status"] == "ok" and result["batch"] == 2 and result["images_per_s"] > 0
    assert [(a["batch"], a["status"]) for a in result["attempts"]] == [(16, "oom"), (8, "oom"), (4, "oom"), (2, "ok")]
    assert "out of memory" in result["attempts"][0]["error"]
    # every batch predicted not to fit in memory: recorded, not run, not fatal
    result = bench.throughput(None, "fullres", "memory", None, torch.device("cpu"), 4, 1, 10**18)
    assert result["batch"] is None and [a["status"] for a in result["attempts"]] == ["predicted_oom"] * 3
    # other errors are not swallowed
    monkeypatch.setattr(bench, "_run_batch", lambda *a: (_ for _ in ()).throw(ValueError("bad input")))
    with pytest.raises(ValueError):
        bench.throughput(None, "fullres", "memory", None, torch.device("cpu"), 4, 1, None)


def test_model_configs_and_ats(monkeypatch, tmp_path):
    from vsaccade.model import MODELS

    info, task = bench.prepare_canvas(128, tmp_path, digit_source="font")
    configs, skipped = bench.model_configs(["saccader", "fullres", "proxy", "ats"], task)
    assert configs["saccader"].proxy_size == 180 and configs["saccader"].location_cells == 45
    assert [h["name"] for h in configs["fullres"].heads] == ["majority", "max", "top", "multi"]
    if "ats" in MODELS:
        ats = configs["ats"]
        assert (ats.glimpses, ats.glimpse_size, ats.s_min, ats.s_max) == (10, 50, 50 / 1500, 50 / 1500)
    monkeypatch.delitem(MODELS, "ats", raising=False)
    configs, skipped = bench.model_configs(["saccader", "ats"], task)
    assert "ats" not in configs and "not registered" in skipped["ats"]


def test_cuda_request_fails_cleanly_without_cuda(tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["bench", "--device", "cuda", "--sizes", "128", "--out", str(tmp_path), "--no-progress"]) == 2
    assert "CUDA is not available" in capsys.readouterr().err


def test_instruments_report_through_hooks_not_patches():
    """The code reports its stages, reads and ops to the active Instrument through explicit hook points: nothing is
    replaced (module functions and image methods are the same objects before, during and after), nothing is active
    afterwards, and without an instrument the stages are named regions of a torch.profiler trace."""
    from vsaccade import ArrayImage, Instrument, create_model, instruments
    from vsaccade.model import glimpse_sampler, readers

    torch.manual_seed(0)
    model = create_model("saccader", image_channels=1, proxy_channels=1, proxy_size=32, location_cells=8, hidden=32,
                         proxy_width=16, glimpse_width=16, glimpse_size=16, glimpses=3,
                         heads=[{"name": "label", "num_classes": 3, "kind": "class"}]).eval()
    image = ArrayImage(torch.rand(1, 120, 100))
    proxy, mask = torch.rand(1, 1, 32, 32), torch.ones(1, 32, 32, dtype=torch.bool)
    hooked = (glimpse_sampler.sample_glimpses, readers.sample_glimpses, type(image).read_region)
    with torch.no_grad(), Instrument(stages=True, tensors=True, flops=True) as instrument:
        instrument.attach([image])
        with instruments.stage("rest"):
            model([image], proxy, mask, sample=False)
        assert hooked == (glimpse_sampler.sample_glimpses, readers.sample_glimpses, type(image).read_region)
    assert {"read", "resample", "encode", "rest"} <= set(instrument.seconds)
    assert instrument.ops["bilinear_sampling"] == 8 * 3 * 16 * 16 and instrument.region_area > 0
    assert instrument.reads()[0] > 0 and instrument.flops > 0 and instrument.peak_bytes() > 0
    assert instruments.current() is None and "read_region" not in vars(image)
    with torch.no_grad(), torch.profiler.profile() as profile:
        model([image], proxy, mask, sample=False)
    assert {"vsaccade.read", "vsaccade.resample", "vsaccade.encode"} <= {event.name for event in profile.events()}
