"""6D rotation-representation baseline (6DRepNet)."""

from hpelib.methods.sixd.model import SixDNet
from hpelib.methods.sixd.module import SIXD_LOSSES, SixD

__all__ = ["SIXD_LOSSES", "SixD", "SixDNet"]
