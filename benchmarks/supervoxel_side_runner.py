"""One side of benchmarks/supervoxel_speed.py: times the `supervoxel` generator (its defaults) of one source tree
on saved cases, in a fresh process, and prints one JSON line.

Usage: python benchmarks/supervoxel_side_runner.py SOURCE_TREE CASES_FOLDER
Output: {"module": folder mass_nn was imported from, "seconds": {case name: seconds of generate()}}
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np


def main(argv: list[str]) -> int:
    source, cases = Path(argv[0]).resolve(), Path(argv[1])
    if not (source / "mass_nn" / "__init__.py").is_file():
        raise SystemExit(f"{source} has no mass_nn package: give the root of a mass_nn checkout")
    sys.path.insert(0, str(source))
    # which mass_nn this process measures is decided by the path set just above, so it is imported only now
    import mass_nn
    from mass_nn.masks.generators.supervoxel import SupervoxelGenerator
    from mass_nn.masks.proposal import CaseInput
    module = Path(mass_nn.__file__).resolve().parent
    if source not in module.parents:
        raise SystemExit(f"imported {module}, not the mass_nn of {source}: an installed copy shadows the tree")
    seconds = {}
    for name, entry in json.loads((cases / "cases.json").read_text()).items():
        case = CaseInput(case_id=name, windowed=np.load(cases / entry["file"]),
                         spacing_zyx_mm=tuple(entry["spacing_zyx_mm"]), mask_axis=0, seed_slice_interval=1)
        start = time.perf_counter()
        SupervoxelGenerator().generate(case)
        seconds[name] = time.perf_counter() - start
    print(json.dumps({"module": str(module), "seconds": seconds}))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
