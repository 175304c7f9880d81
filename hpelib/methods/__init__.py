"""Head pose estimation methods; each is an :class:`HPEModule` subclass."""

from hpelib.methods.base import HPEModule
from hpelib.methods.sixd import SixD, SixDNet

__all__ = ["HPEModule", "SixD", "SixDNet"]
