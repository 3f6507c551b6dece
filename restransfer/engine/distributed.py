"""Moved to :mod:`restransfer.distributed` (a foundation module); this name keeps old imports working."""

from ..distributed import *  # noqa: F401,F403
from ..distributed import __all__  # noqa: F401
