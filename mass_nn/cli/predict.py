"""mass_predict: placeholder until step 4 (downstream) lands."""
from __future__ import annotations

import sys

from mass_nn.cli.common import not_implemented_yet


def main(argv: list[str] | None = None) -> int:
    return not_implemented_yet("mass_predict", "step 4 (downstream)")


if __name__ == "__main__":
    sys.exit(main())
