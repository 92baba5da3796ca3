"""Preprocessing benchmark: mass_plan_and_preprocess against nnU-Net v2 on the same raw CT dataset, same run.

Dataset: the soft-tissue-sarcoma CT cases and the two pyradiomics lung CTs of ../shared/data, tumour labels
(built with dataset_conversion.shared_data). nnU-Net: fingerprint + plans with -overwrite_target_spacing
1.5 1.5 1.5 + preprocessing of 3d_fullres, -np 2. mass_nn: preset paper_only (1.5 mm), -np 2, integrity check
included. Reported as ratios (mass_nn / nnU-Net) of wall time, peak memory of the whole process tree, and disk
of the preprocessed configuration folder, into documentation/benchmarks.md.

Usage: python benchmarks/preprocess_vs_nnunet.py [--shared ../shared/data] [--workdir benchmarks/_work] [--repeats 1]
Needs: pip install nnunetv2 (the 'benchmark' extra of setup.py).
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import sys
from importlib.metadata import version
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.measure import folder_bytes, machine_description, replace_section, run_measured  # noqa: E402

DATASET_KEY = "ct_tumour"  # STS CT + pyradiomics lung CT, tumour labels


def build_dataset(shared: Path, raw_root: Path) -> Path:
    from dataset_conversion.shared_data import convert_shared_data
    return convert_shared_data(shared, raw_root, which=[DATASET_KEY])[DATASET_KEY]


def _warm_cache(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            path.read_bytes()


def run_nnunet(raw_root: Path, work: Path, dataset_id: int, log: Path):
    pre, res = work / "nnunet_preprocessed", work / "nnunet_results"
    shutil.rmtree(pre, ignore_errors=True)
    env = {"nnUNet_raw": str(raw_root), "nnUNet_preprocessed": str(pre), "nnUNet_results": str(res)}
    command = ["nnUNetv2_plan_and_preprocess", "-d", str(dataset_id), "-c", "3d_fullres", "-np", "2", "-npfp", "2",
               "-overwrite_target_spacing", "1.5", "1.5", "1.5", "-overwrite_plans_name", "nnUNetPlans_1.5mm",
               "--no_pbar"]
    result = run_measured(command, env=env, log_path=log)
    folder = next(pre.glob(f"Dataset{dataset_id:03d}_*")) / "nnUNetPlans_1.5mm_3d_fullres"
    return result, folder_bytes(folder)


def run_mass(raw_root: Path, work: Path, dataset_id: int, log: Path):
    pre = work / "mass_preprocessed"
    shutil.rmtree(pre, ignore_errors=True)
    command = [sys.executable, "-m", "mass_nn.cli.plan_and_preprocess", "-d", str(dataset_id), "-p", "paper_only",
               "-np", "2", "--no-progress", "--raw", str(raw_root), "--preprocessed", str(pre),
               "--results", str(work / "mass_results")]
    result = run_measured(command, log_path=log)
    folder = next(pre.glob(f"Dataset{dataset_id:03d}_*")) / "MassPlans_3d_paper"
    return result, folder_bytes(folder)


def _row(name, seconds, peak, disk):
    return f"| {name} | {seconds:.1f} | {peak / 2**20:.0f} | {disk / 2**20:.1f} |"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shared", default=str(REPO.parent / "shared" / "data"))
    parser.add_argument("--workdir", default=str(REPO / "benchmarks" / "_work" / "preprocess_vs_nnunet"))
    parser.add_argument("--repeats", type=int, default=1, help="runs per tool; medians are reported")
    parser.add_argument("--page", default=str(REPO / "documentation" / "benchmarks.md"))
    args = parser.parse_args(argv)
    work = Path(args.workdir).absolute()
    raw_root = work / "raw"
    shutil.rmtree(raw_root, ignore_errors=True)
    dataset_dir = build_dataset(Path(args.shared), raw_root)
    dataset_id = int(dataset_dir.name[7:10])
    _warm_cache(dataset_dir)
    runs = {"nnU-Net v2": [], "mass_nn": []}
    for repeat in range(args.repeats):
        for name, runner in (("nnU-Net v2", run_nnunet), ("mass_nn", run_mass)):
            result, disk = runner(raw_root, work, dataset_id, work / f"{name.split()[0]}_{repeat}.log")
            if result.returncode != 0:
                raise SystemExit(f"{name} failed (exit {result.returncode}); see {work}")
            runs[name].append((result.seconds, result.peak_rss_bytes, disk))
            print(f"{name}: {result.seconds:.1f} s, peak {result.peak_rss_bytes / 2**20:.0f} MiB, "
                  f"disk {disk / 2**20:.1f} MiB", flush=True)
    med = {n: [statistics.median(v[i] for v in r) for i in range(3)] for n, r in runs.items()}
    ratio = [m / n for m, n in zip(med["mass_nn"], med["nnU-Net v2"])]
    num_cases = len(list((dataset_dir / "labelsTr").iterdir()))
    body = "\n".join([
        "## Preprocessing: mass_plan_and_preprocess vs nnU-Net v2 (step 1)",
        "",
        f"Dataset: {dataset_dir.name}, {num_cases} CT cases from `../shared/data` (sarcoma CT + pyradiomics lung "
        f"CT, tumour labels), resampled to 1.5 mm. nnU-Net v2 {version('nnunetv2')}: "
        f"`nnUNetv2_plan_and_preprocess -c 3d_fullres -np 2 -npfp 2 -overwrite_target_spacing 1.5 1.5 1.5` "
        f"(fingerprint + plan + preprocess). mass_nn {version('mass_nn')}: `mass_plan_and_preprocess -p paper_only "
        f"-np 2` (integrity check + fingerprint + plan + splits + preprocess). Same run, raw files in the page "
        f"cache for both, median of {args.repeats} run(s) each. Disk = the configuration's preprocessed folder. "
        f"Peak memory = summed RSS of the whole process tree, sampled every 50 ms.",
        "",
        f"Machine: {machine_description()}; produced by `python benchmarks/preprocess_vs_nnunet.py`.",
        "",
        "| tool | wall time (s) | peak memory (MiB) | disk (MiB) |",
        "|---|---|---|---|",
        _row("nnU-Net v2 (reference)", *med["nnU-Net v2"]),
        _row("mass_nn", *med["mass_nn"]),
        f"| **ratio mass_nn / nnU-Net** | **{ratio[0]:.2f}** | **{ratio[1]:.2f}** | **{ratio[2]:.2f}** |",
        "",
        "What differs between the two (so the ratios are read fairly): nnU-Net resamples images with cubic "
        "splines in-plane, mass_nn trilinearly (both nearest-neighbour across thick slices); nnU-Net crops to "
        "the nonzero region (the whole field of view for CT, where air is -1000 HU), mass_nn to the body; nnU-Net "
        "stores float32 losslessly with LZ4HC plus a pickle of up to 10,000 voxel locations per class, mass_nn "
        "stores 12 mantissa bits with ZSTD (< 0.3 HU) and a small JSON. mass_nn additionally runs its integrity "
        "check (nnU-Net only with --verify_dataset_integrity) and reads, crops and normalises each case once "
        "for all configurations.",
    ])
    replace_section(Path(args.page), "preprocess_vs_nnunet", body)
    print(body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
