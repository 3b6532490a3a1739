"""Every figure README.md and the benchmark pages quote comes from a summary JSON in docs/results/ (a page's, from
the summaries it links; README's, from any), and no page links to a file that is gone.

A *figure* is
- a percentage: a number, with or without decimals, followed by "%" (97.8%, 0.27%, 79%). A range's upper end
  ("5-20%", "8-9%": a setting or a span) is not one: the character before the number may not be a letter, digit,
  ".", "," or "-";
- a decimal number followed by a unit of time, memory, compute, speed or ratio: ms, s, seconds, min, minutes, h,
  hours, MB, MiB, G, GFLOP, images/s, x (21.1 ms, +38.6 MB, 36.8x, 22.6 minutes). Integers with a unit (20 repeats,
  6,144 pixels, 88 seconds) are counts or settings, not figures;
- in a table of a docs/benchmarks/ page, a decimal number alone in a cell, bold or not, with or without a bracketed
  spread ("13.4", "**31.0**", "22.7 [0.7]", "0.23").

A percentage with d decimals is quoted from a summary when 100 x v, written with d decimals, is that number for some
test metric (mean or each seed), control, or `[%]` measurement v of a summary. A number with a unit: for a
measurement v in a column of that unit (a summary's `minutes` counts as min), v written with d decimals. A number in
a table cell: for any number v of a summary, v or 100 x v written with d decimals.
"""

import json
import re
from pathlib import Path

from vsaccade.results import read_summaries, split_unit

ROOT = Path(__file__).parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs" / "benchmarks").glob("*.md"))]
UNITS = {"ms": "ms", "s": "s", "seconds": "s", "min": "min", "minutes": "min", "h": "h", "hours": "h", "MB": "MB",
         "MiB": "MiB", "G": "G", "GFLOP": "G", "images/s": "images/s", "x": "x"}
PERCENT = re.compile(r"(?<![\w.,-])(\d[\d,]*(?:\.\d+)?)%")
WITH_UNIT = re.compile(r"(?<![\w.,])\+?(\d[\d,]*\.\d+) ?"
                       r"(images/s|GFLOP|G|MiB|MB|minutes|min|hours|h|seconds|ms|s|x)(?![\w/])")
CELL = re.compile(r"^\**\+?(\d[\d,]*\.\d+)\**(?: \[(\d[\d,]*\.\d+)\])?$")


def numbers(value):
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return []
    if isinstance(value, (int, float)):
        return [float(value)]
    if isinstance(value, dict):
        return [n for v in value.values() for n in numbers(v)]
    if isinstance(value, list):
        return [n for v in value for n in numbers(v)]
    return []


def quoted_values(summaries):
    """(percent values, {unit: values}, every number) of the summaries."""
    percents, units, every = [], {"min": []}, []
    for s in summaries:
        percents += numbers(s["metrics"]) + numbers(s["controls"])
        units["min"] += numbers(s["minutes"])
        every += numbers(s["minutes"]) + numbers(s["images_seen"]) + numbers(s["pixels_read"])
        for row in s.get("measurements", {}).values():
            for column, value in row.items():
                unit = split_unit(column)[1]
                (percents if unit == "%" else units.setdefault(unit, [])).extend(numbers(value))
                every += numbers(value)
    every += [100 * v for v in percents]
    return percents, units, every


def written(values, decimals, scale=1.0):
    return {f"{scale * v:.{decimals}f}" for v in values}


def decimals_of(text):
    return len(text.partition(".")[2])


def unquoted_figures(text, path, percents, units, every):
    """'path:line: figure (rule)' for every figure of the page that is in no summary."""
    missing = []
    for number, line in enumerate(text.splitlines(), 1):
        where = f"{path}:{number}"
        for match in PERCENT.finditer(line):
            figure = match.group(1).replace(",", "")
            if figure not in written(percents, decimals_of(figure), 100):
                missing.append(f"{where}: {match.group(0)} (a percentage: no metric, control or [%] measurement)")
        for match in WITH_UNIT.finditer(line):
            figure, unit = match.group(1).replace(",", ""), UNITS[match.group(2)]
            if figure not in written(units.get(unit, []), decimals_of(figure)):
                missing.append(f"{where}: {match.group(0)} (no measurement in [{unit}])")
        if path.startswith("docs/benchmarks/") and line.startswith("|"):
            for cell in line.strip().strip("|").split("|"):
                found = CELL.match(cell.strip())
                for figure in [g.replace(",", "") for g in (found.groups() if found else ()) if g]:
                    if figure not in written(every, decimals_of(figure)):
                        missing.append(f"{where}: {cell.strip()} (a table cell: no number of a summary)")
    return missing


