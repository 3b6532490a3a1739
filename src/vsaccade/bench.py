"""`vsaccade bench`: inference latency, throughput, memory and FLOPs of every model, side by side, on Megapixel-style
canvases of growing size, read from memory and from tiled pyramidal TIFF files.

Usage:

    vsaccade bench                                            # the full default (sizes 500 1000 1500 3000 6000, all
                                                              # models, memory and file rows, 1 and 2 threads,
                                                              # 20 repeats): 22 minutes on a 2-core CPU
                                                              # (docs/benchmarks/comparison.md)
    vsaccade bench --sizes 500 1500 --repeats 5 --threads 1 --out runs/bench-smoke   # about 1.5 minutes
    vsaccade bench --sizes 1500 --models saccader fullres --kinds file                # one headline figure
    vsaccade bench --device cuda --threads 4 --out runs/bench-gpu                     # the same on a GPU

It writes OUT/bench.json (every raw figure, the machine, the settings and the methods below), OUT/bench.md (the
tables: ours-vs-fullres latency and peak-tensor-memory ratios per size and kind from the same run, then every row,
then the stages) and OUT/bench.png (latency and peak tensor memory against pixel count, log-log, one line per model
and input kind). Canvases and files are cached under OUT/cache (or --cache) and reused by later runs. The JSON is
rewritten after each size, so a stopped run keeps what it measured.

What is compared. The models come from the registry (model/registry.py), built with randomly initialised weights
(`torch.manual_seed(seed)`; latency and memory do not depend on training) and run in eval mode, posterior mode
(`sample=False`), batch 1 unless said otherwise:
  * "saccader" (ours): the `megapixel` preset's model section (T = 6 glimpses of 32x32 from 64-px windows at 1500 px);
  * "fullres": a strided CNN over every full-resolution pixel (model/baselines.py), the accuracy baseline;
  * "proxy": the same kind of CNN on the proxy alone;
  * "ats" (when registered): Attention Sampling with its own Megapixel MNIST setting, 10 patches of 50x50 read at
    s = 50/1500 of the image side (a 50-px window at 1500 px, resampled to 50x50), from the same attention grid.
Heads and channels are those of the Megapixel MNIST task (four 10-class heads, grey). The proxy is 180x180 at every
size (the preset's size at 1500 px: our cost should barely depend on the image size, that is the point) and the
location grid 45x45. Window fractions (s) stay those of the configs at every size, so windows grow with the canvas.

Inputs, per size S: the Megapixel MNIST test scene 0 on an S x S canvas (the `megapixel` task, `canvas_size=S`, its
default digits and noise), rendered densely once (`MegapixelImage.render`, stored losslessly as uint8) and
  * "memory" rows: held as an `ArrayImage`; the proxy is built from the pixels inside the timed call
    (`image.proxy(180)`, block means over every pixel: O(pixels));
  * "file" rows: written once as a tiled pyramidal JPEG-compressed TIFF by `prepare.write_pyramidal_tiff` (what
    `vsaccade prepare` writes) and opened with `FileImage` inside every timed call; proxies come from a pyramid
    level (vips thumbnail), glimpses from region reads, and "fullres" decodes the whole file (`read_region` of all).
    libvips' operation cache is off during the bench (and in the memory subprocesses), so repeated calls on the same
    file cost what a new file costs (with it on, re-opened headers and pages are reused: ~40% faster for ours at
    1500 px, ~15% for fullres, measured here); the OS page cache keeps the file's bytes in memory either way.
"fullres" does not use a proxy: it is given a zero tensor and pays for no proxy construction.

Measurements, per (model, size, kind):
  * latency (per --threads value, torch.set_num_threads): --warmup calls per model, then --repeats calls with the
    models interleaved round-robin (the starting model rotates every round); median, quartiles and IQR of the wall
    time of the whole call (open + proxy + forward; CUDA: events recorded around it, after a synchronize);
  * stages, timed in extra calls (in the first min(repeats, 5) rounds each model also runs once more, instrumented;
    latency comes from the plain calls: the instrumentation adds ~0.5 ms), under a `vsaccade.Instrument`: the
    code reports its own stages through hook points (instruments.py; nothing is patched); exclusive times on a stage
    stack (so stages sum to the instrumented call): open (FileImage), proxy (proxy construction, its own reads
    included), read (full-resolution region reads: glimpse windows, or the whole image for fullres), resample (the
    rest of sample_glimpses: bilinear sampling and batching), encode (glimpse encoder), rest (the rest of the
    network: location inference for ours, the CNN for the baselines). On CUDA every stage boundary synchronises.
    Reads made by the glimpse sampler's thread pool (several file images in one call: batches, and ats's N patches
    of one image) count inside `resample`;
  * throughput: images per second at batch --batch (default 16), else the largest power of two below it that runs;
    an out-of-memory (a torch/CUDA OOM error, or on CPU a batch whose estimate, batch x the measured per-image peak,
    exceeds 70% of MemAvailable, which would invite the kernel's OOM killer) is recorded and the batch halved;
  * memory, each in a fresh subprocess per (model, size, kind): the input is loaded (memory rows) and the model
    built, then the RSS is read (VmRSS); the peak is reset through /proc/self/clear_refs and one inference runs (the
    first, cold, like experiments/files/files_predict.py); peak RSS above baseline = VmHWM - baseline (a second, warm
    inference is measured the same way and reported beside it). A third inference then runs under `TensorTracker`,
    a TorchDispatchMode that adds the bytes of every storage an op creates (outputs that alias an input's storage,
    i.e. views and in-place ops, are not new) and subtracts them when the storage is freed (a weakref callback):
    the peak of live bytes allocated during the inference (weights and the in-memory canvas, which exist before it,
    are not counted; memory made outside the dispatcher, e.g. the numpy buffers libvips decodes into before
    torch.from_numpy, is not seen, only in the RSS; region reads are registered explicitly, also from reader
    threads).
    On CUDA, peak_tensor_bytes is torch.cuda.max_memory_allocated above memory_allocated before the call, and the
    tracker's CPU figure is reported beside it (peak_host_tensor_bytes);
  * FLOPs: torch.utils.flop_counter.FlopCounterMode over one batch-1 call ("conv/matmul only": convolutions, matrix
    products; not norms, activations, pooling or elementwise ops), plus analytic resize/pooling costs, 1 op per
    source pixel per channel reduced: block-mean downsampling of a region read at factor d > 1 (C h w / f^2, f the
    pyramid level a file read uses, 1 in memory); area resizing (C x max(source, output) pixels); the file proxy
    (C x pixels of the pyramid level vips thumbnails from); bilinear glimpse sampling, 8 per output pixel per channel
    (4 multiply-adds); plain copies (a read at d = 1) count 0. Decoding (JPEG tiles) is not counted;
  * parameters (sum of numel), and pixels read by the project's one definition (images.LargeImage: the source
    pixels each request covers at the level it reads, proxy and margins included; tiles decoded where tiled),
    counted by the images during the FLOPs call, and as a fraction of H W, with the area region reads cover beside
    it. An in-memory canvas has no pyramid, so its proxy alone reads every pixel (fraction >= 1); a file's proxy
    reads a pyramid level;
  * load: the 1-minute load average when each (size, kind, threads) block starts, and the CPU time other processes
    used during the block (/proc/stat busy time minus this process's own CPU time, in cores). A row is flagged busy
    when other processes used more than 0.5 core during its block (where /proc/stat is unavailable: when the load
    average at the block's start exceeded threads + 0.5). The load average alone would count this bench's own
    threads, which it keeps for a minute after they stop.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import threading
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from . import instruments
from .config import ConfigError
from .geometry import proxy_valid_mask
from .images import ArrayImage
from .instruments import Instrument, TensorTracker, count_flops, count_parameters  # noqa: F401  (the bench's tools)

DEFAULT_SIZES = (500, 1000, 1500, 3000, 6000)
DEFAULT_MODELS = ("saccader", "fullres", "proxy", "ats")
KINDS = ("memory", "file")
PROXY_SIZE = 180
LOCATION_CELLS = 45
ATS_PATCHES, ATS_PATCH, ATS_REFERENCE_SIDE = 10, 50, 1500
BUSY_CORES = 0.5  # other processes' CPU use (cores) above which a row is flagged busy
MEMORY_HEADROOM = 0.7  # CPU batches whose estimate exceeds this fraction of MemAvailable are not run
CACHE_VERSION = 1
WEIGHTS_NOTE = "randomly initialised (torch.manual_seed(seed)); latency and memory do not depend on training"
FLOPS_NOTE = ("conv/matmul only (torch.utils.flop_counter.FlopCounterMode), plus analytic resize/pooling: 1 op per "
              "source pixel per channel reduced, 8 per bilinear output pixel per channel; decoding not counted")


# --------------------------------------------------------------------------------------------------------------
# Accounting tools (tensor memory, FLOPs and stage clocks are instruments.py's)


def proc_status(key: str) -> int | None:
    """A /proc/self/status size field (VmRSS, VmHWM) in bytes, or None where there is no /proc."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


