"""Results as pages: docs/results.md is the regeneration of the summaries in docs/results/, and every summary holds
the fields a reader needs."""

from pathlib import Path

from vsaccade.cli import main
from vsaccade.results import FIELDS, read_summaries, render

ROOT = Path(__file__).parent.parent


def test_the_results_page_is_the_regeneration_of_its_summaries(tmp_path):
    summaries = read_summaries(ROOT / "docs" / "results")
    assert summaries and all(set(FIELDS) <= set(s) for s in summaries)
    assert (ROOT / "docs" / "results.md").read_text() == render(summaries, "docs/results")
    assert main(["results", str(ROOT / "docs" / "results"), "--out", str(tmp_path / "page.md")]) == 0
    assert main(["results", str(ROOT / "docs" / "results"), "--out", str(tmp_path / "page.md"), "--check"]) == 0
    (tmp_path / "page.md").write_text("edited by hand\n")
    assert main(["results", str(ROOT / "docs" / "results"), "--out", str(tmp_path / "page.md"), "--check"]) == 1


def test_the_public_api_is_what_the_readme_lists():
    import re

    import vsaccade

    section = (ROOT / "README.md").read_text().split("## Python API")[1].split("\n## ")[0]
    listed = {name for cell in re.findall(r"^\| ([^|]+) \|", section, flags=re.M) for name in re.findall(r"`(\w+)`", cell)}
    assert listed == set(vsaccade.__all__)
    assert all(hasattr(vsaccade, name) for name in vsaccade.__all__)


def test_seeds_combine_into_means_of_their_metrics_and_controls():
    from vsaccade.results import combine_seeds

    def seed(s, accuracy, random, prior=None):
        controls = {"random_glimpses": {"label": random}, **({"prior_glimpses": {"label": prior}} if prior else {})}
        return {"seeds": [s], "metrics": {"label": {"mean": accuracy, "each": [accuracy]}}, "controls": controls,
                "minutes": 1.0, "images_seen": 10}

    combined = combine_seeds([seed(0, 0.9, 0.3, 0.8), seed(1, 0.5, 0.2)], "two")
    assert combined["metrics"]["label"] == {"each": [0.9, 0.5], "mean": 0.7}
    assert combined["controls"] == {"random_glimpses": {"label": 0.25}}  # the prior control only seed 0 has is left out
    assert combined["seeds"] == [0, 1] and combined["minutes"] == 2.0 and combined["images_seen"] == 20
