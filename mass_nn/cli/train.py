"""mass_train: placeholder until step 3 (pretraining) lands."""
from __future__ import annotations

import sys

from mass_nn.cli.common import not_implemented_yet


def main(argv: list[str] | None = None) -> int:
    return not_implemented_yet("mass_train", "step 3 (pretraining)")


if __name__ == "__main__":
    sys.exit(main())
