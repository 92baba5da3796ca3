"""mass_demo: the main job on the embedded demo data, end to end, in one self-contained workspace.

Write the synthetic phantom dataset, plan and preprocess it with the demo preset (`demo_in_context`: the CPU
recipe's idea scaled to the phantom, 3 mm and a 32^3 patch), generate weight-free masks and score them against the
phantom's labels, pretrain MASS with the CPU recipe's trainer (MASSCPUPretrainer; in-context Dice on the phantom's
labelled val case is reported each epoch), then evaluate the pretrained model 1-shot on the held-out test cases -
training-free in context and finetuned - next to the same network untrained, and print the Dice table and the
structures the pretrained model segments best (figure alongside).
"""
from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from mass_nn.cli.common import add_common_arguments, run_cli
from mass_nn.io.artifact_layout import checkpoint_path
from mass_nn.io.atomic import read_json
from mass_nn.masks.generate import MaskGenerationOptions, bank_folder_of, generate_masks
from mass_nn.masks.quality_report import quality_report
from mass_nn.parallel import default_num_processes
from mass_nn.paths import MassPaths
from mass_nn.planning.planner_settings import load_preset
from mass_nn.preprocessing.plan_and_preprocess import PlanAndPreprocessOptions, plan_and_preprocess
from mass_nn.training.run_folder import checkpoint_identity

DEMO_DATASET_ID = 990
PRESET = "demo_in_context"
TRAINER = "MASSCPUPretrainer"
# the recipe's distant query views are left out here: on the phantom's 500 steps they lowered the demo's table
# (in context 4.5 vs 6.8 %, finetuned 0.1 vs 5.4 %; documentation/in_context_ablations.md, the demo section)
DEMO_SETTINGS = {"distant_query": 0.0}
# pretraining length: 500 steps (10 epochs) was a lottery ticket (1.6-6.8 % in context over five runs), 1,000 steps
# gave 9.7 % (2 cores) and 8.2 % (one core) against 0.6 % untrained (documentation/in_context_ablations.md, the
# demo section); the budget buys what fits, between the two, so that the demo stays within about ten minutes on
# slower processors
MIN_EPOCHS, MAX_EPOCHS, TIMING_STEPS = 10, 20, 4


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mass_demo", description=__doc__)
    parser.add_argument("--workdir", default="mass_demo_workspace",
                        help="folder that receives MASS_raw/, MASS_preprocessed/, MASS_results/ (default: %(default)s)")
    parser.add_argument("--num-cases", type=int, default=12, help="phantom training cases (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed (default: %(default)s)")
    parser.add_argument("-np", "--num-processes", type=int, default=default_num_processes())
    parser.add_argument("--epochs", type=int, help=f"pretraining epochs (default: as many as fit in "
                                                   f"--pretrain-minutes on this machine, {MIN_EPOCHS}-{MAX_EPOCHS}, "
                                                   f"timed first: the median of {TIMING_STEPS}-step epochs after a "
                                                   f"warm-up one)")
    parser.add_argument("--pretrain-minutes", type=float, default=5.0,
                        help="time budget of the pretraining steps that sizes --epochs (default: %(default)s)")
    parser.add_argument("--iters-per-epoch", type=int, default=50,
                        help="pretraining steps per epoch (default: %(default)s)")
    parser.add_argument("--finetune-epochs", type=int, default=3,
                        help="1-shot finetuning epochs (default: %(default)s)")
    parser.add_argument("--finetune-iters", type=int, default=10,
                        help="1-shot finetuning steps per epoch (default: %(default)s)")
    parser.add_argument("--preset", default=PRESET, help="plans preset of the phantom (default: %(default)s)")
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
    print(f"[1/5] phantom dataset -> {paths.raw}")
    dataset_dir = _ensure_phantom(paths, args.num_cases, args.seed)
    print(f"[2/5] plan and preprocess {dataset_dir.name} -> {paths.preprocessed}")
    summary = plan_and_preprocess(DEMO_DATASET_ID, paths, PlanAndPreprocessOptions(preset=args.preset,
                                                                                   num_processes=args.num_processes))
    for config in summary["configurations"]:
        print(f"      {config['configuration']}: {config['preprocessed']} preprocessed, {config['skipped']} "
              f"already done")
    print("[3/5] weight-free mask generation (supervoxel) on 3d_cpu")
    plans_name = load_preset(args.preset)[1]
    options = MaskGenerationOptions(generator="supervoxel", configuration="3d_cpu", plans_name=plans_name,
                                    num_processes=args.num_processes)
    masks = generate_masks(DEMO_DATASET_ID, paths, options)
    quality = quality_report(bank_folder_of(DEMO_DATASET_ID, paths, options))["mean"]
    print(f"      {masks['masks']} masks for {masks['cases']} cases in {masks['seconds']:.1f} s; against the phantom "
          f"labels: Best {quality['best']:.1f}, Avg {quality['avg']:.1f}, %>40 {quality['percent_above_40']:.1f}; "
          f"previews in {masks['folder']}/previews")
    print(f"[4/5] MASS pretraining on the masks ({TRAINER}, the CPU recipe without distant query views)")
    if args.epochs is None:
        args.epochs = _budgeted_epochs(paths, args, plans_name)
    run_folder = _pretrain(paths, args, plans_name)
    if run_folder is None:
        print("demo stopped during pretraining; run mass_demo again to resume where it stopped")
        return 130
    _few_shot(paths, args, plans_name, run_folder)
    print(f"demo finished in {time.time() - start:.0f} s")
    return 0


