"""mass_nn: a self-configuring plan-and-train toolkit for MASS (mask-guided self-supervised 3D pretraining)."""
from pathlib import Path

__version__ = (Path(__file__).parent / "VERSION").read_text().strip()
