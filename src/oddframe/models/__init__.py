"""Model families. Importing this package registers every model (see :mod:`oddframe.registry`)."""

from oddframe.models.base import AnomalyModel
from oddframe.models import conv3d_ae, convlstm_ae  # noqa: F401
from oddframe.models import diffusion_infill  # noqa: F401
from oddframe.models import mamba_diffusion  # noqa: F401
from oddframe.models import fusion, graph_oneclass  # noqa: F401

__all__ = ["AnomalyModel"]