SUMMARY_LINK = re.compile(r"results/([\w.-]+\.json)")


def summaries_of(page: Path, summaries: dict) -> list:
    """The summaries a benchmark page links (its figures must come from those); README's: all of them."""
    if page.name == "README.md":
        return list(summaries.values())
    return [summaries[name] for name in sorted(set(SUMMARY_LINK.findall(page.read_text()))) if name in summaries]


def test_every_figure_of_the_readme_and_the_benchmark_pages_comes_from_a_summary():
    folder = ROOT / "docs" / "results"
    summaries = {path.name: json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))}
    assert len(summaries) == len(read_summaries(folder))
    missing = []
    for page in PAGES:
        linked = summaries_of(page, summaries)
        assert linked, f"{page.relative_to(ROOT)} links no summary in docs/results/"
        missing += unquoted_figures(page.read_text(), str(page.relative_to(ROOT)), *quoted_values(linked))
    assert not missing, "figures quoted from no summary JSON the page links:\n" + "\n".join(missing)


def test_the_figure_check_fails_on_a_figure_no_summary_holds():
    summaries = [{"metrics": {"digit": {"mean": 0.978, "each": [0.978]}}, "controls": {}, "minutes": 22.6,
                  "images_seen": None, "pixels_read": None,
                  "measurements": {"ours": {"latency [ms]": 21.14, "hit rate [%]": 0.0027, "ratio [x]": 36.81}}}]
    values = quoted_values(summaries)
    good = ("97.8% and 98% in 22.6 minutes, 21.1 ms, 0.27%, 36.8x; 5-20% is a range\n"
            "| row | 97.8 | **21.14** [36.8] |\n")
    assert unquoted_figures(good, "docs/benchmarks/page.md", *values) == []
    bad = "97.7%\n21.2 ms\n36.8 ms\n| row | 21.3 |\n"
    missing = unquoted_figures(bad, "docs/benchmarks/page.md", *values)
    assert [m.split(": ")[0] for m in missing] == [f"docs/benchmarks/page.md:{n}" for n in (1, 2, 3, 4)]
    assert "97.7%" in missing[0] and "21.2 ms" in missing[1] and "[ms]" in missing[2] and "21.3" in missing[3]


LINK = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
MENTION = re.compile(r"docs/benchmarks/[\w./-]*\w")


def test_no_page_links_to_a_file_that_is_gone():
    """Relative links of README.md and docs/ resolve; every docs/benchmarks/ path that README, docs, src and tests
    name exists (the summaries' `source` fields name removed raw files on purpose: git keeps them)."""
    gone = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        for number, line in enumerate(page.read_text().splitlines(), 1):
            for target in LINK.findall(line):
                if "://" not in target and not (page.parent / target).exists():
                    gone.append(f"{page.relative_to(ROOT)}:{number}: link to {target}")
    files = [ROOT / "README.md", *(ROOT / "docs").rglob("*.md"), *(ROOT / "src").rglob("*.py"),
             *(ROOT / "tests").rglob("*.py")]
    for path in files:
        if path.name == "results.md" or path == Path(__file__):
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            for mention in MENTION.findall(line):
                if not (ROOT / mention).exists():
                    gone.append(f"{path.relative_to(ROOT)}:{number}: names {mention}")
    assert not gone, "\n".join(gone)


def test_every_summary_names_its_source_commit_and_measurements_are_tables():
    for path in sorted((ROOT / "docs" / "results").glob("*.json")):
        summary = json.loads(path.read_text())
        assert re.fullmatch(r"[0-9a-f]{7,40}", summary["commit"]), path
        if "source" in summary:
            assert set(summary["source"]) == {"file", "commit"}, path
            assert re.fullmatch(r"[0-9a-f]{7,40}", summary["source"]["commit"]), path
        for row, values in summary.get("measurements", {}).items():
            assert isinstance(values, dict) and values, f"{path}: {row}"
            for column, value in values.items():
                assert value is None or isinstance(value, (int, float, str)), f"{path}: {row} / {column}"
                if split_unit(column)[1] == "%" and isinstance(value, (int, float)):
                    assert 0 <= value <= 1, f"{path}: {row} / {column}: a [%] column holds fractions"