class PeakRSS:
    """Peak RSS over a block, above the RSS measured at its start: VmHWM after a reset through /proc/self/clear_refs
    (as experiments/files/files_predict.py), else VmRSS polled every millisecond by a thread."""

    def __enter__(self):
        self.baseline = proc_status("VmRSS")
        self.method = None
        self._thread = None
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS to the current RSS
            self.method = "VmHWM after /proc/self/clear_refs"
        except OSError:
            if self.baseline is not None:
                self.method = "VmRSS polled every 1 ms"
                self._peak, self._stop = self.baseline, threading.Event()
                self._thread = threading.Thread(target=self._poll, daemon=True)
                self._thread.start()
        return self

    def _poll(self):
        while not self._stop.is_set():
            self._peak = max(self._peak, proc_status("VmRSS") or 0)
            self._stop.wait(0.001)

    def __exit__(self, *exc):
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self.peak = max(self._peak, proc_status("VmRSS") or 0)
        elif self.method is not None:
            self.peak = proc_status("VmHWM")
        else:
            self.peak = None
        self.above_baseline = None if self.peak is None or self.baseline is None else self.peak - self.baseline
        return False


class CpuMeter:
    """CPU used by other processes (cores, averaged over the block): /proc/stat busy time minus our own CPU time."""

    def __init__(self):
        self.started = time.monotonic(), self._system(), self._own()

    @staticmethod
    def _system() -> float | None:
        try:
            values = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
        except (OSError, ValueError, IndexError):
            return None
        busy = sum(values) - values[3] - (values[4] if len(values) > 4 else 0)  # all but idle and iowait
        return busy / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        times = os.times()
        return times.user + times.system

    def foreign_cores(self) -> float | None:
        wall0, system0, own0 = self.started
        system1, own1, wall1 = self._system(), self._own(), time.monotonic()
        if system0 is None or system1 is None or wall1 <= wall0:
            return None
        return max(0.0, ((system1 - system0) - (own1 - own0)) / (wall1 - wall0))


