"""Checks of image files that the readers themselves skip: SimpleITK fills a truncated .nii.gz with one value,
turns a zero voxel size into 1 mm and NaN voxels into 0, all without a word. Every check raises ImageReadError
naming the file and the fix.
"""
from __future__ import annotations

import gzip
import io
import os
import zlib
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from mass_nn.errors import ImageReadError

_CHUNK_BYTES = 1 << 24
_NIFTI2_HEADER_BYTES = 540
# what a damaged gzip stream raises: EOFError when cut short, BadGzipFile (an OSError) on a CRC or size
# mismatch, zlib.error on corrupt deflate data
_DAMAGED_GZIP = (EOFError, OSError, zlib.error)


def is_nifti(path: Path) -> bool:
    return path.name.lower().endswith((".nii", ".nii.gz"))


def _open(path: Path):
    return gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb")


def read_nifti_header(path: Path):
    """The raw NIfTI-1 or NIfTI-2 header of `path`, exactly as stored (no reader's repairs)."""
    import nibabel as nib
    try:
        with _open(path) as stream:
            raw = stream.read(_NIFTI2_HEADER_BYTES)
    except _DAMAGED_GZIP as err:
        raise ImageReadError(f"{path}: cannot be read as a (gzip-compressed) NIfTI file ({err}); re-export or "
                             f"re-copy it") from err
    sizes = {int.from_bytes(raw[:4], "little"), int.from_bytes(raw[:4], "big")}
    header_class = nib.Nifti2Header if _NIFTI2_HEADER_BYTES in sizes else nib.Nifti1Header
    try:  # the header alone: extensions, which follow it, say nothing about geometry
        return header_class.from_fileobj(io.BytesIO(raw[:header_class.sizeof_hdr]), check=False)
    except Exception as err:  # nibabel raises several unrelated types for a malformed header
        raise ImageReadError(f"{path}: cannot be read, the NIfTI header is malformed ({err}); re-export the "
                             f"image") from err


def nifti_geometry_problem(header) -> str | None:
    """What makes the header's geometry unphysical (a voxel size that is zero, negative or not a number, or an
    enabled orientation matrix that is degenerate), or None when it is sound."""
    spatial_dims = min(int(header["dim"][0]), 3)
    sizes = [float(v) for v in header["pixdim"][1:1 + spatial_dims]]
    bad = [f"pixdim[{i + 1}] = {v:g}" for i, v in enumerate(sizes) if not np.isfinite(v) or v <= 0]
    if bad:
        return f"voxel size {', '.join(bad)} (each must be a positive number of mm)"
    if int(header["sform_code"]) > 0:
        matrix = np.array([header["srow_x"], header["srow_y"], header["srow_z"]], float)[:, :3]
        if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-9:
            return f"the sform matrix {matrix.round(4).tolist()} is degenerate or not finite"
    if int(header["qform_code"]) > 0:
        quaternion = np.array([header["quatern_b"], header["quatern_c"], header["quatern_d"]], float)
        offsets = np.array([header["qoffset_x"], header["qoffset_y"], header["qoffset_z"]], float)
        if not (np.all(np.isfinite(quaternion)) and np.all(np.isfinite(offsets))) or (quaternion ** 2).sum() > 1.001:
            return "the qform (quatern_b/c/d, qoffset) is not a valid rotation and offset"
    return None


def _count_nonfinite(buffer: bytes, dtype: np.dtype) -> int:
    values = np.frombuffer(buffer, dtype=dtype)
    return int(values.size - np.count_nonzero(np.isfinite(values)))


def scan_nifti_voxels(path: Path, header) -> int:
    """Decode every voxel byte of `path` once; raise when the file is cut short or damaged, return the number of
    NaN/infinite voxels (0 for integer images)."""
    dtype = header.get_data_dtype()
    expected = int(np.prod(header.get_data_shape(), dtype=np.int64)) * dtype.itemsize
    offset = int(header["vox_offset"])
    floating = dtype.kind == "f"
    seen, nonfinite, carry = 0, 0, b""
    try:
        with _open(path) as stream:
            stream.seek(offset)
            while seen < expected:
                chunk = stream.read(min(_CHUNK_BYTES, expected - seen))
                if not chunk:
                    break
                seen += len(chunk)
                if floating:
                    chunk = carry + chunk
                    usable = len(chunk) - len(chunk) % dtype.itemsize
                    nonfinite += _count_nonfinite(chunk[:usable], dtype)
                    carry = chunk[usable:]
            if path.name.lower().endswith(".gz"):
                while stream.read(_CHUNK_BYTES):  # to the end, so gzip verifies its CRC and length
                    pass
    except _DAMAGED_GZIP as err:
        raise ImageReadError(f"{path}: the file is damaged or truncated ({err}); re-export or re-copy it") from err
    if seen < expected:
        raise ImageReadError(f"{path}: the file ends after {seen} of its {expected} voxel bytes (truncated); "
                             f"re-export or re-copy it")
    return nonfinite


def verify_nifti_file(path: Path, voxels: bool) -> int:
    """Header geometry always; with `voxels`, also that every voxel decodes. Returns the NaN/inf voxel count
    (0 when `voxels` is False)."""
    header = read_nifti_header(path)
    problem = nifti_geometry_problem(header)
    if problem:
        raise ImageReadError(f"{path}: {problem}; fix the header (e.g. nibabel: img.header.set_zooms(...), "
                             f"img.set_sform(affine)) and save the image again")
    return scan_nifti_voxels(path, header) if voxels else 0


def verify_sitk_geometry(spacing_xyz, direction, source: os.PathLike | str) -> None:
    """Raise unless the spacing is positive and finite and the direction matrix is finite and invertible."""
    spacing = np.asarray(spacing_xyz, float)
    if not np.all(np.isfinite(spacing)) or np.any(spacing <= 0):
        raise ImageReadError(f"{source}: voxel spacing {tuple(spacing.round(6).tolist())} is not physical (each "
                             f"must be a positive number of mm); fix the header and save the image again")
    matrix = np.asarray(direction, float).reshape(len(spacing), len(spacing))
    if not np.all(np.isfinite(matrix)) or abs(np.linalg.det(matrix)) < 1e-6:
        raise ImageReadError(f"{source}: direction matrix {matrix.round(4).tolist()} is degenerate; fix the "
                             f"header's orientation and save the image again")


def nonfinite_voxels(image: sitk.Image) -> int:
    """NaN/inf voxels of a SimpleITK image (0 for integer images), without copying the voxels."""
    view = sitk.GetArrayViewFromImage(image)
    if not np.issubdtype(view.dtype, np.floating):
        return 0
    return int(view.size - np.count_nonzero(np.isfinite(view)))


def nonfinite_message(path, count: int) -> str:
    return (f"{path}: {count} NaN/infinite voxel(s); replace them (e.g. with the image's minimum) and save the "
            f"image again")
