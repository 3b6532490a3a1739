"""The model pieces, one file each; saccader.py wires them into the Variational Saccading model."""

from .registry import MODELS, create_model, model_outputs, register_model  # noqa: F401
from .saccader import VariationalSaccader  # noqa: F401
from . import baselines  # noqa: F401,E402  (registers "fullres" and "proxy")
from . import ats  # noqa: F401,E402  (registers "ats")
from . import ips  # noqa: F401,E402  (registers "ips")
from . import resnet  # noqa: F401,E402  (registers "resnet18" and "resnet18-224")
