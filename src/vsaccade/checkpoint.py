"""Checkpoints: plain data and tensors only (loadable with torch.load(weights_only=True)), written atomically.

Schema (version 1):
    schema_version: int         model_name: str           model_config: dict (ModelConfig fields)
    objective_config: dict      train_config: dict        task: dict (the task's describe(), digit source included)
    state_dict: {name: tensor}  epoch: int                step_in_epoch: int   global_step: int  images_seen: int
    best_validation: float      optimizer: dict | absent  rng: dict | absent   metrics: dict
    training runs add: epoch_sums (the epoch's running metric sums), skipped_steps, scheduler {name, lr},
    data_order {seed, epoch, step_in_epoch, batch_size, processes} (the order itself is a function of seed, epoch)
A checkpoint alone rebuilds its model: `vsaccade.load(path)`. Small trained checkpoints ship with the package
under vsaccade/pretrained/ and are loaded by name (`vsaccade.load("megapixel")`, `vsaccade evaluate megapixel`).
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path

import torch

from . import faults

SCHEMA_VERSION = 1
BUNDLED = Path(__file__).parent / "pretrained"


class CheckpointError(ValueError):
    """A file that is not a usable vsaccade checkpoint."""


def save_checkpoint(payload: dict, path) -> None:
    """Write `payload` to `path` atomically: a temporary file in the same folder, fsynced, then renamed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"schema_version": SCHEMA_VERSION, **payload}
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; a checkpoint gets the usual permissions
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(payload, handle)
            handle.flush()
            faults.inside_checkpoint_write()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def remove_stale_temporaries(folder) -> list[Path]:
    """Delete the temporary files of checkpoint writes that never finished (a killed run); returns them."""
    stale = [p for p in Path(folder).glob("*.pt.*.tmp") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return stale


def load_tensors(path: Path, what: str):
    """torch.load(weights_only=True) on CPU, or a CheckpointError naming the file as an unreadable `what`."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (RuntimeError, pickle.UnpicklingError, zipfile.BadZipFile, EOFError, OSError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path} is not a readable {what} ({reason[:200]})") from None


def read_checkpoint(path) -> dict:
    """Load and validate a checkpoint's payload, or raise CheckpointError naming the problem."""
    path = resolve_checkpoint(path)
    payload = load_tensors(path, "vsaccade checkpoint")
    if not isinstance(payload, dict) or "schema_version" not in payload or "model_config" not in payload:
        raise CheckpointError(f"{path} is not a vsaccade checkpoint (no schema_version/model_config)")
    if payload["schema_version"] != SCHEMA_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint schema version {payload['schema_version']}; this vsaccade reads version {SCHEMA_VERSION}"
        )
    return payload


def bundled_checkpoints() -> list[str]:
    return sorted(p.stem for p in BUNDLED.glob("*.pt"))


def resolve_checkpoint(name_or_path) -> Path:
    """A checkpoint file's path, or the name of a bundled checkpoint -> its path."""
    path = Path(name_or_path)
    if path.is_file():
        return path
    bundled = BUNDLED / f"{name_or_path}.pt"
    if path.parent == Path(".") and not path.suffix and bundled.is_file():
        return bundled
    raise CheckpointError(f"checkpoint not found: {path} (bundled checkpoints: {', '.join(bundled_checkpoints()) or 'none'})")


# Parameters removed from the models because they cannot change any output; checkpoints written before carry them.
REMOVED_PARAMETERS = ("locations.cell_score.bias",)  # added to every cell logit alike: invisible to the softmax


# Where the saccader's parts keep their weights now, by the prefix they had before the model was built from parts.
RENAMED_PREFIXES = {"proxy_attention.": "anchor.attention.", "glimpse_encoder.": "reader.encoder.",
                    "reader.": "reader.separate."}


def upgrade_state_dict(state: dict) -> dict:
    """A state dict in today's names: one written before the model was built from parts (it has `glimpse_encoder.`
    or `proxy_attention.` tensors) has every old prefix renamed, each key once; others are returned unchanged."""
    if not any(k.startswith(("glimpse_encoder.", "proxy_attention.")) for k in state):
        return state
    renamed = {}
    for key, value in state.items():
        old = next((prefix for prefix in RENAMED_PREFIXES if key.startswith(prefix)), None)
        renamed[RENAMED_PREFIXES[old] + key[len(old):] if old else key] = value
    return renamed


