"""6D rotation-representation baseline (6DRepNet)."""

from hpelib.methods.sixd.model import SixDNet
from hpelib.methods.sixd.module import SixD

__all__ = ["SixD", "SixDNet"]
