"""Out-of-plane rotation synthesis of real faces (OpNet Sec. 3.1, the 300W-LP recipe).

A face image with its rotation label and 68 3D landmarks becomes a textured height-field
mesh (landmarks, head ellipsoid, a background band blending into the untouched image), which
turns about the head centre and is re-rendered with a z-buffer; the new label is exactly
``delta @ R``.

* :mod:`.mesh`: :func:`build_face_mesh`, the head centre estimate.
* :mod:`.raster`: the pure-torch z-buffer rasterizer.
* :mod:`.views`: :func:`synthesize_view`, :func:`render_view`, :class:`PoseIncrement`.
* :mod:`.dataset`: :class:`OutOfPlaneViews`, the dataset wrapper.

See ``docs/synthesis_real.md``.
"""

from hpelib.data.synthesis.dataset import OutOfPlaneViews
from hpelib.data.synthesis.mesh import (
    FaceMesh,
    MeshError,
    build_face_mesh,
    estimate_head_centre,
    landmark_normals,
)
from hpelib.data.synthesis.raster import Raster, rasterize
from hpelib.data.synthesis.views import (
    INCREMENT_MODES,
    PoseIncrement,
    SynthesisError,
    render_view,
    synthesize_view,
)

__all__ = [
    "INCREMENT_MODES", "FaceMesh", "MeshError", "OutOfPlaneViews", "PoseIncrement", "Raster",
    "SynthesisError", "build_face_mesh", "estimate_head_centre", "landmark_normals",
    "rasterize", "render_view", "synthesize_view",
]  # fmt: skip
