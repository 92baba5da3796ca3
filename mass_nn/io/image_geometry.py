"""Where a 3D image lies in space: spacing, origin, direction and size, in SimpleITK's (x, y, z) order.

Its own module so that code which only carries geometry (case properties, plans) does not import the image
readers; `from_sitk` and `apply_to` take any object with SimpleITK's image methods.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import SimpleITK as sitk


@dataclass(frozen=True)
class ImageGeometry:
    """Physical placement of a 3D image, in SimpleITK (x, y, z) order."""

    spacing_xyz: tuple[float, float, float]
    origin_xyz: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major 3x3, as SimpleITK's GetDirection()
    size_xyz: tuple[int, int, int]

    @property
    def spacing_zyx(self) -> tuple[float, float, float]:
        """Spacing in numpy array axis order."""
        return tuple(float(s) for s in self.spacing_xyz[::-1])

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.size_xyz[::-1])

    def to_dict(self) -> dict:
        return {"spacing_xyz": list(self.spacing_xyz), "origin_xyz": list(self.origin_xyz),
                "direction": list(self.direction), "size_xyz": list(self.size_xyz)}

    @classmethod
    def from_dict(cls, d: dict) -> "ImageGeometry":
        return cls(spacing_xyz=tuple(float(v) for v in d["spacing_xyz"]),
                   origin_xyz=tuple(float(v) for v in d["origin_xyz"]),
                   direction=tuple(float(v) for v in d["direction"]),
                   size_xyz=tuple(int(v) for v in d["size_xyz"]))

    @classmethod
    def from_sitk(cls, image: sitk.Image) -> "ImageGeometry":
        return cls(spacing_xyz=tuple(image.GetSpacing()), origin_xyz=tuple(image.GetOrigin()),
                   direction=tuple(image.GetDirection()), size_xyz=tuple(image.GetSize()))

    def apply_to(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing_xyz)
        image.SetOrigin(self.origin_xyz)
        image.SetDirection(self.direction)
        return image

    def differences(self, other: "ImageGeometry", tol: float = 1e-3) -> list[str]:
        """Human-readable list of what differs between two geometries (empty when they match)."""
        out = []
        if tuple(self.size_xyz) != tuple(other.size_xyz):
            out.append(f"shape {self.size_xyz} vs {other.size_xyz}")
        for name in ("spacing_xyz", "origin_xyz", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            scale = 1.0 if name == "direction" else np.maximum(1.0, np.abs(a))
            if a.shape != b.shape or np.any(np.abs(a - b) > tol * scale):
                out.append(f"{name.split('_')[0]} {_rounded(a)} vs {_rounded(b)}")
        return out


def _rounded(values) -> tuple:
    return tuple(round(float(v), 4) for v in np.ravel(values))