def is_oom(error: BaseException) -> bool:
    if isinstance(error, MemoryError):
        return True
    if getattr(torch.cuda, "OutOfMemoryError", None) and isinstance(error, torch.cuda.OutOfMemoryError):
        return True
    text = str(error).lower()
    return isinstance(error, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


def available_memory() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def set_cpu_threads(threads: int) -> int:
    """torch's intra-op threads and libvips' worker threads per pipeline both `threads`, so that a figure taken at one
    thread is one core's work (vips would otherwise evaluate each proxy on as many threads as there are cores);
    returns torch's previous count."""
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        import pyvips

        pyvips.concurrency_set(threads)
    except (ImportError, OSError):
        pass
    return previous


@contextlib.contextmanager
def vips_cache_off():
    """libvips' operation cache off (as for files never seen before: a repeated open of the same file would
    otherwise reuse its parsed header, pyramid pages and decoded tiles); restored afterwards. No-op without pyvips."""
    try:
        import pyvips

        previous = pyvips.cache_get_max()
    except (ImportError, OSError):
        yield
        return
    pyvips.cache_set_max(0)
    try:
        yield
    finally:
        pyvips.cache_set_max(previous)


# --------------------------------------------------------------------------------------------------------------
# Models, inputs, one inference


def model_configs(models, task) -> tuple[dict, dict]:
    """({name: ModelConfig}, {name: why skipped}) for the requested registered models (see the module docstring)."""
    from .model import MODELS
    from .presets import resolve
    from .train import model_config_for

    base = model_config_for(task, resolve("megapixel")[0]).replace(proxy_size=PROXY_SIZE, location_cells=LOCATION_CELLS)
    configs, skipped = {}, {}
    for name in models:
        if name not in MODELS:
            if name == "ats":
                skipped[name] = "not registered in this build (vsaccade.model.MODELS has no 'ats')"
                continue
            raise ConfigError(f"unknown model {name!r}; registered models: {sorted(MODELS)}")
        if name == "saccader":
            configs[name] = base
        elif name == "ats":
            s = ATS_PATCH / ATS_REFERENCE_SIDE
            configs[name] = base.replace(architecture="ats", glimpses=ATS_PATCHES, glimpse_size=ATS_PATCH, s_min=s, s_max=s)
        else:
            configs[name] = base.replace(architecture=name)
    return configs, skipped


def build_model(config: dict, device, seed: int = 0):
    from .model import create_model

    torch.manual_seed(seed)
    return create_model(**config).to(device).eval()


def open_file(path, channels: int):
    from .file_images import FileImage

    return FileImage(path, channels=channels)


def run_inference(model, name: str, kind: str, source, batch: int, device):
    """One unit of timed work: open the file (file rows), build the proxies (models that use one), run the model.
    `source` is an ArrayImage (memory rows) or a file path (file rows). Reported to the current instrument, if any
    (instruments.py): stages "open", "proxy" and "rest" here, the model's own inside it; the images' reads."""
    c = model.config
    with instruments.stage("rest"):
        if kind == "file":
            with instruments.stage("open"):
                images = [open_file(source, c.image_channels) for _ in range(batch)]
        else:
            images = [source] * batch
        if instruments.current() is not None:
            instruments.current().attach(images)
        height, width = images[0].height, images[0].width
        if not getattr(model, "reads_proxy", True):
            proxy = torch.zeros(batch, c.proxy_channels, c.proxy_size, c.proxy_size)
        else:
            proxy = torch.stack([instruments.proxy(image, c.proxy_size) for image in images])
        mask = proxy_valid_mask(height, width, c.proxy_size)[None].expand(batch, -1, -1)
        with torch.inference_mode():
            return model(images, proxy.to(device), mask.to(device), sample=False, kl=False)


def _run_batch(model, name, kind, source, batch, device):
    """One throughput call (a seam for tests, which inject out-of-memory errors here)."""
    return run_inference(model, name, kind, source, batch, device)


def wall_time(fn, device) -> float:
    """Seconds fn() takes: perf_counter on CPU; on CUDA, events recorded around it after a synchronize."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1000
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def summary_ms(seconds: list[float]) -> dict:
    ms = sorted(1000 * s for s in seconds)
    if len(ms) >= 2:
        q1, _, q3 = statistics.quantiles(ms, n=4, method="inclusive")
    else:
        q1 = q3 = ms[0]
    return {"median": statistics.median(ms), "q1": q1, "q3": q3, "iqr": q3 - q1, "min": ms[0], "max": ms[-1],
            "repeats": len(ms), "samples": [round(v, 4) for v in ms]}


def throughput(model, name, kind, source, device, batch: int, repeats: int, estimate_bytes: int | None) -> dict:
    """Images per second at `batch`, else at the largest power of two below it that runs (OOMs recorded)."""
    attempts, b = [], batch
    while b >= 1:
        available = available_memory() if device.type == "cpu" else None
        if estimate_bytes and available and b * estimate_bytes > MEMORY_HEADROOM * available:
            attempts.append({"batch": b, "status": "predicted_oom",
                             "error": f"estimate {b} x {estimate_bytes / 2**20:.0f} MiB > {MEMORY_HEADROOM:.0%} of "
                                      f"MemAvailable ({available / 2**20:.0f} MiB)"})
        else:
            try:
                _run_batch(model, name, kind, source, b, device)  # warm-up
                seconds = [wall_time(lambda: _run_batch(model, name, kind, source, b, device), device)
                           for _ in range(repeats)]
                median = statistics.median(seconds)
                attempts.append({"batch": b, "status": "ok"})
                return {"batch": b, "images_per_s": b / median, "seconds_per_batch": seconds, "repeats": repeats,
                        "attempts": attempts, "status": "ok"}
            except Exception as error:  # noqa: BLE001 - only out-of-memory errors are recorded, others re-raised
                if not is_oom(error):
                    raise
                attempts.append({"batch": b, "status": "oom", "error": str(error).strip().splitlines()[0][:300]})
                if device.type == "cuda":
                    torch.cuda.empty_cache()
        if b == 1:
            break
        b = 1 << ((b - 1).bit_length() - 1)  # the largest power of two below b
    return {"batch": None, "images_per_s": None, "seconds_per_batch": [], "repeats": repeats, "attempts": attempts,
            "status": "out of memory at every batch"}


# --------------------------------------------------------------------------------------------------------------
# Canvases and files


def prepare_canvas(size: int, cache: Path, seed: int = 0, digit_source: str = "auto", data_dir=None,
                   task_options: dict | None = None) -> tuple[dict, object]:
    """Render (once, cached) the Megapixel MNIST test scene 0 on a size x size canvas: uint8 .npy (lossless: every
    pixel is k/255) and a tiled pyramidal TIFF. Returns ({task, npy, tiff, ...}, the task (for heads))."""
    from .tasks.megapixel import MegapixelMNIST

    task = MegapixelMNIST("test", seed=seed, canvas_size=size, size=1, digit_source=digit_source, data_dir=data_dir,
                          **(task_options or {}))
    describe = task.describe()
    key = hashlib.sha1(json.dumps({"v": CACHE_VERSION, "task": describe}, sort_keys=True).encode()).hexdigest()[:10]
    cache.mkdir(parents=True, exist_ok=True)
    npy, tiff = cache / f"megapixel-{size}-{key}.npy", cache / f"megapixel-{size}-{key}.tif"
    if not npy.exists():
        dense = task.image(task.scene(0)).render()[0].numpy()
        pixels = np.round(dense * 255).astype(np.uint8)
        if not np.allclose(pixels.astype(np.float32) / 255, dense, atol=1e-6):
            raise RuntimeError("the canvas is not exactly representable as uint8")
        tmp = npy.with_name(npy.stem + ".tmp.npy")
        np.save(tmp, pixels)
        os.replace(tmp, npy)
    info = {"task": describe, "npy": str(npy), "tiff": None, "tiff_bytes": None, "file_error": None}
    try:
        if not tiff.exists():
            from .file_images import require_pyvips
            from .prepare import write_pyramidal_tiff

            pyvips = require_pyvips()
            pixels = np.ascontiguousarray(np.load(npy))
            image = pyvips.Image.new_from_memory(pixels.tobytes(), size, size, 1, "uchar").copy(interpretation="b-w")
            write_pyramidal_tiff(image, tiff)
        info.update(tiff=str(tiff), tiff_bytes=tiff.stat().st_size)
    except Exception as error:  # noqa: BLE001 - no pyvips: the file rows are skipped with the reason
        info["file_error"] = str(error).splitlines()[0][:300]
    return info, task


def load_canvas(npy) -> ArrayImage:
    return ArrayImage(np.load(npy))


# --------------------------------------------------------------------------------------------------------------
# Memory, in a fresh subprocess per (model, size, kind)

CHILD = "import sys; from vsaccade.bench import memory_child; memory_child(sys.argv[1])"


def measure_memory(spec: dict, timeout: float = 3600) -> dict:
    """Run `memory_child(spec)` in a fresh Python process; its JSON result, or {"error": ...}."""
    started = time.monotonic()
    try:
        done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], capture_output=True, text=True,
                              timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s"}
    seconds = time.monotonic() - started
    lines = done.stdout.strip().splitlines()
    if done.returncode != 0 or not lines:
        why = "killed (out of memory?)" if done.returncode in (-9, 137) else f"exit status {done.returncode}"
        tail = (done.stderr.strip().splitlines() or [""])[-1][:300]
        return {"error": f"{why}: {tail}", "subprocess_seconds": seconds}
    result = json.loads(lines[-1])
    result["subprocess_seconds"] = seconds
    return result


def memory_child(spec_json: str) -> None:
    """In a fresh process: load the input and the model, take the RSS baseline, run once for the peak RSS (cold),
    again (warm, RSS measured from just before it), then once more under the TensorTracker for the peak tensor
    bytes (the tracker's own Python machinery would inflate an RSS measured in the same call). Prints one JSON
    line. spec["workload"] == "allocate" instead fills a spec["bytes"] tensor (the accounting's own check)."""
    spec = json.loads(spec_json)
    torch.set_num_threads(int(spec.get("threads", 1)))
    device = torch.device(spec.get("device", "cpu"))
    if spec.get("workload") == "allocate":
        def run():
            x = torch.ones(int(spec["bytes"]) // 4, device=device)
            return float(x[-1])
    else:
        model = build_model(spec["config"], device, spec.get("seed", 0))
        source = load_canvas(spec["npy"]) if spec["kind"] == "memory" else spec["tiff"]

        def run():
            return run_inference(model, spec["name"], spec["kind"], source, 1, device)

    if spec.get("kind") == "file":
        import pyvips

        pyvips.cache_set_max(0)  # as in the timed calls (see vips_cache_off)
    if device.type == "cuda":
        torch.cuda.synchronize()
    with PeakRSS() as cold:
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
    with PeakRSS() as warm:  # the same again, one-time initialisation done (and libvips' caches warm)
        run()
        if device.type == "cuda":
            torch.cuda.synchronize()
    result = {"baseline_rss_bytes": cold.baseline, "peak_rss_above_baseline_bytes": cold.above_baseline,
              "peak_rss_above_baseline_warm_bytes": warm.above_baseline, "rss_method": cold.method}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    with Instrument(tensors=True) as instrument:  # region reads are registered with its tracker, also from threads
        run()
    if device.type == "cuda":
        torch.cuda.synchronize()
        result.update(peak_tensor_bytes=int(torch.cuda.max_memory_allocated() - before),
                      tensor_method="torch.cuda.max_memory_allocated above memory_allocated before the call",
                      peak_host_tensor_bytes=instrument.peak_bytes("cpu"))
    else:
        result.update(peak_tensor_bytes=instrument.peak_bytes("cpu"),
                      tensor_method="TensorTracker (TorchDispatchMode over storages, freed by weakref callbacks)")
    print(json.dumps(result), flush=True)


# --------------------------------------------------------------------------------------------------------------
# The bench


def machine_info(device) -> dict:
    info = {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "torch": torch.__version__, "processor": platform.processor() or None,
            "memory_total_bytes": None, "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["processor"] = line.split(":", 1)[1].strip()
                break
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                info["memory_total_bytes"] = int(line.split()[1]) * 1024
    except OSError:
        pass
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    return info


def analytic_flops(instrument: Instrument) -> dict:
    return {k: int(v) for k, v in sorted(instrument.ops.items())}


NAMED_STAGES = {  # how the raw stages read for each model (the Markdown's stage table)
    "saccader": {"proxy": "proxy construction", "rest": "location inference", "read": "glimpse reading",
                 "resample": "glimpse reading", "encode": "glimpse encoding", "open": "open file"},
    "ats": {"proxy": "proxy construction", "rest": "attention + heads", "read": "patch reading",
            "resample": "patch reading", "encode": "patch encoding", "open": "open file"},
    "fullres": {"open": "reading/decoding", "read": "reading/decoding", "rest": "CNN"},
    "proxy": {"open": "open file", "proxy": "proxy construction", "rest": "CNN"},
}


def named_stages(name: str, stages_ms: dict) -> dict:
    names = NAMED_STAGES.get(name, {})
    out: dict[str, float] = defaultdict(float)
    for raw, value in stages_ms.items():
        out[names.get(raw, raw)] += value
    return dict(out)


def bench(sizes=DEFAULT_SIZES, models=DEFAULT_MODELS, kinds=KINDS, threads=(1, 2), repeats: int = 20, warmup: int = 2,
          batch: int = 16, device: str = "cpu", out="runs/bench", cache=None, seed: int = 0, digit_source: str = "auto",
          data_dir=None, task_options: dict | None = None, throughput_repeats: int | None = None,
          stage_repeats: int | None = None,
          memory: bool = True, progress: bool = True, command: str | None = None) -> dict:
    """Run the bench (see the module docstring) and write OUT/bench.json, bench.md and bench.png; returns the report."""
    from tqdm import tqdm

    device = checked_device(device)
    for kind in kinds:
        if kind not in KINDS:
            raise ConfigError(f"unknown input kind {kind!r}; choose from {KINDS}")
    if repeats < 1 or warmup < 0 or batch < 1 or not threads or min(threads) < 1 or not sizes:
        raise ConfigError("need repeats >= 1, warmup >= 0, batch >= 1, threads >= 1 and at least one size")
    settings = {"sizes": [int(s) for s in sizes], "models": list(models), "kinds": list(dict.fromkeys(kinds)),
                "threads": [int(t) for t in threads], "repeats": repeats, "warmup": warmup, "batch": batch,
                "throughput_repeats": throughput_repeats or max(1, min(5, repeats // 4)),
                "stage_repeats": stage_repeats or min(repeats, 5), "device": str(device), "proxy_size": PROXY_SIZE,
                "location_cells": LOCATION_CELLS, "seed": seed, "digit_source": digit_source,
                "task_options": task_options or {}, "weights": WEIGHTS_NOTE,
                "memory_subprocess_threads": int(threads[0]), "memory_measured": memory, "vips_operation_cache": VIPS_NOTE}
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cache = Path(cache) if cache else out / "cache"
    initial_threads = torch.get_num_threads()
    report = new_report(command, device, settings)
    first = prepare_canvas(settings["sizes"][0], cache, seed, digit_source, data_dir, task_options)
    configs, built = build_models(report, models, first[1], device, seed)
    names, kinds, threads = list(configs), settings["kinds"], settings["threads"]
    per_kind = len(names) * ((2 if memory else 1) + len(threads) * (warmup + repeats + 1))  # progress steps
    bar = tqdm(total=per_kind * len(kinds) * len(sizes), desc="bench", unit="step", disable=not progress, dynamic_ncols=True)
    stack = contextlib.ExitStack()
    stack.enter_context(vips_cache_off())
    try:
        for size in settings["sizes"]:
            info, _ = first if size == settings["sizes"][0] else prepare_canvas(size, cache, seed, digit_source,
                                                                                data_dir, task_options)
            report["canvases"][str(size)] = info
            size_kinds = [k for k in kinds if k != "file" or info["tiff"]]
            if "file" in kinds and not info["tiff"]:
                report["skipped"][f"file rows at {size}"] = info["file_error"]
                bar.update(len(names) * (2 if memory else 1) + len(threads) * len(names) * (warmup + repeats + 1))
            sources = {"memory": load_canvas(info["npy"]) if "memory" in size_kinds else None, "file": info["tiff"]}
            costs = {(name, kind): measure_costs(built[name], name, configs[name], kind, info, sources[kind], size,
                                                 device, settings, bar)
                     for kind in size_kinds for name in names}
            for kind in size_kinds:
                for n_threads in threads:
                    report["rows"] += measure_block(report, built, kind, sources[kind], n_threads, size, device,
                                                    settings, costs, bar)
            report["load_average_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
            write_json(report, out / "bench.json")
    finally:
        bar.close()
        stack.close()
        set_cpu_threads(initial_threads)
    write_json(report, out / "bench.json")
    (out / "bench.md").write_text(markdown(report))
    plot(report, out / "bench.png")
    return report


VIPS_NOTE = ("off (pyvips.cache_set_max(0)): every call opens and decodes the file as if never seen before; the OS "
             "page cache still holds the file")


def checked_device(device: str) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: CUDA is not available on this machine (torch "
                          f"{torch.__version__}); use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"--device must be cpu or cuda, got {device}")
    return device


def new_report(command, device, settings: dict) -> dict:
    """The report's header: command, date, machine, settings and how each figure is measured; rows come later."""
    return {
        "command": command, "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": machine_info(device), "settings": settings,
        "methods": {
            "latency": "wall time of open + proxy + forward at batch 1 (CUDA: events); warm-up, then repeats with the "
                       "models interleaved round-robin; median and inter-quartile range",
            "stages": "exclusive times on a stage stack, reported by the code's own hook points (instruments.py: "
                      "the glimpse sampler, region reads, the glimpse encoder, the proxy, opening the file), in "
                      f"{settings['stage_repeats']} extra instrumented calls per model interleaved with the first "
                      "latency repeats (latency itself comes from the uninstrumented calls)",
            "throughput": f"images/s at batch {settings['batch']} or the largest power of two below that runs; OOM recorded",
            "peak_tensor": "fresh subprocess; CPU: TensorTracker (TorchDispatchMode, storages created during one "
                           "inference, freed via weakref); CUDA: torch.cuda.max_memory_allocated",
            "peak_rss": "fresh subprocess; VmHWM after /proc/self/clear_refs minus VmRSS after imports, model load "
                        "and input load; first (cold) inference",
            "flops": FLOPS_NOTE,
            "pixels_read": "counted by the images during the FLOPs call (images.LargeImage's definition)",
            "busy": f"flagged when other processes used > {BUSY_CORES} core during the row's block (/proc/stat minus "
                    "own CPU time); without /proc/stat, when the 1-min load at the block's start > threads + 0.5",
        },
        "load_average_at_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "models": {}, "skipped": {}, "canvases": {}, "rows": [],
    }


def build_models(report: dict, models, task, device, seed: int) -> tuple[dict, dict]:
    """The benched models' configs and built models (randomly initialised); their sizes go into the report."""
    configs, skipped = model_configs(models, task)
    report["skipped"].update(skipped)
    if not configs:
        raise ConfigError(f"no model to bench among {list(models)}")
    built = {name: build_model(config.to_dict(), device, seed) for name, config in configs.items()}
    for name, model in built.items():
        report["models"][name] = {"config": configs[name].to_dict(), "params": count_parameters(model),
                                  "glimpses": getattr(model, "glimpses_per_image", None)}
    if "ats" in configs:
        report["models"]["ats"]["note"] = (f"{ATS_PATCHES} patches of {ATS_PATCH}x{ATS_PATCH} at s = {ATS_PATCH}/"
                                           f"{ATS_REFERENCE_SIDE} of the image side (a {ATS_PATCH}-px window at "
                                           f"{ATS_REFERENCE_SIDE} px): ATS's own Megapixel MNIST setting")
    return configs, built


def measure_costs(model, name, config, kind, info, source, size, device, settings, bar) -> dict:
    """One model on one input kind: peak memory (a fresh subprocess), FLOPs and pixels read of one call."""
    entry = {}
    bar.set_postfix_str(f"{size}px {kind} {name}: memory")
    if settings["memory_measured"]:
        entry["memory"] = measure_memory({"name": name, "config": config.to_dict(), "kind": kind, "npy": info["npy"],
                                          "tiff": info["tiff"], "device": str(device),
                                          "threads": settings["threads"][0], "seed": settings["seed"]})
        bar.update(1)
    else:
        entry["memory"] = {"skipped": "memory not measured (memory=False)"}
    bar.set_postfix_str(f"{size}px {kind} {name}: FLOPs")
    torch.set_num_threads(settings["threads"][0])
    with Instrument(flops=True) as instrument:
        run_inference(model, name, kind, source, 1, device)
    flops, analytic = instrument.flops, analytic_flops(instrument)
    read, tiles = instrument.reads()
    pixels = size * size
    entry.update(flops={"conv_matmul": flops, "analytic_resize": sum(analytic.values()), "analytic_breakdown": analytic,
                        "total": flops + sum(analytic.values()), "note": FLOPS_NOTE},
                 pixels_read=read, pixels_read_fraction=read / pixels, tiles_decoded=tiles,
                 region_area_fraction=instrument.region_area / pixels)
    bar.update(1)
    return entry


def measure_latency(built, kind, source, device, settings, bar, label) -> tuple[dict, dict, dict]:
    """Warm-up, then `repeats` batch-1 calls per model interleaved round-robin, the first `stage_repeats` of each
    repeated instrumented for its stages: ({model: seconds}, {model: instrumented seconds}, {model: {stage: [s]}})."""
    names = list(built)
    bar.set_postfix_str(f"{label}: warm-up")
    for name in names:
        for _ in range(settings["warmup"]):
            run_inference(built[name], name, kind, source, 1, device)
            bar.update(1)
    samples, staged = {name: [] for name in names}, {name: [] for name in names}
    stages = {name: defaultdict(list) for name in names}
    bar.set_postfix_str(f"{label}: latency")
    for r in range(settings["repeats"]):
        for name in names[r % len(names):] + names[: r % len(names)]:
            model = built[name]
            samples[name].append(wall_time(lambda: run_inference(model, name, kind, source, 1, device), device))
            if r < settings["stage_repeats"]:  # the same call again, instrumented, for its stages
                with Instrument(stages=True, device=device) as instrument:
                    staged[name].append(wall_time(lambda: run_inference(model, name, kind, source, 1, device), device))
                for stage, seconds in instrument.seconds.items():
                    stages[name][stage].append(seconds)
            bar.update(1)
    return samples, staged, stages


def measure_block(report, built, kind, source, n_threads, size, device, settings, costs, bar) -> list[dict]:
    """The rows of one (size, kind, threads) block: latency, stages and throughput of every model, with the load."""
    set_cpu_threads(n_threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    meter = CpuMeter()
    samples, staged, stages = measure_latency(built, kind, source, device, settings, bar, f"{size}px {kind} {n_threads}t")
    foreign = meter.foreign_cores()
    load_rule = load is not None and load > n_threads + 0.5
    busy = foreign > BUSY_CORES if foreign is not None else load_rule
    rows = []
    for name, model in built.items():
        bar.set_postfix_str(f"{size}px {kind} {n_threads}t {name}: throughput")
        estimate = None
        mem = costs[(name, kind)]["memory"]
        if mem.get("peak_tensor_bytes") is not None:
            estimate = max(mem["peak_tensor_bytes"], mem.get("peak_rss_above_baseline_bytes") or 0)
        thru = throughput(model, name, kind, source, device, settings["batch"], settings["throughput_repeats"], estimate)
        bar.update(1)
        stage_ms = {k: 1000 * statistics.median(v) for k, v in sorted(stages[name].items())}
        rows.append({"model": name, "size": size, "pixels": size * size, "kind": kind, "threads": n_threads,
                     "device": str(device), "latency_ms": summary_ms(samples[name]),
                     "instrumented_latency_ms": summary_ms(staged[name]), "stages_ms": stage_ms,
                     "named_stages_ms": named_stages(name, stage_ms), "throughput": thru, **costs[(name, kind)],
                     "params": report["models"][name]["params"], "load_1min_at_start": load,
                     "foreign_cpu_cores": foreign, "busy": bool(busy), "busy_by_load_rule": bool(load_rule)})
    return rows


def write_json(report: dict, path: Path) -> None:
    from .atomic import write_text

    write_text(path, json.dumps(report, indent=1))


# --------------------------------------------------------------------------------------------------------------
# Reports


def _mib(value) -> str:
    return "n/a" if value is None else f"{value / 2**20:.1f}"


def _ratio(a, b) -> str:
    return "n/a" if a is None or b is None or b == 0 else f"{a / b:.1f}x"


def _flops(value) -> str:
    if value is None:
        return "n/a"
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.2f} {unit}"
    return str(value)


def markdown(report: dict) -> str:
    s, m = report["settings"], report["machine"]
    rows = report["rows"]
    lines = ["# vsaccade bench", ""]
    if report.get("command"):
        lines += ["```bash", report["command"], "```", ""]
    load0, load1 = report.get("load_average_at_start"), report.get("load_average_at_end")
    sources = {str(c["task"]["digit_source"].get("source")) for c in report["canvases"].values()}
    digits = ", ".join(sorted(sources)) or s["digit_source"]
    lines += [f"{report['date']}; {m['processor']} ({m['cpu_count']} CPUs), {m['platform']}, torch {m['torch']}, "
              f"device {s['device']}" + (f" ({m.get('cuda_device')})" if m.get("cuda_device") else "") +
              (f"; 1-min load average {load0[0]:.2f} at start" if load0 else "") +
              (f", {load1[0]:.2f} at end" if load1 else "") + ".",
              "",
              f"Weights {s['weights']}. Megapixel MNIST test scene 0 per size ({digits} digits); proxy "
              f"{s['proxy_size']}x{s['proxy_size']} at every size, {s['location_cells']}x{s['location_cells']} "
              f"location cells. Latency: batch 1, {s['warmup']} warm-up + {s['repeats']} repeats, models interleaved, "
              "median [IQR]. File rows: tiled pyramidal TIFF (JPEG tiles), opened in every call, libvips' operation "
              "cache off. Memory: one inference in a fresh process per (model, size, kind). "
              f"FLOPs: {FLOPS_NOTE}. Busy: {report['methods']['busy']}.", ""]
    for name, why in report.get("skipped", {}).items():
        lines.append(f"- skipped {name}: {why}")
    if "ats" in report["models"]:
        lines.append(f"- ats: {report['models']['ats']['note']}")
    lines.append("")

    lines += comparison_section(report) + rows_section(report) + stages_section(report)
    return "\n".join(lines)


def find_row(rows: list, model, size, kind, threads):
    for row in rows:
        if (row["model"], row["size"], row["kind"], row["threads"]) == (model, size, kind, threads):
            return row
    return None


def comparison_section(report: dict) -> list[str]:
    """Ours vs fullres, the same run: latency and memory ratios per size, kind and thread count."""
    s, rows, lines = report["settings"], report["rows"], []
    if "saccader" in report["models"] and "fullres" in report["models"]:
        lines += ["## Ours (saccader) vs fullres, same run", ""]
        for t in s["threads"]:
            lines += [f"{t} thread(s):", "",
                      "| size | kind | ours latency ms | fullres latency ms | latency ratio | ours peak tensor MiB | "
                      "fullres peak tensor MiB | memory ratio | ours peak RSS +MiB | fullres peak RSS +MiB | busy |",
                      "|---|---|---|---|---|---|---|---|---|---|---|"]
            for size in s["sizes"]:
                for kind in s["kinds"]:
                    ours, full = find_row(rows, "saccader", size, kind, t), find_row(rows, "fullres", size, kind, t)
                    if ours is None or full is None:
                        continue
                    lo, lf = ours["latency_ms"], full["latency_ms"]
                    mo, mf = ours["memory"].get("peak_tensor_bytes"), full["memory"].get("peak_tensor_bytes")
                    busy = "yes" if ours["busy"] or full["busy"] else "no"
                    lines.append(f"| {size}x{size} | {kind} | {lo['median']:.1f} [{lo['iqr']:.1f}] | {lf['median']:.1f} "
                                 f"[{lf['iqr']:.1f}] | **{_ratio(lf['median'], lo['median'])}** | {_mib(mo)} | {_mib(mf)} | "
                                 f"**{_ratio(mf, mo)}** | {_mib(ours['memory'].get('peak_rss_above_baseline_bytes'))} | "
                                 f"{_mib(full['memory'].get('peak_rss_above_baseline_bytes'))} | {busy} |")
            lines.append("")
        lines += ["Ratios are fullres / ours (higher: ours cheaper).", ""]

    return lines


def rows_section(report: dict) -> list[str]:
    s, rows = report["settings"], report["rows"]
    lines = ["## Every row", "",
              "| model | size | kind | threads | latency ms [IQR] | throughput img/s (batch) | peak tensor MiB | "
              "peak RSS +MiB | conv/matmul FLOPs | + analytic resize | params | pixels read | busy |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        lat, thr, mem = row["latency_ms"], row["throughput"], row["memory"]
        throughput_text = (f"{thr['images_per_s']:.2f} ({thr['batch']})" if thr.get("images_per_s") else
                           f"OOM ({', '.join(str(a['batch']) for a in thr['attempts'])})")
        if thr.get("images_per_s") and thr["batch"] != s["batch"]:
            throughput_text += " after OOM"
        frac = row["pixels_read_fraction"]
        lines.append(f"| {row['model']} | {row['size']} | {row['kind']} | {row['threads']} | {lat['median']:.1f} "
                     f"[{lat['iqr']:.1f}] | {throughput_text} | {_mib(mem.get('peak_tensor_bytes'))} | "
                     f"{_mib(mem.get('peak_rss_above_baseline_bytes'))} | {_flops(row['flops']['conv_matmul'])} | "
                     f"{_flops(row['flops']['analytic_resize'])} | {row['params']:,} | "
                     f"{'n/a' if frac is None else f'{frac:.2e}'} | {'yes' if row['busy'] else 'no'} |")
    errors = [(r["model"], r["size"], r["kind"], r["memory"]["error"]) for r in rows if r["memory"].get("error")]
    lines.append("")
    for model, size, kind, error in dict.fromkeys(errors):
        lines.append(f"- memory of {model} at {size} ({kind}) not measured: {error}")

    return lines


def stages_section(report: dict) -> list[str]:
    s, rows = report["settings"], report["rows"]
    lines = ["", f"## Stages (median ms per call, {s['stage_repeats']} instrumented calls per row)", "",
              "open: FileImage; proxy: proxy construction; read: full-resolution region reads (glimpses; the whole "
              "image for fullres); resample: the rest of the glimpse sampler; encode: glimpse encoder; rest: the rest of "
              "the network (ours: location inference; baselines: the CNN). Ours: glimpse reading = read + resample.", "",
              "| model | size | kind | threads | open | proxy | read | resample | encode | rest | sum | instrumented call "
              "| latency (plain) |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in rows:
        st = row["stages_ms"]
        cells = " | ".join(f"{st[k]:.2f}" if k in st else "-" for k in ("open", "proxy", "read", "resample", "encode", "rest"))
        lines.append(f"| {row['model']} | {row['size']} | {row['kind']} | {row['threads']} | {cells} | "
                     f"{sum(st.values()):.2f} | {row['instrumented_latency_ms']['median']:.2f} | "
                     f"{row['latency_ms']['median']:.2f} |")
    lines.append("")
    return lines


def plot(report: dict, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = report["rows"]
    threads = report["settings"]["threads"][0]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    colours = {name: f"C{i}" for i, name in enumerate(report["models"])}
    styles = {"memory": ("-", "o"), "file": ("--", "s")}
    for name in report["models"]:
        for kind in report["settings"]["kinds"]:
            selected = sorted((r for r in rows if r["model"] == name and r["kind"] == kind and r["threads"] == threads),
                              key=lambda r: r["pixels"])
            if not selected:
                continue
            line, marker = styles[kind]
            x = [r["pixels"] for r in selected]
            median = [r["latency_ms"]["median"] for r in selected]
            err = [[r["latency_ms"]["median"] - r["latency_ms"]["q1"] for r in selected],
                   [r["latency_ms"]["q3"] - r["latency_ms"]["median"] for r in selected]]
            axes[0].errorbar(x, median, yerr=err, color=colours[name], linestyle=line, marker=marker, capsize=2,
                             label=f"{name} ({kind})")
            memory = [(r["pixels"], r["memory"].get("peak_tensor_bytes")) for r in selected]
            memory = [(p, b / 2**20) for p, b in memory if b]
            if memory:
                axes[1].plot(*zip(*memory), color=colours[name], linestyle=line, marker=marker, label=f"{name} ({kind})")
    for ax, title in zip(axes, (f"latency per image, batch 1, {threads} thread(s) (median, IQR)",
                                "peak live tensor memory, one inference")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("pixels per image")
        ax.set_title(title, fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].set_ylabel("ms")
    axes[1].set_ylabel("MiB")
    axes[1].legend(fontsize=8, loc="center left", bbox_to_anchor=(1.02, 0.5))
    m = report["machine"]
    fig.suptitle(f"vsaccade bench: {m['processor']}, {report['settings']['device']}, torch {m['torch']} "
                 "(solid: in-memory canvas, dashed: tiled pyramidal TIFF)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
