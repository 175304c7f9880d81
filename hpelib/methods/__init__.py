"""Head pose estimation methods; each is an :class:`HPEModule` subclass.

Use them by class path in YAML (``hpelib.methods.SixD``, ``hpelib.methods.clerf.CLERF``...)
or import them here.
"""

from hpelib.methods.base import HPEModule
from hpelib.methods.clerf import CLERF, CLERFSupervised
from hpelib.methods.lechpe import LECHPE, LECHPENet
from hpelib.methods.opnet import OpNet, OpNetModel
from hpelib.methods.rankpose import RankPose, RankPoseNet
from hpelib.methods.sixd import SixD, SixDNet

__all__ = [
    "CLERF",
    "CLERFSupervised",
    "HPEModule",
    "LECHPE",
    "LECHPENet",
    "OpNet",
    "OpNetModel",
    "RankPose",
    "RankPoseNet",
    "SixD",
    "SixDNet",
]
