"""The contract every mask generator fulfils."""
from __future__ import annotations

from abc import ABC, abstractmethod

from mass_nn.masks.proposal import CaseInput, MaskProposal


class MaskGenerator(ABC):
    """Turns one preprocessed case into class-agnostic 3D mask proposals.

    Subclasses set `name`, take their settings as keyword arguments in __init__ (the CLI passes them), report
    every setting that shapes the output in `parameters()` (written to masks.json), and may set
    `needs_label = True` when they read `CaseInput.label`. With `native_resolution = True` generate() gets the
    raw image in its own geometry (cropped like preprocessing) and its masks are carried to the preprocessed grid
    afterwards (masks/native_grid.py); otherwise it works on the preprocessed grid.
    """

    name: str = ""
    needs_label: bool = False
    native_resolution: bool = False

    @abstractmethod
    def parameters(self) -> dict:
        """JSON-serialisable settings that determine the output."""

    @abstractmethod
    def generate(self, case: CaseInput) -> list[MaskProposal]:
        """Masks of one case (before the dataset-wide minimum-volume and IoU-deduplication steps)."""

    def close(self) -> None:
        """Release resources (models, temporary files); called once after the last case."""
