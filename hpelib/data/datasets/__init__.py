"""File-based head pose datasets; every item is a sample dict (:mod:`hpelib.data.sample`).

============================  =============================  ======================================
registry name(s)              class                          data
============================  =============================  ======================================
``300wlp``, ``300w_lp``       :class:`Pose300WLP`            300W-LP folders of ``.jpg`` + ``.mat``
``aflw2000``                  :class:`AFLW2000`              AFLW2000-3D (99-degree filter on by default)
``biwi``, ``biwi_raw``        :class:`BIWIRaw`               raw BIWI ``hpdb`` (subject-wise splits)
``biwi_npz``                  :class:`BIWINpz`               FSA-Net's BIWI ``.npz`` files
``opnet_h5``                  :class:`OpNetHDF5`             OpNet/OpenTrack HDF5 files
``table``, ``csv``            :class:`PoseTable`             generic CSV/parquet table + images
``folder``, ``image_folder``  :class:`ImageFolderDataset`    unlabelled images, prediction only
============================  =============================  ======================================

Use :func:`build_dataset` (``build_dataset("aflw2000", root=...)``) or the classes directly;
add datasets with :func:`register_dataset`. How to prepare each dataset: ``docs/datasets.md``.
"""

from hpelib.data.datasets.aflw2000 import AFLW2000
from hpelib.data.datasets.base import (
    CROP_RULES,
    CropRule,
    DatasetError,
    IndexedPoseDataset,
    aflw2000_filter_mask,
    crop_rule_6drepnet,
    crop_rule_full,
    crop_rule_tight,
    decode_image,
    landmark_box,
)
from hpelib.data.datasets.biwi import BIWINpz, BIWIRaw, biwi_subject_split
from hpelib.data.datasets.folder import ImageFolderDataset
from hpelib.data.datasets.index_cache import cached_index, default_cache_dir
from hpelib.data.datasets.opnet_h5 import OpNetHDF5
from hpelib.data.datasets.registry import DATASETS, build_dataset, register_dataset
from hpelib.data.datasets.table import PoseTable, read_table
from hpelib.data.datasets.w300lp import Pose300WLP, read_3ddfa_mat

__all__ = [
    "AFLW2000",
    "BIWINpz",
    "BIWIRaw",
    "CROP_RULES",
    "CropRule",
    "DATASETS",
    "DatasetError",
    "ImageFolderDataset",
    "IndexedPoseDataset",
    "OpNetHDF5",
    "Pose300WLP",
    "PoseTable",
    "aflw2000_filter_mask",
    "biwi_subject_split",
    "build_dataset",
    "cached_index",
    "crop_rule_6drepnet",
    "crop_rule_full",
    "crop_rule_tight",
    "decode_image",
    "default_cache_dir",
    "landmark_box",
    "read_3ddfa_mat",
    "read_table",
    "register_dataset",
]