def _few_shot(paths: MassPaths, args, plans_name: str, run_folder: Path) -> None:
    """1-shot in-context and finetuned Dice on the held-out test cases: pretrained vs untrained."""
    from mass_nn.experiments.few_shot_protocol import FewShotProtocol, run_few_shot_protocol
    from mass_nn.evaluation.in_context_protocol import finished_evaluation, in_context_evaluation
    from mass_nn.evaluation.tables import markdown_table
    from mass_nn.model.checkpoint import save_untrained_copy
    steps = args.finetune_epochs * args.finetune_iters
    print(f"[5/5] 1-shot segmentation of the held-out test cases: in context, and finetuned for {steps} steps")
    checkpoint = checkpoint_path(run_folder, "final")
    out = paths.results / f"Dataset{DEMO_DATASET_ID}_PhantomCT" / f"fewshot_demo__{checkpoint_identity(checkpoint)}"
    protocol = FewShotProtocol(dataset=str(DEMO_DATASET_ID), checkpoint=checkpoint, shots=[1], seeds=[0],
                               methods=["in_context", "in_context_calibrated", "finetune", "scratch"],
                               plans_name=plans_name, epochs=args.finetune_epochs,
                               iters_per_epoch=args.finetune_iters, tag="demo")
    results = run_few_shot_protocol(protocol, paths, out)
    dice = {r["method"]: r["mean_dice"] for r in results["runs"]}
    per_class = {r["method"]: r["per_class_dice"] for r in results["runs"]}
    untrained_checkpoint = out / "untrained.pt"
    for calibrated in (False, True):
        folder = out / ("in_context_calibrated_untrained" if calibrated else "in_context_untrained")
        summary = finished_evaluation(folder)
        if summary is None:
            if not untrained_checkpoint.is_file():
                save_untrained_copy(checkpoint, untrained_checkpoint)
            summary = in_context_evaluation(untrained_checkpoint, str(DEMO_DATASET_ID), paths, 1, 0, folder,
                                            plans_name=plans_name, hd95=False,
                                            calibrate_threshold=calibrated)
        dice[folder.name] = summary["mean_dice"]
        per_class[folder.name] = {name: entry["dice"] for name, entry in summary["mean"].items()}
    percent = {k: _percent(v) for k, v in dice.items()}
    print(markdown_table(["1-shot mean Dice (%), test split", "pretrained MASS", "untrained"],
                         [["in context (no training), threshold 0.5", percent["in_context"],
                           percent["in_context_untrained"]],
                          ["in context, reference-calibrated thresholds", percent["in_context_calibrated"],
                           percent["in_context_calibrated_untrained"]],
                          [f"finetuned ({steps} steps)", percent["finetune"], percent["scratch"]]]))
    print("      in context at 0.5, the structures the pretrained model segments best (pretrained vs untrained): "
          + _best_structures(per_class["in_context"], per_class["in_context_untrained"]))
    print(f"      per-class results in {out}/results.md; figure {results['figure']}")


