"""mass_generate_masks: placeholder until step 2 (mask generation) lands."""
from __future__ import annotations

import sys

from mass_nn.cli.common import not_implemented_yet


def main(argv: list[str] | None = None) -> int:
    return not_implemented_yet("mass_generate_masks", "step 2 (mask generation)")


if __name__ == "__main__":
    sys.exit(main())
