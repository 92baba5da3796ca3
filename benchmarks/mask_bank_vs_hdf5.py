"""Mask storage benchmark: the mass_nn mask bank against the official MASS release's format, a dense uint8
stack [N, D, H, W] in HDF5 (lzf compression, shuffle filter, chunks of about 16 MB along N), on the same masks.

Masks: multi-scale supervoxels (SLIC at 50 / 200 / 600 segments on the three CT windows) of a real CT
(../shared/data/totalsegmentator/example_ct.nii.gz) resampled to a 200³ grid; without ../shared, the phantom.
Reported: disk, time to read one random mask as a full volume (median of 200 reads), and write time, as ratios.

Usage: python benchmarks/mask_bank_vs_hdf5.py [--shared ../shared/data] [--grid 200]; needs h5py.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.measure import machine_description, replace_section  # noqa: E402
from mass_nn.masks.mask_bank import MaskBank, write_mask_bank  # noqa: E402
from mass_nn.masks.proposal import MaskProposal  # noqa: E402
from mass_nn.masks.windowing import apply_window  # noqa: E402
from mass_nn.preprocessing.resampling import resample_images  # noqa: E402

CT_WINDOWS = ((-115, 235), (-110, 140), (-450, 750))


def source_volume(shared: Path, grid: int) -> tuple[np.ndarray, str]:
    ct = shared / "totalsegmentator" / "example_ct.nii.gz"
    if ct.is_file():
        from mass_nn.io.image_io import read_image
        volume, name = read_image(ct)[0], "TotalSegmentator example_ct (real abdominal CT)"
    else:
        from dataset_conversion.phantom import generate_phantom_case
        volume, name = generate_phantom_case(0)[0], "phantom case 0 (../shared absent)"
    return resample_images(volume[None], (grid, grid, grid))[0], name


def supervoxel_masks(volume_hu: np.ndarray, scales=(50, 200, 600)) -> list[MaskProposal]:
    from skimage.segmentation import slic
    windowed = np.stack([apply_window(volume_hu, lo, hi) for lo, hi in CT_WINDOWS], axis=-1)
    proposals = []
    for n_segments in scales:
        segments = slic(windowed, n_segments=n_segments, compactness=10, channel_axis=-1, start_label=1)
        for value in range(1, segments.max() + 1):
            proposal = MaskProposal.from_full(segments == value, "slic", extra={"segments": n_segments})
            if proposal is not None:
                proposals.append(proposal)
    return proposals


def write_hdf5(path: Path, proposals: list[MaskProposal], shape) -> None:
    import h5py
    per_chunk = max(1, (16 * 2 ** 20) // int(np.prod(shape)))
    with h5py.File(path, "w") as handle:
        data = handle.create_dataset("auto_masks", shape=(len(proposals), *shape), dtype=np.uint8,
                                     chunks=(per_chunk, *shape), compression="lzf", shuffle=True)
        for start in range(0, len(proposals), per_chunk):
            block = np.stack([p.full(shape) for p in proposals[start:start + per_chunk]]).astype(np.uint8)
            data[start:start + len(block)] = block


def timed_reads(read, count: int, total: int, seed: int = 0) -> float:
    order = np.random.default_rng(seed).integers(0, total, count)
    times = []
    for index in order:
        start = time.perf_counter()
        read(int(index))
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--grid", type=int, default=200)
    parser.add_argument("--reads", type=int, default=200)
    parser.add_argument("--page", default=str(REPO / "documentation" / "benchmarks.md"))
    args = parser.parse_args(argv)
    import h5py

    volume, source_name = source_volume(Path(args.shared), args.grid)
    proposals = supervoxel_masks(volume)
    shape = volume.shape
    with tempfile.TemporaryDirectory() as tmp:
        bank_path, h5_path = Path(tmp) / "case.masks", Path(tmp) / "case.h5"
        start = time.perf_counter()
        write_mask_bank(bank_path, "case", shape, proposals, "slic", "benchmark")
        bank_write = time.perf_counter() - start
        start = time.perf_counter()
        write_hdf5(h5_path, proposals, shape)
        h5_write = time.perf_counter() - start
        bank = MaskBank(bank_path)
        bank_read = timed_reads(bank.read, args.reads, len(proposals))
        bank_crop = timed_reads(bank.read_crop, args.reads, len(proposals))
        with h5py.File(h5_path, "r") as handle:
            h5_read = timed_reads(lambda i: handle["auto_masks"][i], args.reads, len(proposals))
        index = len(proposals) // 2
        with h5py.File(h5_path, "r") as handle:
            assert np.array_equal(handle["auto_masks"][index].astype(bool), bank.read(index)), "same masks"
        bank_bytes, h5_bytes = bank_path.stat().st_size, h5_path.stat().st_size
    body = "\n".join([
        "## Mask bank vs the release's dense HDF5 stack (step 2)",
        "",
        f"Same {len(proposals)} masks (SLIC supervoxels at 50 / 200 / 600 segments on the three CT windows of "
        f"{source_name}, resampled to a {args.grid}³ grid) stored both ways. HDF5: h5py {h5py.__version__}, dense "
        f"uint8 [N, D, H, W], lzf + shuffle, chunks of ~16 MB along N (the official MASS release's layout). "
        f"Read = one random mask as a full {args.grid}³ boolean volume, median of {args.reads} reads; the bank "
        f"can also return just the mask's bounding-box crop.",
        "",
        f"Machine: {machine_description()}; produced by `python benchmarks/mask_bank_vs_hdf5.py`.",
        "",
        "| format | disk (MB) | read one mask (ms) | write all (s) |",
        "|---|---|---|---|",
        f"| HDF5 dense stack (reference) | {h5_bytes / 1e6:.1f} | {1e3 * h5_read:.2f} | {h5_write:.1f} |",
        f"| mass_nn mask bank | {bank_bytes / 1e6:.2f} | {1e3 * bank_read:.3f} (crop only: {1e3 * bank_crop:.3f}) "
        f"| {bank_write:.1f} |",
        f"| **ratio bank / HDF5** | **{bank_bytes / h5_bytes:.3f}** | **{bank_read / h5_read:.4f}** "
        f"(**{h5_read / bank_read:.0f}× faster**) | **{bank_write / h5_write:.2f}** |",
    ])
    replace_section(Path(args.page), "mask_bank_vs_hdf5", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
