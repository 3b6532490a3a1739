"""Results as pages: every reported run is a small summary JSON, and docs/results.md is generated from them.

A summary holds what a reader needs to trust a figure: the task, the preset or recipe, the seeds, the test metrics
(mean and each seed), the controls beside them, the supervision (labels or boxes), minutes, images seen, pixels
read per image (images.LargeImage's definition), the commit and the command. `vsaccade train` writes one into every
run directory (summary.json); `vsaccade results` renders a folder of them:

    vsaccade results docs/results --out docs/results.md          # regenerate the page
    vsaccade results docs/results --out docs/results.md --check  # exit 1 if the page is not the regeneration

Summaries converted from older raw files record that file and its commit under `source` ({"file", "commit"}). A
summary may also hold `measurements`, the other figures its pages quote (diagnostics, costs, baselines), as a table
{row: {column: value}}; a column's unit closes its name in brackets ("hit rate [%]", "latency [ms]", "ratio [x]"),
and a `[%]` column holds fractions, shown as percents like the metrics. A summary with no metrics is a measurement
set (a cost benchmark, a diagnostic): no results row, only its table. tests/test_results_pages.py checks that every
figure README.md and docs/benchmarks/ quote is one of these values.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

FIELDS = ("name", "task", "preset", "seeds", "metrics", "controls", "supervision", "minutes", "images_seen",
          "pixels_read", "commit", "command")
UNIT = re.compile(r"\s*\[([^\]]+)\]$")


def head_metrics(evaluation: dict) -> dict:
    """{head: first metric of that head (accuracy, or exact match)} of an evaluation's own glimpses."""
    return {head: next(iter(scores.values())) for head, scores in evaluation["model"]["heads"].items()}


def controls_of(evaluation: dict) -> dict:
    """{reference: {head: metric}}: the same model reading random or prior windows instead of its own."""
    return {key: {head: next(iter(scores.values())) for head, scores in value["heads"].items()}
            for key, value in evaluation.items() if key.endswith("_glimpses") and isinstance(value, dict)}


def summary_of_run(results: dict, name: str, preset: str, command: str) -> dict:
    """The summary of one `vsaccade train` run, from its results.json."""
    test = results["test"]
    objective = results["objective_config"]
    box_terms = ("location_weight", "search_weight", "box_glimpse_weight", "window_weight")
    return {
        "name": name, "task": results["task"].get("name", ""), "preset": preset, "seeds": [results["train_config"]["seed"]],
        "metrics": {head: {"mean": value, "each": [value]} for head, value in head_metrics(test).items()},
        "controls": controls_of(test), "supervision": "boxes" if any(objective.get(k) for k in box_terms) else "labels",
        "minutes": round(results["train_minutes"], 1), "images_seen": results["images_seen"],
        "pixels_read": test.get("pixels_read"), "commit": results.get("vsaccade_version", "").rpartition("+")[2],
        "command": command,
    }


def summary_of_evaluation(evaluation: dict, **fields) -> dict:
    """A summary from a `vsaccade evaluate --json` file (metrics, controls, pixels read) and the fields it lacks."""
    return {"metrics": {head: {"mean": value, "each": [value]} for head, value in head_metrics(evaluation).items()},
            "controls": controls_of(evaluation), "pixels_read": evaluation.get("pixels_read"), **fields}


def combine_seeds(summaries: list[dict], name: str) -> dict:
    """One summary of the same recipe run with several seeds: each metric's mean and each seed's value; each control
    the mean of the seeds' (a control some seed lacks is left out)."""
    first = summaries[0]
    metrics = {head: {"each": [s["metrics"][head]["each"][0] for s in summaries]} for head in first["metrics"]}
    for value in metrics.values():
        value["mean"] = sum(value["each"]) / len(value["each"])
    controls = {ref: {head: sum(s["controls"][ref][head] for s in summaries) / len(summaries) for head in heads}
                for ref, heads in first["controls"].items()
                if all(head in s["controls"].get(ref, {}) for s in summaries for head in heads)}
    return {**first, "name": name, "seeds": [s["seeds"][0] for s in summaries], "metrics": metrics, "controls": controls,
            "minutes": round(sum(s["minutes"] for s in summaries), 1),
            "images_seen": sum(s["images_seen"] for s in summaries)}


def write_summary(summary: dict, path) -> Path:
    missing = [f for f in FIELDS if f not in summary]
    if missing:
        raise ValueError(f"a summary needs {', '.join(missing)}")
    from .atomic import write_text

    return write_text(path, json.dumps(summary, indent=2) + "\n")


