"""Measurement instruments: stage clocks, live tensor memory, FLOPs and pixels read of a block of model code, through
hook points the code calls itself (no function or method is replaced at run time).

    with vsaccade.Instrument(stages=True, tensors=True, flops=True) as instrument:
        instrument.attach(images)          # count these images' reads from now on
        model(images, proxy, mask)
    instrument.seconds                     # {stage: exclusive seconds}: read, resample, encode, and the caller's own
    instrument.peak_bytes(), instrument.flops, instrument.reads(), instrument.ops

Hook points. The code under measurement reports into the *current* instrument, a context variable (per thread and
per asyncio task; the glimpse sampler hands it to its reader threads with `in_context`). With none active, every hook
is one context-variable lookup and a no-op (or, while a `torch.profiler` profile is recording, a
`torch.profiler.record_function("vsaccade.<stage>")` region, so stages show in profiler traces too):
  * `stage(name)`: a named region ("resample": the glimpse sampler; "encode": the glimpse encoder; callers add their
    own: "open", "proxy", "rest"). Stages nest on a stack and each keeps its exclusive time, so the stages of a call
    sum to the call. Only the thread that made the instrument is timed; work in reader threads counts inside the
    stage that waits for it. On CUDA every boundary synchronises;
  * `read_region(image, top, left, height, width[, downsample])`: a full-resolution region read (glimpse windows, a
    baseline's whole image): stage "read", the area it covers, the block means it costs, and its tensor registered
    with the tensor tracker (reads made in other threads or outside torch's dispatcher, e.g. from libvips' buffers,
    are invisible to it otherwise);
  * `proxy(image, size)`: a proxy made for the model: stage "proxy" and its analytic cost;
  * `count_ops(kind, n)`: analytic resize/pooling ops (the glimpse sampler's bilinear sampling).

Instruments:
  * tensors (`TensorTracker`): the peak of live tensor bytes allocated while active, from torch's dispatcher;
  * FLOPs (`count_flops`): torch.utils.flop_counter over convolutions and matrix products, plus `ops`, the analytic
    resize/pooling costs the hooks report (1 op per source pixel per channel reduced, 8 per bilinear output pixel
    per channel, a copy 0; decoding not counted);
  * pixels read: the images' own counters (images.LargeImage, the project's one definition), from `attach` on.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import threading
import time
import weakref
from collections import defaultdict

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from .geometry import proxy_extent

BILINEAR_OPS = 8  # per output pixel per channel: 4 multiply-adds
_CURRENT: contextvars.ContextVar = contextvars.ContextVar("vsaccade_instrument", default=None)
_NOTHING = contextlib.nullcontext()
_profiling = getattr(torch.autograd, "_profiler_enabled", lambda: False)


# --------------------------------------------------------------------------------------------------------------
# Hook points (called by the model code and by callers that build proxies)


def current() -> "Instrument | None":
    """The active instrument of this context, or None."""
    return _CURRENT.get()


def stage(name: str):
    """A named region of the current instrument's stage clock (a no-op context without one)."""
    instrument = _CURRENT.get()
    if instrument is not None and instrument.clock is not None:
        return instrument.clock.stage(name)
    return torch.profiler.record_function(f"vsaccade.{name}") if _profiling() else _NOTHING


def read_region(image, *region) -> torch.Tensor:
    """`image.read_region(*region)` (top, left, height, width[, downsample]), reported to the current instrument as a
    full-resolution region read."""
    instrument = _CURRENT.get()
    if instrument is None:
        with stage("read"):
            return image.read_region(*region)
    return instrument.read(image, *region)


def proxy(image, size: int) -> torch.Tensor:
    """`image.proxy(size)`, reported to the current instrument as proxy construction."""
    instrument = _CURRENT.get()
    if instrument is None:
        with stage("proxy"):
            return image.proxy(size)
    return instrument.proxy(image, size)


def count_ops(kind: str, n: int) -> None:
    """Add n analytic ops of `kind` to the current instrument, if any."""
    instrument = _CURRENT.get()
    if instrument is not None:
        instrument.count(kind, n)


