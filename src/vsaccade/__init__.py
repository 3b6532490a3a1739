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
