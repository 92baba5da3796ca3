"""Errors a user can cause. The CLI prints their message (no traceback unless --verbose) and exits non-zero."""


class MassError(Exception):
    """A problem the user can fix: the message names the file (when there is one) and the fix."""


class DatasetNotFoundError(MassError):
    """A dataset id or name that matches no folder (or more than one)."""


class DatasetIntegrityError(MassError):
    """A raw dataset with one or more problems; `problems` lists every one found."""

    def __init__(self, dataset_dir, problems):
        self.dataset_dir = dataset_dir
        self.problems = list(problems)
        lines = [f"{len(self.problems)} problem(s) in raw dataset {dataset_dir}:"]
        lines += [f"  - {p}" for p in self.problems]
        super().__init__("\n".join(lines))


class PlansValidationError(MassError):
    """A plans file (or preset) with unknown, missing or ill-typed fields."""


class ImageReadError(MassError):
    """An image file or DICOM folder that cannot be read."""
