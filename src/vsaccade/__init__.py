"""vsaccade: Variational Saccading for images too large to look at all at once.

    model = vsaccade.create_model("saccader", glimpses=4)   # a registered model from ModelConfig fields
    model = vsaccade.load("runs/x/best.pt")                  # a checkpoint alone rebuilds its model
    prediction = vsaccade.predict(model, image)              # probabilities and glimpse boxes in pixels
"""

from . import tasks  # noqa: F401  (registers the tasks)
from .api import Prediction, predict  # noqa: F401
from .checkpoint import load  # noqa: F401
from .checkpoint import CheckpointError  # noqa: F401
from .config import ConfigError  # noqa: F401
from .images import ArrayImage, ImageError, LargeImage  # noqa: F401
from .model import create_model  # noqa: F401
from .tasks import cluttered as _cluttered  # noqa: F401  (registers the tasks)
from .tasks import megapixel as _megapixel  # noqa: F401
from .tasks import folder as _folder  # noqa: F401
from .tasks import counting as _counting  # noqa: F401

__version__ = "0.1.0"

# The public API (README, "Python API"): what experiments and users build on. Everything else may change.
from .config import ModelConfig, ObjectiveConfig, TrainConfig  # noqa: E402
from .evaluate import evaluate  # noqa: E402
from .file_images import FileImage  # noqa: E402  (pyvips is needed only to open a file)
from .images import UpsampledImage  # noqa: E402
from .instruments import Instrument  # noqa: E402
from .model.classifier import any_object_log_probs  # noqa: E402
from .model.glimpse_sampler import sample_glimpses  # noqa: E402
from .model.locations import CellMixture, mixture_kl  # noqa: E402
from .objective import Objective  # noqa: E402
from .model.proxy_attention import ProxyAttention  # noqa: E402
from .presets import resolve  # noqa: E402
from .proxy_cache import cached_proxies  # noqa: E402
from .recipes import Recipe, Stage, run_recipe  # noqa: E402
from .results import render as render_results, summary_of_run  # noqa: E402
from .tasks import collate, make_task  # noqa: E402
from .train import model_config_for, train  # noqa: E402

__all__ = ["ArrayImage", "CellMixture", "CheckpointError", "ConfigError", "FileImage", "ImageError", "Instrument",
           "LargeImage", "ModelConfig", "Objective", "ObjectiveConfig", "Prediction", "ProxyAttention", "Recipe",
           "Stage", "TrainConfig", "UpsampledImage", "any_object_log_probs", "cached_proxies", "collate", "create_model",
           "evaluate", "load", "make_task", "mixture_kl", "model_config_for", "predict", "render_results", "resolve",
           "run_recipe", "sample_glimpses", "summary_of_run", "train"]
