"""jaxlm: a functional Transformer model zoo in JAX.

Models are data plus pure functions: ``spec(cfg)`` declares parameters, ``init(key, cfg)`` draws them,
``apply(params, inputs, cfg, ...)`` runs the model. Parameter trees are plain nested dicts of arrays.
"""

from jaxlm import platforms

platforms.skip_absent_tpu()  # before any backend starts: no libtpu start-up on a machine without a TPU

from jaxlm import config, distributed, generate, models, nn, parallel, params, sharding  # noqa: E402
from jaxlm.models import get  # noqa: E402
from jaxlm.params import Param, abstract, count, init  # noqa: E402

__version__ = "0.1.0"

__all__ = ["Param", "abstract", "config", "count", "distributed", "generate", "get", "init", "models", "nn", "parallel",
           "params", "sharding"]