def _best_structures(pretrained: dict, untrained: dict, count: int = 3) -> str:
    """Up to `count` structures with the highest non-zero pretrained Dice, each with the untrained network's."""
    ranked = sorted((name for name, value in pretrained.items() if value), key=lambda name: -pretrained[name])
    return ", ".join(f"{name} {_percent(pretrained[name])} vs {_percent(untrained.get(name))}"
                     for name in ranked[:count]) or "none above 0"


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.1f}"


def epochs_for_budget(step_seconds: float, iters_per_epoch: int, budget_minutes: float) -> int:
    """The whole epochs of `iters_per_epoch` steps that fit in the budget, clamped to MIN_EPOCHS..MAX_EPOCHS."""
    from mass_nn.training.step_timing import epochs_that_fit
    return epochs_that_fit(step_seconds, iters_per_epoch, budget_minutes, MIN_EPOCHS, MAX_EPOCHS)


def _pretraining_options(plans_name: str, epochs: int, iters_per_epoch: int, **changes):
    from mass_nn.training.options import TrainingOptions
    return TrainingOptions(mode="PRETRAIN", datasets=[str(DEMO_DATASET_ID)], trainer=TRAINER, configuration="3d_cpu",
                           plans_name=plans_name, epochs=epochs, iters_per_epoch=iters_per_epoch, device="cpu",
                           extra=dict(DEMO_SETTINGS), **changes)


def _budgeted_epochs(paths: MassPaths, args, plans_name: str) -> int:
    """The epochs of a run already started in this workspace (so that it resumes), else the budget's: the
    median step time of a throw-away run's epochs of TIMING_STEPS steps after a warm-up one (step_timing)."""
    from mass_nn.training.options import load_run_config
    from mass_nn.training.run_folder import run_folder
    from mass_nn.training.step_timing import timed_step_seconds, timing_steps
    started = run_folder(paths.results, f"Dataset{DEMO_DATASET_ID}_PhantomCT", TRAINER, plans_name, "3d_cpu")
    if (started / "run_config.json").is_file():
        return load_run_config(started).epochs
    print(f"      timing {timing_steps(TIMING_STEPS)} pretraining steps to fit the run into {args.pretrain_minutes:g} "
          f"minutes")
    step_seconds = timed_step_seconds(_pretraining_options(plans_name, 2, TIMING_STEPS), paths, TIMING_STEPS)
    epochs = epochs_for_budget(step_seconds, args.iters_per_epoch, args.pretrain_minutes)
    print(f"      {step_seconds:.2f} s per step: {epochs} epochs fit the budget ({MIN_EPOCHS}-{MAX_EPOCHS} allowed)")
    return epochs


def _pretrain(paths: MassPaths, args, plans_name: str) -> Path | None:
    """Pretrain (or resume pretraining); the run folder, or None when a stop signal ended it early."""
    from mass_nn.training.metrics_log import read_metrics
    from mass_nn.training.run_training import run_training
    print(f"      {args.epochs} epochs x {args.iters_per_epoch} steps")
    options = _pretraining_options(plans_name, args.epochs, args.iters_per_epoch,
                                   val_dataset=[str(DEMO_DATASET_ID)], continue_training=True)
    summary = run_training(options, paths)
    records = read_metrics(summary["output_folder"])
    for record in records:
        print(f"      epoch {record['epoch']}: loss {record['train_loss']:.3f}, in-context Dice on the val case "
              f"{record.get('val_dice', float('nan')):.3f}")
    print(f"      checkpoints, metrics.jsonl and progress.png in {summary['output_folder']}")
    return None if summary["stopped_early"] else Path(summary["output_folder"])


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
