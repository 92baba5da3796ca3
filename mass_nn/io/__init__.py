"""File formats and atomic writes: images, dataset.json, case labels, figures, integrity checks."""
