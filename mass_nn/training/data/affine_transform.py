"""One random affine warp (per-axis scale, rotation, shear; no translation) of an image and its masks together.

batchgenerators' SpatialTransform has no shear, hence this transform. The output grid is the patch, centred on
the input crop, so "warp the crop, then centre-crop the margin away" is done in one step; without the warp it
is a plain centre crop. The image is sampled linearly, the masks by nearest neighbour: the sampling coordinates
are rounded once and all K masks are gathered with one vectorised take (much faster than K map_coordinates
calls).
Everything sampled from outside the crop is 0.
"""
from __future__ import annotations

import numpy as np
from batchgenerators.augmentations.utils import (create_matrix_rotation_x_3d, create_matrix_rotation_y_3d,
                                                 create_matrix_rotation_z_3d, create_zero_centered_coordinate_mesh)
from batchgenerators.transforms.abstract_transforms import AbstractTransform
from scipy.ndimage import map_coordinates


def random_affine_matrix(scale_range: tuple[float, float], rotation_degrees: float, shear: float) -> np.ndarray:
    """A 3x3 matrix rotation @ shear @ diag(scale) drawn from the global `np.random` state.

    It maps centred output coordinates to centred input coordinates, so a scale above 1 samples a larger region
    (zoom out). Scales are drawn per axis, angles uniformly in +-rotation_degrees per axis, and each of the six
    off-diagonal shear factors uniformly in +-shear.
    """
    scales = np.random.uniform(scale_range[0], scale_range[1], size=3)
    angles = np.deg2rad(np.random.uniform(-rotation_degrees, rotation_degrees, size=3))
    shear_matrix = np.eye(3)
    if shear > 0:
        off_diagonal = ~np.eye(3, dtype=bool)
        shear_matrix[off_diagonal] = np.random.uniform(-shear, shear, size=6)
    rotation = create_matrix_rotation_x_3d(angles[0], create_matrix_rotation_y_3d(
        angles[1], create_matrix_rotation_z_3d(angles[2])))
    return rotation @ shear_matrix @ np.diag(scales)


def sampling_coordinates(matrix: np.ndarray, centred_mesh: np.ndarray, input_shape) -> np.ndarray:
    """Input voxel coordinates (3, N) of the output grid `centred_mesh` (3, N) warped by `matrix`."""
    centre = (np.asarray(input_shape, dtype=np.float64) - 1.0) / 2.0
    # einsum: a (3, 3) @ (3, N) matmul goes through BLAS, which is slow for an inner dimension of 3
    return np.einsum("ij,jn->in", matrix, centred_mesh) + centre[:, None]


def warp_image(image: np.ndarray, coordinates: np.ndarray, output_shape) -> np.ndarray:
    """Linear interpolation of every channel of `image` (c, z, y, x) at `coordinates` (3, N); outside is 0."""
    out = np.empty((image.shape[0], int(np.prod(output_shape))), dtype=np.float32)
    for channel in range(image.shape[0]):
        # grid-constant interpolates towards the 0 outside, so the image fades to half its value exactly where
        # rounding (the masks) switches from the last voxel to outside; "constant" cuts it half a voxel earlier
        map_coordinates(image[channel], coordinates, output=out[channel], order=1, mode="grid-constant",
                        cval=0.0)
    return out.reshape(image.shape[0], *output_shape)


def warp_masks_nearest(masks: np.ndarray, coordinates: np.ndarray, output_shape) -> np.ndarray:
    """Nearest-neighbour sampling of all masks (k, z, y, x) at `coordinates` (3, N) at once; outside is 0."""
    spatial = np.asarray(masks.shape[1:])
    indices = np.rint(coordinates).astype(np.intp)
    inside = np.all((indices >= 0) & (indices < spatial[:, None]), axis=0)
    # clipped indices keep the gather in bounds; the voxels they stand for outside are zeroed after it
    flat = np.ravel_multi_index(tuple(np.clip(indices, 0, spatial[:, None] - 1)), tuple(spatial))
    out = np.take(masks.reshape(masks.shape[0], -1), flat, axis=1)
    out *= inside.astype(out.dtype)
    return out.reshape(masks.shape[0], *output_shape)


def centre_crop(array: np.ndarray, output_shape) -> np.ndarray:
    """The centred `output_shape` window of the last three axes of `array` (inputs are never smaller)."""
    starts = [(s - o) // 2 for s, o in zip(array.shape[-3:], output_shape)]
    window = tuple(slice(a, a + o) for a, o in zip(starts, output_shape))
    return array[(Ellipsis, *window)]


class ViewAffineTransform(AbstractTransform):
    """With `probability` per sample, warp image and masks of one view by a random affine; always crop to patch.

    Reads `data_dict[image_key]` (b, c, *crop) and `data_dict[masks_key]` (b, k, *crop) and replaces them with
    (b, c, *patch) float32 and (b, k, *patch) of the masks' dtype. The crop must be at least the patch per axis.
    """

    def __init__(self, patch_size_zyx, probability: float, scale_range: tuple[float, float],
                 rotation_degrees: float, shear: float, image_key: str, masks_key: str):
        self.patch_size = tuple(int(p) for p in patch_size_zyx)
        self.probability = probability
        self.scale_range = tuple(scale_range)
        self.rotation_degrees = rotation_degrees
        self.shear = shear
        self.image_key = image_key
        self.masks_key = masks_key
        self._mesh = create_zero_centered_coordinate_mesh(self.patch_size).reshape(3, -1)

    def __call__(self, **data_dict):
        images, masks = data_dict[self.image_key], data_dict[self.masks_key]
        batch = images.shape[0]
        out_images = np.empty((batch, images.shape[1], *self.patch_size), dtype=np.float32)
        out_masks = np.empty((batch, masks.shape[1], *self.patch_size), dtype=masks.dtype)
        for b in range(batch):
            if np.random.uniform() < self.probability:
                matrix = random_affine_matrix(self.scale_range, self.rotation_degrees, self.shear)
                coordinates = sampling_coordinates(matrix, self._mesh, images.shape[2:])
                out_images[b] = warp_image(images[b], coordinates, self.patch_size)
                out_masks[b] = warp_masks_nearest(masks[b], coordinates, self.patch_size)
            else:
                out_images[b] = centre_crop(images[b], self.patch_size)
                out_masks[b] = centre_crop(masks[b], self.patch_size)
        data_dict[self.image_key], data_dict[self.masks_key] = out_images, out_masks
        return data_dict