def without_untrained_heads(state: dict, model_config: dict, own: dict) -> dict:
    """A readout=any checkpoint's tensors less the classifier heads it kept but never trained (the fit-reader stage
    swaps readout on a model built with them), where the model loading them has none."""
    if model_config.get("readout") != "any":
        return state
    return {k: v for k, v in state.items() if not k.startswith("classifier.") or k in own}


def model_from_checkpoint(payload: dict, path="checkpoint"):
    """Rebuild the model a checkpoint describes and load its weights."""
    from .config import ConfigError, ModelConfig, upgrade_model_fields
    from .model import create_model

    try:  # through ModelConfig: a baseline saved with the saccader's fields too (before it had its own) keeps its own
        config = ModelConfig.from_dict({"architecture": payload.get("model_name", "saccader"),
                                        **upgrade_model_fields(payload["model_config"])})
        model = create_model(**config.to_dict())
    except (ConfigError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot rebuild its model: {error}") from None
    state = {k: v for k, v in upgrade_state_dict(payload["state_dict"]).items() if k not in REMOVED_PARAMETERS}
    own = model.state_dict()
    if not any(k.startswith("reader.") for k in own):  # the no-glimpse control reads nothing
        state = {k: v for k, v in state.items() if not k.startswith("reader.")}
    state = without_untrained_heads(state, payload["model_config"], own)
    try:
        model.load_state_dict(state)
    except (RuntimeError, KeyError) as error:
        first = str(error).strip().splitlines()[0]
        raise CheckpointError(f"{path}: weights do not match its model config ({first[:200]})") from None
    return model


def optimizer_state(payload: dict, model, path="checkpoint") -> dict:
    """The saved optimiser state, mapped onto `model`'s parameters by name where their order changed: a run written
    before the model was built from parts kept its parameters in another order, and some a model no longer builds
    (the no-glimpse control's glimpse encoder; readout=any's classifier heads), whose state is dropped."""
    state = payload["optimizer"]
    buffers = {name for name, _ in model.named_buffers()}  # in the state dict, not the optimiser's (batch norm's)
    saved = [name for name in upgrade_state_dict(payload["state_dict"]) if name not in buffers]
    params = dict(model.named_parameters())
    if saved == list(params):
        return state
    groups = state["param_groups"]
    if len(groups) != 1 or len(groups[0]["params"]) != len(saved) or set(params) - set(saved):
        raise CheckpointError(f"{path}: its optimiser state does not map onto this model's parameters; start a new run "
                              f"from its weights (--set train.init_weights={path})")
    index = {name: i for i, name in enumerate(saved)}
    mapped = {}
    for new, (name, parameter) in enumerate(params.items()):
        old = state["state"].get(groups[0]["params"][index[name]])
        if old is not None:
            if any(torch.is_tensor(v) and v.dim() and v.shape != parameter.shape for v in old.values()):
                raise CheckpointError(f"{path}: the optimiser state of {name} has another shape than the parameter")
            mapped[new] = old
    return {"state": mapped, "param_groups": [{**groups[0], "params": list(range(len(params)))}]}


def load_initial_weights(model, path) -> int:
    """Copy a file's tensors into `model` before training (`train.init_weights`): a vsaccade checkpoint or a bare
    state dict in the model's names (e.g. a `pretrain-reader` recipe stage's weights.pt: a pre-trained glimpse
    encoder). Each tensor must match a model parameter or buffer by name and shape; the model's other tensors keep
    their fresh values. Returns how many were copied."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"initial weights not found: {path}")
    payload = load_tensors(path, "weights file")
    state = payload.get("state_dict", payload) if isinstance(payload, dict) else None
    if not isinstance(state, dict) or not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} holds no state dict (a dict of tensors, or a checkpoint with one)")
    state = upgrade_state_dict(state)
    own = model.state_dict()
    state = without_untrained_heads(state, payload.get("model_config", {}), own)
    for name, tensor in state.items():
        if name not in own:
            raise CheckpointError(f"{path}: {name} is not a tensor of this model")
        if own[name].shape != tensor.shape:
            raise CheckpointError(f"{path}: {name} has shape {tuple(tensor.shape)}, the model's {tuple(own[name].shape)}")
    model.load_state_dict(state, strict=False)
    return len(state)


TRAINING_ONLY = ("optimizer", "rng")
# Model fields that change where the model looks but not its weights: settable on a trained model.
TEST_TIME_FIELDS = ("inhibit", "centroid", "window_shift", "anchor_weight", "s_min", "s_max", "readout", "background",
                    "proxy_padding")
# mean -> any keeps the trained weights (the per-glimpse heads read instead); any -> mean is refused (a model built
# with readout=any has no classifier heads for them); "count" builds other parameters
SWAPPABLE_READOUTS = ("mean", "any")


def with_test_time_settings(model, overrides: list[str]):
    """Apply `model.FIELD=VALUE` overrides of TEST_TIME_FIELDS to a loaded model; returns the model."""
    from .config import BASELINE_FIELDS, REMOVED_MODEL_FIELDS, ConfigError
    from .presets import parse_value

    changes, own = {}, BASELINE_FIELDS.get(model.config.architecture)
    for item in overrides or []:
        key, sep, value = item.partition("=")
        section, _, name = key.partition(".")
        if section == "model" and name in REMOVED_MODEL_FIELDS:
            raise ConfigError(f"model.{name} was removed: use {REMOVED_MODEL_FIELDS[name]}")
        if not sep or section != "model" or name not in TEST_TIME_FIELDS or (own and name not in own):
            raise ConfigError(f"cannot set {item!r} on a trained model; settable: "
                              f"{', '.join('model.' + f for f in TEST_TIME_FIELDS if not own or f in own) or 'none'}")
        changes[name] = parse_value(value)
    if changes.get("readout", model.config.readout) != model.config.readout and \
            {changes["readout"], model.config.readout} - set(SWAPPABLE_READOUTS):
        raise ConfigError(f"cannot change readout from {model.config.readout!r} to {changes['readout']!r} on a trained "
                          f"model; only between {' and '.join(SWAPPABLE_READOUTS)}")
    if changes:
        model.config = model.config.replace(**changes)
        if hasattr(model, "checkpoint"):
            model.checkpoint["test_time_settings"] = {**model.checkpoint.get("test_time_settings", {}), **changes}
    return model  # what `export_checkpoint` drops: needed to resume, not to predict


def export_checkpoint(source, destination, overrides: list[str] = ()) -> Path:
    """Copy a checkpoint without its training-only state (optimiser, RNG), e.g. to ship it, optionally with
    test-time settings (`model.inhibit=cell+window`, recorded under test_time_settings); returns the path."""
    payload = read_checkpoint(source)
    model = with_test_time_settings(model_from_checkpoint(payload, source), list(overrides))
    slim = {k: v for k, v in payload.items() if k not in TRAINING_ONLY and k != "schema_version"}
    if overrides:
        from .config import upgrade_model_fields

        saved = upgrade_model_fields(payload["model_config"])
        changed = {k: v for k, v in model.config.to_dict().items() if saved.get(k) != v}
        slim["model_config"] = model.config.to_dict()
        slim["test_time_settings"] = {**payload.get("test_time_settings", {}), **changed}
    save_checkpoint(slim, destination)
    return Path(destination)


def load(path, device: str = "cpu", settings=()):
    """Load a model from a checkpoint file, in eval mode; `model.checkpoint` keeps the plain-data metadata.
    `settings`: test-time settings, as `vsaccade evaluate --set` takes them (e.g. ["model.inhibit=cell"])."""
    payload = read_checkpoint(path)
    model = model_from_checkpoint(payload, path).to(device).eval()
    model.checkpoint = {k: v for k, v in payload.items() if k not in ("state_dict", *TRAINING_ONLY)}
    return with_test_time_settings(model, list(settings))
