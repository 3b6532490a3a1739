"""`vsaccade bench --checkpoint CKPT --files DIR`: the batch-1 latency of any trained model over any folder of images,
by a protocol a warm cache cannot flatter: every call opens a file no earlier call opened (a new FileImage, libvips'
operation cache off, nothing kept per path), the first call is reported apart (cold), the rest as median and IQR.
A call is what `vsaccade predict` does for one file: open it, make its proxy, run the model (bench.run_inference).

Stages (open, proxy, read, resample, encode, rest) come from other files of the folder, every fourth one, measured
again through `vsaccade.Instrument` (its hooks cost a little: the plain calls give the latency); with them the
pixels read and tiles decoded per call (images.LargeImage's one definition).
"""

from __future__ import annotations

import json
import statistics
from collections import defaultdict
from pathlib import Path

import torch
from tqdm import tqdm

from .atomic import write_text
from .instruments import Instrument

STAGE_EVERY = 4  # every STAGE_EVERY-th file is measured through the instrument (its stages), not timed plainly


def bench_files(checkpoint, folder, threads: int = 1, limit: int | None = None, overrides=(), out=None,
                progress: bool = True, command: str = "") -> dict:
    from .bench import machine_info, run_inference, set_cpu_threads, summary_ms, vips_cache_off, wall_time
    from .checkpoint import load, with_test_time_settings
    from .predict_files import expand_paths

    set_cpu_threads(threads)
    model = with_test_time_settings(load(checkpoint), list(overrides)).eval()
    paths = expand_paths([str(folder)])[:limit]
    if len(paths) < 2 + STAGE_EVERY:
        raise ValueError(f"{folder}: {len(paths)} image files; the protocol needs at least {2 + STAGE_EVERY} (one new "
                         "file per call, the first reported apart)")
    name, device = model.config.architecture, torch.device("cpu")
    cold, plain, stages, reads = None, [], defaultdict(list), []
    with vips_cache_off():
        for index, path in enumerate(tqdm(paths, desc="bench files", unit="file", disable=not progress)):
            if index and index % STAGE_EVERY == 0:
                with Instrument(stages=True) as instrument:
                    run_inference(model, name, "file", path, 1, device)
                for stage, seconds in instrument.seconds.items():
                    stages[stage].append(seconds)
                reads.append(instrument.reads())
                continue
            seconds = wall_time(lambda: run_inference(model, name, "file", path, 1, device), device)
            if index == 0:
                cold = seconds
            else:
                plain.append(seconds)
    report = {"checkpoint": str(checkpoint), "folder": str(folder), "model": name, "threads": threads,
              "files": len(paths), "cold_ms": 1000 * cold, "latency_ms": summary_ms(plain),
              "stages_ms": {k: 1000 * statistics.median(v) for k, v in stages.items()},
              "pixels_read": statistics.mean(p for p, _ in reads), "tiles_decoded": statistics.mean(t for _, t in reads),
              "machine": machine_info(device), "command": command}
    if out:
        write_text(Path(out), json.dumps(report, indent=2) + "\n")
    return report


def describe(report: dict) -> str:
    latency = report["latency_ms"]
    stages = ", ".join(f"{k} {v:.2f}" for k, v in sorted(report["stages_ms"].items()))
    return (f"{report['model']} over {report['files']} distinct files of {report['folder']}, {report['threads']} "
            f"thread(s): batch-1 latency median {latency['median']:.2f} ms [IQR {latency['iqr']:.2f}] over "
            f"{latency['repeats']} calls, cold first call {report['cold_ms']:.2f} ms; stages (ms, median): {stages}; "
            f"pixels read {report['pixels_read']:,.0f}, tiles decoded {report['tiles_decoded']:.1f} per call")
