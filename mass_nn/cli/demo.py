"""mass_demo: the main job on the embedded demo data, end to end, in one self-contained workspace.

Today (steps 1-3): write the synthetic phantom dataset, plan and preprocess it, generate weight-free masks and
score them against the phantom's labels, then pretrain MASS briefly on those masks (in-context Dice on the
phantom's labelled val case is reported each epoch). Step 4 appends few-shot evaluation.
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from mass_nn.cli.common import add_common_arguments, run_cli
from mass_nn.io.atomic import read_json
from mass_nn.masks.generate import MaskGenerationOptions, bank_folder_of, generate_masks
from mass_nn.masks.quality_report import quality_report
from mass_nn.parallel import default_num_processes
from mass_nn.paths import MassPaths
from mass_nn.planning.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess

DEMO_DATASET_ID = 990


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mass_demo", description=__doc__)
    parser.add_argument("--workdir", default="mass_demo_workspace",
                        help="folder that receives MASS_raw/, MASS_preprocessed/, MASS_results/ (default: %(default)s)")
    parser.add_argument("--num-cases", type=int, default=12, help="phantom training cases (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default: %(default)s)")
    parser.add_argument("-np", "--num-processes", type=int, default=default_num_processes())
    parser.add_argument("--epochs", type=int, default=3, help="pretraining epochs (default: %(default)s)")
    parser.add_argument("--iters-per-epoch", type=int, default=10,
                        help="pretraining steps per epoch (default: %(default)s)")
    parser.add_argument("--clean", action="store_true", help="delete the workspace first")
    add_common_arguments(parser)
    return parser


def _ensure_phantom(paths: MassPaths, num_cases: int, seed: int) -> Path:
    from dataset_conversion.phantom import write_phantom_dataset
    existing = sorted(paths.raw.glob(f"Dataset{DEMO_DATASET_ID}_*"))
    if existing and (existing[0] / "dataset.json").is_file():
        meta = read_json(existing[0] / "dataset.json")
        if meta.get("numTraining") == num_cases and meta.get("phantom_seed", seed) == seed:
            return existing[0]
        shutil.rmtree(existing[0])
    return write_phantom_dataset(paths.raw, dataset_id=DEMO_DATASET_ID, num_cases=num_cases, seed=seed)


def _run(args) -> int:
    start = time.time()
    workdir = Path(args.workdir).absolute()
    if args.clean and workdir.exists():
        shutil.rmtree(workdir)
    paths = MassPaths(raw=workdir / "MASS_raw", preprocessed=workdir / "MASS_preprocessed",
                      results=workdir / "MASS_results")
    print(f"[1/4] phantom dataset -> {paths.raw}")
    dataset_dir = _ensure_phantom(paths, args.num_cases, args.seed)
    print(f"[2/4] plan and preprocess {dataset_dir.name} -> {paths.preprocessed}")
    summary = plan_and_preprocess(DEMO_DATASET_ID, paths, PlanAndPreprocessOptions(num_processes=args.num_processes))
    for config in summary["configurations"]:
        print(f"      {config['configuration']}: {config['preprocessed']} preprocessed, {config['skipped']} "
              f"already done")
    print("[3/4] weight-free mask generation (supervoxel) on 3d_cpu")
    options = MaskGenerationOptions(generator="supervoxel", configuration="3d_cpu",
                                    num_processes=args.num_processes)
    masks = generate_masks(DEMO_DATASET_ID, paths, options)
    quality = quality_report(bank_folder_of(DEMO_DATASET_ID, paths, options))["mean"]
    print(f"      {masks['masks']} masks for {masks['cases']} cases in {masks['seconds']:.1f} s; against the phantom "
          f"labels: Best {quality['best']:.1f}, Avg {quality['avg']:.1f}, %>40 {quality['percent_above_40']:.1f}; "
          f"previews in {masks['folder']}/previews")
    if not _pretrain(paths, args):
        print("demo stopped during pretraining; run mass_demo again to resume where it stopped")
        return 130
    print(f"demo finished in {time.time() - start:.0f} s; few-shot evaluation arrives with step 4")
    return 0


def _pretrain(paths: MassPaths, args) -> bool:
    """Pretrain (or resume pretraining); False when a stop signal ended it early."""
    from mass_nn.training.metrics_log import read_metrics
    from mass_nn.training.options import TrainingOptions
    from mass_nn.training.run_training import run_training
    print(f"[4/4] MASS pretraining on the masks: {args.epochs} epochs x {args.iters_per_epoch} steps (3d_cpu, CPU)")
    options = TrainingOptions(mode="PRETRAIN", datasets=[str(DEMO_DATASET_ID)], configuration="3d_cpu",
                              epochs=args.epochs, iters_per_epoch=args.iters_per_epoch, device="cpu",
                              val_dataset=str(DEMO_DATASET_ID), continue_training=True)
    summary = run_training(options, paths)
    records = read_metrics(summary["output_folder"])
    for record in records:
        print(f"      epoch {record['epoch']}: loss {record['train_loss']:.3f}, in-context Dice on the val case "
              f"{record.get('val_dice', float('nan')):.3f}")
    print(f"      checkpoints, metrics.jsonl and progress.png in {summary['output_folder']}")
    return not summary["stopped_early"]


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
