"""docs/configuration.md names every config field once, with its kind under the house rule."""

import dataclasses
import re
from pathlib import Path

from vsaccade.config import ModelConfig, ObjectiveConfig, TrainConfig

KINDS = {"part", "size", "wrapper", "loss term", "call argument", "stage", "task", "run"}
PAGE = Path(__file__).parent.parent / "docs" / "configuration.md"


def test_the_field_table_covers_every_field_once_with_a_known_kind():
    rows = re.findall(r"^\| (\w+)\.(\w+) \| ([\w ]+) \|", PAGE.read_text(), flags=re.M)
    named = [f"{section}.{name}" for section, name, _ in rows]
    assert len(named) == len(set(named)), "a field is listed twice"
    fields = {f"{section}.{f.name}" for section, config in (("model", ModelConfig), ("objective", ObjectiveConfig),
                                                            ("train", TrainConfig)) for f in dataclasses.fields(config)}
    assert set(named) == fields, {"missing": sorted(fields - set(named)), "unknown": sorted(set(named) - fields)}
    assert {kind for *_, kind in rows} <= KINDS


def test_every_removed_field_names_its_new_spelling():
    import pytest

    from vsaccade.config import REMOVED_MODEL_FIELDS, ConfigError
    from vsaccade.presets import resolve

    for name, now in REMOVED_MODEL_FIELDS.items():
        with pytest.raises(ConfigError, match=f"model.{name} was removed: use model."):
            resolve("tiny", [f"model.{name}=true"])
        assert f"`model.{name}" in PAGE.read_text()  # and the page's table of removed fields lists it