def in_context(fn):
    """fn, run in the caller's context wherever it is called (a thread pool's worker): its reads reach the caller's
    instrument. fn itself when no instrument is active."""
    if _CURRENT.get() is None:
        return fn
    context = contextvars.copy_context()
    return lambda *args, **kwargs: context.copy().run(fn, *args, **kwargs)


# --------------------------------------------------------------------------------------------------------------
# Instruments


class StageClock:
    """Exclusive wall time per stage on a stack (a stage's time excludes the stages nested in it), so the stages of
    a call sum to the call. Only the creating thread's stages count. On CUDA every boundary synchronises."""

    def __init__(self, device="cpu"):
        self.cuda = torch.device(device).type == "cuda"
        self.owner = threading.get_ident()
        self.totals: dict[str, float] = defaultdict(float)
        self.stack: list[str] = []
        self.mark = 0.0

    def _now(self) -> float:
        if self.cuda:
            torch.cuda.synchronize()
        return time.perf_counter()

    def push(self, name: str) -> bool:
        if threading.get_ident() != self.owner:
            return False
        now = self._now()
        if self.stack:
            self.totals[self.stack[-1]] += now - self.mark
        self.stack.append(name)
        self.mark = now
        return True

    def pop(self) -> None:
        now = self._now()
        self.totals[self.stack.pop()] += now - self.mark
        self.mark = now

    @contextlib.contextmanager
    def stage(self, name: str):
        pushed = self.push(name)
        try:
            with torch.profiler.record_function(f"vsaccade.{name}") if _profiling() else _NOTHING:
                yield
        finally:
            if pushed:
                self.pop()


class TensorTracker(TorchDispatchMode):
    """Peak of live tensor bytes allocated while active, per device type, from torch's own dispatcher.

    Every op's outputs are inspected: a storage no input shares is new, and its bytes count from then until the
    storage is freed (a weakref callback on the storage). Views and in-place results share an input's storage and
    add nothing. Storages that exist before the tracker starts (weights, inputs) are never counted, even when an op
    returns a view of them. `track(tensor)` registers a tensor made elsewhere (e.g. in another thread).
    """

    def __init__(self):
        super().__init__()
        self.live: dict[str, int] = defaultdict(int)
        self.peak: dict[str, int] = defaultdict(int)
        self._refs: dict[int, weakref.ref] = {}
        self._lock = threading.RLock()  # re-entrant: a garbage collection inside `track` may call `_free`

    def _free(self, key: int, device: str, nbytes: int) -> None:
        with self._lock:
            self.live[device] -= nbytes
            self._refs.pop(key, None)

    def track(self, tensor: torch.Tensor, shared: set | None = None) -> None:
        if not isinstance(tensor, torch.Tensor) or tensor.is_meta or tensor.layout != torch.strided:
            return
        storage = tensor.untyped_storage()
        nbytes = storage.nbytes()
        if nbytes == 0 or (shared and storage.data_ptr() in shared):
            return
        key, device = id(storage), storage.device.type
        with self._lock:
            ref = self._refs.get(key)
            if ref is not None and ref() is storage:
                return
            self.live[device] += nbytes
            self.peak[device] = max(self.peak[device], self.live[device])
            self._refs[key] = weakref.ref(storage,
                                          lambda _, key=key, device=device, n=nbytes: self._free(key, device, n))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        inputs = [t for t in tree_flatten((args, kwargs))[0] if isinstance(t, torch.Tensor)]
        shared = {t.untyped_storage().data_ptr() for t in inputs if t.layout == torch.strided and not t.is_meta}
        out = func(*args, **kwargs)
        for tensor in tree_flatten(out)[0]:
            self.track(tensor, shared)
        return out

    def peak_bytes(self, device: str = "cpu") -> int:
        return int(self.peak.get(device, 0))


def flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    return FlopCounterMode(display=False)


def count_flops(fn) -> tuple[int, object]:
    """(FLOPs counted by torch.utils.flop_counter over fn(), fn's result): conv/matmul only."""
    with flop_counter() as counter:
        result = fn()
    return int(counter.get_total_flops()), result


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def proxy_ops(image, size: int) -> int:
    """Analytic ops of `image.proxy(size)`. A file (FileImage): the pyramid or shrink-on-load level vips thumbnails
    from, plus the area resize from the oversampled thumbnail to the proxy. Otherwise (LargeImage.proxy): block
    means at `step` over every pixel, then the area resize."""
    from .file_images import PROXY_OVERSAMPLE, FileImage

    rows, cols = proxy_extent(image.height, image.width, size)
    if isinstance(image, FileImage):
        k = max(1, min(PROXY_OVERSAMPLE, image.height // rows, image.width // cols))
        factor = image.shrink_on_load(rows * k, cols * k)
        level = math.ceil(image.height / factor) * math.ceil(image.width / factor)
        return image.channels * (level + rows * k * cols * k)
    step = max(1, min(image.height // rows, image.width // cols))
    coarse = math.ceil(image.height / step) * math.ceil(image.width / step)
    return image.channels * ((image.height * image.width if step > 1 else 0) + max(coarse, rows * cols))


class Instrument:
    """The current instrument inside its `with` block (see the module docstring): stage times (`stages=True`),
    peak live tensor bytes (`tensors=True`), conv/matmul FLOPs (`flops=True`), and always the analytic ops, the
    area of region reads and, for attached images, the pixels read. `device`: where the stage clock synchronises."""

    def __init__(self, stages: bool = False, tensors: bool = False, flops: bool = False, device="cpu"):
        self.clock = StageClock(device) if stages else None
        self.tracker = TensorTracker() if tensors else None
        self.flop_counter = flop_counter() if flops else None
        self.ops: dict[str, int] = defaultdict(int)  # analytic resize/pooling ops
        self.region_area = 0  # full-resolution area covered by region reads (proxy construction excluded)
        self._counts: list = []  # (image, pixels_requested, tiles_decoded) when attached
        self._lock = threading.Lock()
        self._token = None

    def __enter__(self):
        self._token = _CURRENT.set(self)
        for mode in (self.tracker, self.flop_counter):
            if mode is not None:
                mode.__enter__()
        return self

    def __exit__(self, *exc):
        for mode in (self.flop_counter, self.tracker):
            if mode is not None:
                mode.__exit__(*exc)
        _CURRENT.reset(self._token)
        return False

    @property
    def seconds(self) -> dict:
        """{stage: exclusive seconds} (stages=True)."""
        return dict(self.clock.totals) if self.clock is not None else {}

    @property
    def flops(self) -> int | None:
        return int(self.flop_counter.get_total_flops()) if self.flop_counter is not None else None

    def peak_bytes(self, device: str = "cpu") -> int | None:
        return self.tracker.peak_bytes(device) if self.tracker is not None else None

    def attach(self, images) -> None:
        """Count these images' reads (images.LargeImage's counters) from now on; see `reads`."""
        for image in {id(i): i for i in images}.values():
            self._counts.append((image, image.pixels_requested, image.tiles_decoded))

    def reads(self) -> tuple[int, int]:
        """Pixels requested and tiles decoded by the attached images since they were attached."""
        return (sum(image.pixels_requested - pixels for image, pixels, _ in self._counts),
                sum(image.tiles_decoded - tiles for image, _, tiles in self._counts))

    def stage(self, name: str):
        return self.clock.stage(name) if self.clock is not None else stage(name)

    def count(self, kind: str, n: int) -> None:
        with self._lock:
            self.ops[kind] += int(n)

    def read(self, image, *region) -> torch.Tensor:
        with self.stage("read"):
            out = image.read_region(*region)
        _, _, height, width, downsample = (*region, 1)[:5]
        if self.tracker is not None:
            self.tracker.track(out)
        with self._lock:
            self.region_area += height * width
            if downsample > 1:
                f = image.level_factor(downsample)
                self.ops["region_block_means"] += image.channels * math.ceil(height / f) * math.ceil(width / f)
        return out

    def proxy(self, image, size: int) -> torch.Tensor:
        with self.stage("proxy"):
            out = image.proxy(size)
        self.count("proxy_construction", proxy_ops(image, size))
        return out
