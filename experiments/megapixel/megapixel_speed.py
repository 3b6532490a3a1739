"""Training speed on Megapixel MNIST, before and after (docs/benchmarks/megapixel.md): images per second of one
training step (forward, backward, Adam) for each preset, measured side by side (presets interleaved round-robin,
median over repeats), plus where a step's time goes (building samples, reading glimpses, the network). Glimpse
reading is the glimpse sampler's time (stages "read" + "resample" of a `vsaccade.Instrument`, reported by the
sampler itself).

    python experiments/megapixel/megapixel_speed.py --threads 1 2 --json runs/megapixel-speed.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import torch

from vsaccade import Instrument, Objective, collate, create_model, make_task, model_config_for, resolve


def setup(preset: str, batch_size: int, batches: int):
    model_config, objective, config = resolve(preset)
    task = make_task(config.task, "train", seed=config.seed, size=batch_size * batches, **config.task_options)
    model_config = model_config_for(task, model_config)
    model = create_model("saccader", **model_config.to_dict())
    started = time.perf_counter()
    samples = [task[i] for i in range(batch_size * batches)]
    build_ms = 1000 * (time.perf_counter() - started) / len(samples)
    data = [collate(samples[i * batch_size:(i + 1) * batch_size]) for i in range(batches)]
    optimizer = torch.optim.Adam(model.parameters(), 1e-3)
    return {"model": model, "objective": Objective(objective, model_config.estimator), "config": model_config,
            "batches": data, "optimizer": optimizer,
            "build_ms_per_image": build_ms, "parameters": sum(p.numel() for p in model.parameters())}


def timed_steps(state) -> tuple[float, float]:
    """Seconds per image of training steps over the prepared batches, and of glimpse reading within them."""
    with Instrument(stages=True) as instrument:
        images, started = 0, time.perf_counter()
        for batch in state["batches"]:
            output = state["model"](batch.images, batch.proxy, batch.proxy_mask)
            loss = state["objective"](output, batch.labels, state["config"].heads, 0.1)["loss"]
            state["optimizer"].zero_grad(set_to_none=True)
            loss.backward()
            state["optimizer"].step()
            images += len(batch)
        seconds = time.perf_counter() - started
    reading = sum(instrument.seconds.get(stage, 0.0) for stage in ("read", "resample"))
    return seconds / images, reading / images


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["megapixel-core", "megapixel"])
    parser.add_argument("--threads", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--batches", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    torch.manual_seed(0)
    states = {p: setup(p, args.batch_size, args.batches) for p in args.presets}
    report = {"machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "torch": torch.__version__},
              "load_average_1min_at_start": os.getloadavg()[0], "batch_size": args.batch_size, "rows": []}
    for threads in args.threads:
        torch.set_num_threads(threads)
        for state in states.values():
            timed_steps(state)  # warm-up
        samples = {p: [] for p in states}
        for _ in range(args.repeats):
            for preset, state in states.items():  # round-robin: both presets see the same machine conditions
                samples[preset].append(timed_steps(state))
        for preset, state in states.items():
            step = statistics.median(s for s, _ in samples[preset])
            reading = statistics.median(r for _, r in samples[preset])
            row = {"preset": preset, "threads": threads, "images_per_second": 1 / step, "step_ms_per_image": 1000 * step,
                   "glimpse_reading_ms_per_image": 1000 * reading, "sample_build_ms_per_image": state["build_ms_per_image"],
                   "parameters": state["parameters"], "repeats": args.repeats}
            report["rows"].append(row)
            print(f"{preset:16s} threads {threads}: {row['images_per_second']:6.1f} img/s "
                  f"(step {row['step_ms_per_image']:.2f} ms/img, of which glimpse reading {row['glimpse_reading_ms_per_image']:.2f}; "
                  f"building a sample {row['sample_build_ms_per_image']:.2f} ms), {state['parameters']:,} parameters", flush=True)
        base, new = (next(r for r in report["rows"] if r["preset"] == p and r["threads"] == threads) for p in args.presets[:2])
        print(f"  ratio {args.presets[1]} / {args.presets[0]} at {threads} threads: "
              f"{new['images_per_second'] / base['images_per_second']:.2f}x")
    report["load_average_1min_at_end"] = os.getloadavg()[0]
    print(f"load average (1 min): {report['load_average_1min_at_start']:.2f} at start, {report['load_average_1min_at_end']:.2f} at end")
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(report, handle, indent=2)
        print(f"results: {args.json}")


if __name__ == "__main__":
    main()
