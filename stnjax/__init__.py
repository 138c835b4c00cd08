"""stnjax: spatial transformers for JAX.

Conventions, the same everywhere in the package:
  * Images are `[..., H, W, C]` and volumes `[..., D, H, W, C]` (channels last, any
    leading batch dims).
  * A sampling grid is `[..., Ho, Wo, 2]`; its last axis is `(x, y)` in normalized
    coordinates: -1 is the left/top edge, +1 the right/bottom edge. A volume's is
    `[..., Do, Ho, Wo, 3]`, `(x, y, z)`.
  * `align_corners` means exactly what it means in PyTorch (default False): with
    False, +-1 are the outer edges of the corner pixels; with True, their centres.
  * theta maps *output* coordinates to *input* coordinates (pull sampling), as
    `torch.nn.functional.affine_grid`: `[..., 2, 3]` affine or `[..., 3, 3]`
    projective (followed by the perspective divide); in 3-D `[..., 3, 4]` or
    `[..., 4, 4]`.
  * Pixel coordinates put the centre of pixel `(row, col)` at `(x, y) = (col, row)`.

Results match PyTorch's `affine_grid` and `grid_sample` with NCHW transposed to NHWC.
`map_coordinates` and the spline filters take scipy.ndimage's conventions instead
(no channel axis, coordinates as array indices) and match its results.
"""

from stnjax import linen
from stnjax import nnx
from stnjax import transforms
from stnjax.displacement import integrate_velocity
from stnjax.displacement import warp_flow
from stnjax.geometry import compose_theta
from stnjax.geometry import invert_theta
from stnjax.geometry import perspective_matrix
from stnjax.geometry import rotation_matrix
from stnjax.geometry import theta_from_boxes
from stnjax import geometry
from stnjax._heads import TransformOutput
from stnjax.grid import affine_grid
from stnjax.grid import normalized_to_pixel
from stnjax.grid import pixel_matrix_from_theta
from stnjax.grid import pixel_to_normalized
from stnjax.grid import theta_from_pixel_matrix
from stnjax.linen import SpatialTransformer
from stnjax.ndimage import map_coordinates
from stnjax.ndimage import spline_filter
from stnjax.ndimage import spline_filter1d
from stnjax.sampling import grid_sample
from stnjax.sampling import has_cpu_kernel
from stnjax.sampling import sample

__version__ = "0.1.0"

__all__ = [
    "SpatialTransformer",
    "TransformOutput",
    "affine_grid",
    "compose_theta",
    "geometry",
    "grid_sample",
    "has_cpu_kernel",
    "integrate_velocity",
    "invert_theta",
    "linen",
    "map_coordinates",
    "nnx",
    "normalized_to_pixel",
    "perspective_matrix",
    "pixel_matrix_from_theta",
    "pixel_to_normalized",
    "rotation_matrix",
    "sample",
    "spline_filter",
    "spline_filter1d",
    "theta_from_boxes",
    "theta_from_pixel_matrix",
    "transforms",
    "warp_flow",
]
