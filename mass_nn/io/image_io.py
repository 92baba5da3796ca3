"""Reading and writing 3D images with their physical geometry.

Arrays are numpy order (z, y, x); `ImageGeometry` keeps SimpleITK's (x, y, z) spacing/origin/direction so an
image can be written back exactly. NIfTI, NRRD and MHA/MHD go through SimpleITK; a NIfTI whose affine
SimpleITK rejects (non-orthonormal direction cosines, a common scanner-export quirk) is read with nibabel;
a folder is read as a DICOM series.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from mass_nn.errors import ImageReadError
from mass_nn.io.atomic import atomic_path
from mass_nn.io.image_geometry import ImageGeometry
from mass_nn.io.image_file_checks import (is_nifti, nonfinite_message, nonfinite_voxels, verify_nifti_file,
                                          verify_sitk_geometry)


def _read_dicom_series(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    series_ids = reader.GetGDCMSeriesIDs(str(folder))
    if not series_ids:
        raise ImageReadError(f"{folder}: no DICOM series found in this folder; point to a folder that holds "
                             f"the .dcm files of exactly one series")
    if len(series_ids) > 1:
        raise ImageReadError(f"{folder}: {len(series_ids)} DICOM series in one folder; move each series into "
                             f"its own folder")
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(folder), series_ids[0]))
    return reader.Execute()


def _read_nifti_with_nibabel(path: Path) -> sitk.Image:
    """Read a NIfTI whose affine SimpleITK refuses; direction is orthonormalised (polar decomposition)."""
    import nibabel as nib
    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    affine = img.affine
    zooms = np.sqrt((affine[:3, :3] ** 2).sum(axis=0))
    u, _, vt = np.linalg.svd(affine[:3, :3] / zooms)
    direction_ras = u @ vt
    lps = np.diag([-1.0, -1.0, 1.0])  # NIfTI is RAS, ITK is LPS
    image = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(data, (2, 1, 0))))
    image.SetSpacing(tuple(float(z) for z in zooms))
    image.SetOrigin(tuple(float(v) for v in lps @ affine[:3, 3]))
    image.SetDirection(tuple(float(v) for v in (lps @ direction_ras).ravel()))
    return image


def read_sitk_image(path: str | os.PathLike) -> sitk.Image:
    """Read an image file or DICOM series folder as a SimpleITK image (errors name the file).

    Refused, where SimpleITK would repair silently: a NIfTI whose voxel bytes are cut short or damaged, a voxel
    size that is zero, negative or not a number, a degenerate orientation, and NaN/infinite voxels.
    """
    path = Path(path)
    if not path.exists():
        raise ImageReadError(f"{path}: file not found; check the path (and the case/channel naming)")
    if path.is_dir():
        image = _read_dicom_series(path)
        nonfinite = None
    else:
        nonfinite = verify_nifti_file(path, voxels=True) if is_nifti(path) else None
        image = _read_file(path)
    verify_sitk_geometry(image.GetSpacing(), image.GetDirection(), path)
    if nonfinite is None:  # SimpleITK keeps NaN in every format but NIfTI, whose bytes were counted above
        nonfinite = nonfinite_voxels(image)
    if nonfinite:
        raise ImageReadError(nonfinite_message(path, nonfinite))
    return image


def _read_file(path: Path) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as err:
        if path.name.endswith((".nii", ".nii.gz")) and "orthonormal" in str(err):
            return _read_nifti_with_nibabel(path)
        raise ImageReadError(f"{path}: cannot be read ({str(err).strip().splitlines()[-1]}); replace it with a "
                             f"valid NIfTI/NRRD/MHA file") from err


def _require_3d_scalar(path, dimension: int, components: int, size) -> None:
    if components != 1:
        raise ImageReadError(f"{path}: has {components} components per voxel; store each channel as its own file "
                             f"(<case>_0000, <case>_0001, ...)")
    if dimension != 3:
        raise ImageReadError(f"{path}: is {dimension}D (size {tuple(size)}); mass_nn needs 3D volumes: convert "
                             f"2D/4D data into 3D images first")


def require_3d_scalar_image(image: sitk.Image, source) -> None:
    """Raise ImageReadError (naming `source`) unless `image` is one 3D scalar volume."""
    _require_3d_scalar(source, image.GetDimension(), image.GetNumberOfComponentsPerPixel(), image.GetSize())


def read_image(path: str | os.PathLike, dtype=np.float32) -> tuple[np.ndarray, ImageGeometry]:
    """Read a 3D image as a (z, y, x) array of `dtype` plus its geometry.

    Raises ImageReadError for unreadable files, multi-component (e.g. RGB) images and non-3D images.
    """
    image = read_sitk_image(path)
    require_3d_scalar_image(image, path)
    array = sitk.GetArrayFromImage(image)
    return array.astype(dtype, copy=False), ImageGeometry.from_sitk(image)


def read_geometry(path: str | os.PathLike) -> ImageGeometry:
    """Read only the header (no voxel data) of an image file, with the same checks as read_image; DICOM folders
    and files SimpleITK reads only in full are read in full."""
    path = Path(path)
    if path.is_dir():
        return read_image(path)[1]
    if not path.exists():
        raise ImageReadError(f"{path}: file not found; check the path (and the case/channel naming)")
    if is_nifti(path):
        verify_nifti_file(path, voxels=False)
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return read_image(path)[1]
    _require_3d_scalar(path, reader.GetDimension(), reader.GetNumberOfComponents(), reader.GetSize())
    verify_sitk_geometry(reader.GetSpacing(), reader.GetDirection(), path)
    return ImageGeometry(spacing_xyz=tuple(reader.GetSpacing()), origin_xyz=tuple(reader.GetOrigin()),
                         direction=tuple(reader.GetDirection()), size_xyz=tuple(reader.GetSize()))


def write_image(array: np.ndarray, geometry: ImageGeometry, path: str | os.PathLike,
                compress: bool = True) -> None:
    """Write a (z, y, x) array with `geometry` atomically; the format follows the file ending."""
    array = np.asarray(array)
    if array.dtype == np.bool_:
        array = array.astype(np.uint8)
    if array.dtype == np.float64:
        array = array.astype(np.float32)
    if array.shape != geometry.shape_zyx:
        raise ValueError(f"array shape {array.shape} does not match geometry shape {geometry.shape_zyx}")
    image = geometry.apply_to(sitk.GetImageFromArray(np.ascontiguousarray(array)))
    with atomic_path(path) as tmp:
        sitk.WriteImage(image, str(tmp), useCompression=compress)