def read_summaries(folder) -> list[dict]:
    summaries = []
    from .config import ConfigError

    for path in sorted(Path(folder).glob("*.json")):
        try:
            summary = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise ConfigError(f"{path}: not JSON ({error})") from None
        missing = [f for f in FIELDS if f not in summary]
        if missing:
            raise ConfigError(f"{path}: not a summary (missing {', '.join(missing)})")
        summaries.append(summary)
    return summaries


def percent(value) -> str:
    return "-" if value is None else f"{100 * value:.1f}%"


def metric_text(metric: dict) -> str:
    each = metric["each"]
    return percent(metric["mean"]) + (f" ({', '.join(percent(v) for v in each)})" if len(each) > 1 else "")


def render(summaries: list[dict], folder: str) -> str:
    """The results page: one row per summary, label-only and box-supervised apart, each with its command."""
    lines = ["# Results", "",
             f"Generated by `vsaccade results {folder} --out docs/results.md` from the summary JSONs in `{folder}/`; do "
             "not edit by hand. Test-split figures, each from a split never used for selection: each head's accuracy "
             "(exact match for a multi-label head), the mean over seeds, then each seed. Controls: the first head "
             "when the same model reads random or prior windows instead of its own. Pixels read: per image, proxy "
             "and margins included (images.LargeImage).", ""]
    for supervision, title in (("labels", "Labels only"), ("boxes", "Box-supervised (a named variant, not the paper's method)")):
        rows = [s for s in summaries if s["supervision"] == supervision and s["metrics"]]
        if not rows:
            continue
        lines += [f"## {title}", "", "| result | task | preset / recipe | seeds | test | controls | minutes | images seen "
                  "| pixels read | commit |", "|---|---|---|---|---|---|---|---|---|---|"]
        for s in rows:
            head = next(iter(s["metrics"]))
            controls = "; ".join(f"{k.replace('_glimpses', '')} {percent(v.get(head))}" for k, v in s["controls"].items())
            pixels = "-" if s["pixels_read"] is None else f"{s['pixels_read']:,.0f}"
            images = "-" if s["images_seen"] is None else f"{s['images_seen']:,}"
            tested = ", ".join(f"{name} {metric_text(metric)}" for name, metric in s["metrics"].items())
            lines.append(f"| {s['name']} | {s['task']} | {s['preset']} | {', '.join(map(str, s['seeds']))} | "
                         f"{tested} | {controls or '-'} | {s['minutes'] or '-'} | "
                         f"{images} | {pixels} | {s['commit']} |")
        lines.append("")
    lines += ["## Commands", ""]
    for s in summaries:
        if s["metrics"]:
            lines.append(f"- {s['name']}: {provenance(s)}")
    measured = [s for s in summaries if s.get("measurements")]
    if measured:
        lines += ["", "## Measurements", "", "The other figures the benchmark pages quote, each set with its command. "
                  "Rates are percents; a column's unit is in brackets.", ""]
    for s in measured:
        lines += [f"### {s['name']}", "", provenance(s), ""] + measurement_table(s["measurements"]) + [""]
    return "\n".join(lines).rstrip("\n") + "\n"


def provenance(summary: dict) -> str:
    """The command, the raw file it was converted from (and its commit), and the note."""
    source = summary.get("source")
    converted = f" (converted from {source['file']} at {source['commit']})" if source else ""
    note = f" {summary['note']}" if summary.get("note") else ""
    return f"`{summary['command']}`{converted}.{note}"


def split_unit(column: str) -> tuple[str, str]:
    """("hit rate [%]") -> ("hit rate", "%"); a column without brackets has no unit."""
    match = UNIT.search(column)
    return (column[:match.start()], match.group(1)) if match else (column, "")


def value_text(value, unit: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    if unit == "%":
        return f"{100 * value:.2g}%" if 0 < abs(value) < 0.01 else percent(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.4g}"


def measurement_table(measurements: dict) -> list[str]:
    """Markdown tables of {row: {column: value}}: a row shares the current table when one's columns hold the other's."""
    tables: list[tuple[list, list]] = []
    for row, values in measurements.items():
        if tables and (set(values) <= set(tables[-1][0]) or set(tables[-1][0]) <= set(values)):
            tables[-1][0].extend(c for c in values if c not in tables[-1][0])
        else:
            tables.append((list(values), []))
        tables[-1][1].append(row)
    lines = []
    for columns, rows in tables:
        header = [name + (f" ({unit})" if unit else "") for name, unit in map(split_unit, columns)]
        lines += ([""] if lines else []) + ["| | " + " | ".join(header) + " |", "|---" * (len(columns) + 1) + "|"]
        for row in rows:
            values = measurements[row]
            cells = [value_text(values[c], split_unit(c)[1]) if c in values else "" for c in columns]
            lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines
