"""`vsaccade predict CKPT PATH...`: classify image files and folders, write one CSV row per image (predicted
class, class probabilities, each glimpse's box in pixels of the upright original), optionally overlay PNGs.

A pipeline: `readers` threads open the files and make their proxies (the I/O) into a bounded queue, ahead of the
model, which classifies them `batch_size` at a time. Rows keep the input order whatever the threads do.
An unreadable file is reported (path and reason, one line) and skipped; the others finish. `predict_paths` returns
the number of failures, so the command's exit status can say whether any occurred.

The CSV is written atomically at the end. Meanwhile rows go to OUT.partial, flushed one by one, so a killed run
resumes: files already in OUT or OUT.partial are skipped (a CSV of another model is refused).
"""

from __future__ import annotations

import csv
import glob
import json
import sys
from pathlib import Path

import torch
from tqdm import tqdm

from .file_images import IMAGE_SUFFIXES
from .images import ImageError

BATCH_SIZE = 32  # images per forward; docs/benchmarks/files.md measures predict at this default


def expand_paths(patterns: list[str]) -> list[Path]:
    """Files, folders (searched recursively for image files) and globs -> a sorted, de-duplicated list of files.
    A pattern that matches nothing is kept, so that it is reported as missing."""
    found: list[Path] = []
    for pattern in patterns:
        matches = [Path(m) for m in sorted(glob.glob(pattern, recursive=True))] or [Path(pattern)]
        for match in matches:
            if match.is_dir():
                found += sorted(p for p in match.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            else:
                found.append(match)
    return list(dict.fromkeys(found))


def class_names(head: dict) -> list[str]:
    return [str(c) for c in head.get("classes") or range(head["num_classes"])]


def header(model) -> list[str]:
    columns = ["path"]
    for head in model.config.heads:
        columns.append(head["name"])
        columns += [f"{head['name']}_p_{name}" for name in class_names(head)]
    for t in range(1, model.glimpses_per_image + 1):
        columns += [f"glimpse{t}_{k}" for k in ("x0", "y0", "x1", "y1")]
    return columns


def row(model, path: Path, prediction) -> list:
    values: list = [str(path)]
    for head in model.config.heads:
        names, probs = class_names(head), prediction.probabilities[head["name"]]
        if head["kind"] == "multilabel":
            values.append(" ".join(n for n, p in zip(names, probs.tolist()) if p > 0.5))
        else:
            values.append(names[int(probs.argmax())])
        values += [f"{p:.6f}" for p in probs.tolist()]
    for box in prediction.boxes.tolist():
        values += [f"{c:.1f}" for c in box]
    return values


def done_rows(out_csv: Path, columns: list[str]) -> dict:
    """path -> row of the predictions already made: OUT, then every OUT.partial* (a killed run's, one per process),
    complete rows only."""
    rows = {}
    for path in [out_csv, *sorted(out_csv.parent.glob(glob.escape(out_csv.name) + ".partial*"))]:
        if not path.exists() or path.stat().st_size == 0:  # a partial killed before its header was written
            continue
        with open(path, newline="") as handle:
            reader = csv.reader(handle)
            if next(reader, None) != columns:
                raise ImageError(f"{path} holds predictions of another model (its columns differ): use another --out")
            rows.update((row[0], row) for row in reader if len(row) == len(columns))
    return rows


def partial_path(out_csv: Path, rank: int = 0) -> Path:
    return out_csv.with_name(out_csv.name + ".partial" + (f"-{rank}" if rank else ""))


def my_share(todo: list, batch_size: int, cluster) -> list:
    """This process's files: a contiguous run of whole batches, so every batch is the one a single process makes
    (rows equal to its, bit for bit)."""
    whole = list(batches(todo, batch_size))
    share = cluster.split(len(whole))
    return [path for batch in whole[share.start:share.stop] for path in batch]


def prefetched(model, paths: list[Path], readers: int, depth: int):
    """(path, ModelInput or the one-line reason it cannot be read), in `paths` order, read `readers` at a time by
    threads at most `depth` files ahead of the consumer."""
    from collections import deque
    from concurrent.futures import ThreadPoolExecutor

    from .api import model_input

    def read(path):
        try:
            item = model_input(model, path)
            item.image.prefetch()  # the whole decode of formats that cannot read regions, here, not in the model
            return item
        except Exception as error:  # noqa: BLE001 - any failure to read is that file's, reported in one line
            return one_line(error, path)

    pool = ThreadPoolExecutor(max(1, readers), thread_name_prefix="vsaccade-predict")
    try:
        pending, queued = deque(), iter(paths)
        for path in queued:
            pending.append((path, pool.submit(read, path)))
            if len(pending) >= depth:
                break
        while pending:
            path, future = pending.popleft()
            nxt = next(queued, None)
            if nxt is not None:
                pending.append((nxt, pool.submit(read, nxt)))
            yield path, future.result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def one_line(error: Exception, path) -> str:
    message = " ".join(str(error).split()) or type(error).__name__
    return message.replace(str(path) + ": ", "")


def predicted(model, good: list, policy: str, report) -> tuple[list, list]:
    """(the (path, input) pairs predicted, their predictions): the batch in one forward; if reading its glimpses
    fails (a file that opens but cannot be decoded everywhere), each image alone, the failing ones reported."""
    from .api import predict_inputs

    if not good:
        return [], []
    try:
        return good, predict_inputs(model, [item for _, item in good], policy, [str(path) for path, _ in good])
    except (ImageError, OSError, ValueError):
        kept, predictions = [], []
        for path, item in good:
            try:
                predictions += predict_inputs(model, [item], policy, [str(path)])
                kept.append((path, item))
            except (ImageError, OSError, ValueError) as error:
                report(f"vsaccade: skipped {path}: {one_line(error, path)}")
        return kept, predictions


def batches(items, size: int):
    batch = []
    for item in items:
        batch.append(item)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_paths(model, patterns: list[str], out_csv, policy: str | None = None, overlay_dir=None,
                  progress: bool = True, report=lambda text: print(text, file=sys.stderr), readers: int = 2,
                  batch_size: int = BATCH_SIZE, cluster=None, identity: dict | None = None) -> tuple[int, int]:
    """Predict every image the patterns name that OUT does not hold yet (`policy`: default the model's own,
    api.own_policy); returns (predicted, failed), over every process of `cluster` (torchrun: each takes its share
    of whole batches; the main one writes OUT). `identity` (checkpoint, policy, settings) is kept beside OUT
    (OUT.run.json): rows made by another identity are not reused, the run starts afresh."""
    from .atomic import write_csv, write_text
    from .distributed import Cluster

    cluster = cluster or Cluster()
    paths, out_csv, columns = expand_paths(patterns), Path(out_csv), header(model)
    run_file = out_csv.with_name(out_csv.name + ".run.json")
    fresh = identity is not None and (not run_file.exists() or json.loads(run_file.read_text()) != identity)
    done = {} if fresh else done_rows(out_csv, columns)
    todo = [path for path in paths if str(path) not in done]
    cluster.barrier()  # every process has read what was done before any writes more
    if fresh and cluster.is_main:
        for partial in out_csv.parent.glob(glob.escape(out_csv.name) + ".partial*"):
            partial.unlink()
        out_csv.unlink(missing_ok=True)
        write_text(run_file, json.dumps(identity, indent=2) + "\n")
    cluster.barrier()
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    mine = my_share(todo, batch_size, cluster)
    overlays = (Path(overlay_dir), {path: index for index, path in enumerate(paths, 1)}) if overlay_dir else None
    failed = predict_into(model, mine, partial_path(out_csv, cluster.rank), columns, policy, overlays,
                          progress and cluster.is_main, report, readers, batch_size)
    failed = int(cluster.sum(torch.tensor([failed]))[0])
    cluster.barrier()
    if cluster.is_main:
        rows = done_rows(out_csv, columns)
        write_csv(out_csv, columns, [rows[str(p)] for p in paths if str(p) in rows])
        for partial in out_csv.parent.glob(glob.escape(out_csv.name) + ".partial*"):
            partial.unlink()
    cluster.barrier()
    return len(todo) - failed, failed


def predict_into(model, paths: list, partial: Path, columns: list, policy: str, overlays, progress: bool, report,
                 readers: int, batch_size: int) -> int:
    """Predict `paths`, each row flushed to `partial` as it comes; returns how many could not be read."""
    from .show import draw_overlay

    failed = 0
    if partial.exists():  # a killed write may have cut its last row: cut the file back to the last whole one
        data = partial.read_bytes()
        with open(partial, "r+b") as handle:
            handle.truncate(data.rfind(b"\n") + 1)
    with open(partial, "a", newline="") as handle, \
            tqdm(total=len(paths), desc="predict", unit="img", disable=not progress) as bar:
        writer = csv.writer(handle)
        if handle.tell() == 0:
            writer.writerow(columns)
            handle.flush()
        for batch in batches(prefetched(model, paths, readers, depth=2 * batch_size + readers), batch_size):
            good = [(path, item) for path, item in batch if not isinstance(item, str)]
            for path, reason in ((p, i) for p, i in batch if isinstance(i, str)):
                report(f"vsaccade: skipped {path}: {reason}")
            good, predictions = predicted(model, good, policy, report)
            failed += len(batch) - len(good)
            for (path, item), prediction in zip(good, predictions):
                writer.writerow(values := row(model, path, prediction))
                if overlays:
                    caption = f"{model.config.heads[0]['name']}: {values[1]}"
                    draw_overlay(item.image, prediction.boxes, caption, overlays[0] / f"{path.stem}-{overlays[1][path]:05d}.png")
            handle.flush()
            bar.update(len(batch))
    return failed

