"""mass_train: train a model by trainer name, in one of two modes.

Examples:
  mass_train PRETRAIN -d 990                          # MASSPretrainer, 3d_cpu on CPU / 3d_paper on GPU
  mass_train PRETRAIN -d 990 --epochs 2 --iters-per-epoch 50 --tag short
  mass_train PRETRAIN -d 990 --continue               # resume the run exactly where it stopped
  mass_train PRETRAIN -d 990 -tr MAEPretrainer        # a baseline: MAE, S3D, SimCLR, ModelsGenesis, HiEndMAE, MiM
  torchrun --nproc_per_node 4 -m mass_nn.cli.train PRETRAIN -d 990   # DistributedDataParallel
  mass_train FINETUNE -d 991 -shots 1 --pretrained RUN/checkpoint_final.pt    # few-shot segmentation
  mass_train FINETUNE -d 991 -tr ClassificationProbe --pretrained CKPT --train-fraction 0.3
"""
from __future__ import annotations

import argparse
import os
import sys

from mass_nn.cli.common import add_common_arguments, add_path_arguments, paths_from_args, run_cli
from mass_nn.errors import MassError
from mass_nn.training.optim.lr_scaling import LR_SCALING_RULES
from mass_nn.training.optim.schedules import LR_SCHEDULES
from mass_nn.training.options import TrainingOptions
from mass_nn.training.precision import PRECISIONS


def _parse_setting(text: str) -> tuple[str, object]:
    import json
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: use KEY=VALUE, e.g. num_tasks=8")
    key, value = text.split("=", 1)
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _add_run_arguments(p, default_trainer: str, defaults: str) -> None:
    """Options both modes share."""
    p.add_argument("-tr", "--trainer", default=default_trainer, help="trainer class name (default: %(default)s)")
    p.add_argument("-c", "--configuration", help="plans configuration (default: 3d_paper on CUDA, 3d_cpu otherwise)")
    p.add_argument("-p", "--plans", dest="plans_name", default="MassPlans", help="plans name (default: %(default)s)")
    p.add_argument("--epochs", type=int, help=f"epochs (trainer default: {defaults})")
    p.add_argument("--iters-per-epoch", type=int, help="optimiser steps per epoch (trainer default)")
    p.add_argument("--batch-size", type=int, help="per-process batch size (default: the plans')")
    p.add_argument("--lr", type=float, help="peak learning rate, used as given (default: the trainer's, scaled to "
                                            "the global batch by --lr-scaling)")
    p.add_argument("--lr-scaling", choices=LR_SCALING_RULES,
                   help="how the default lr follows the global batch (trainer default, e.g. sqrt for MASS)")
    p.add_argument("--grad-clip", type=float, help="max gradient norm (trainer default, e.g. 1.0)")
    p.add_argument("--seed", type=int, default=0, help="seed of weights, batch order and shot selection "
                                                       "(default: %(default)s)")
    p.add_argument("--continue", dest="continue_training", action="store_true",
                   help="resume the run in the output folder from checkpoint_latest.pt")
    p.add_argument("--tag", default="", help="suffix of the output folder, to keep runs apart")
    p.add_argument("--num-workers", type=int, help="data loading processes (default: from the machine)")
    p.add_argument("--threads", type=int, help="torch intra-op threads (default: usable cores minus loader "
                                               "workers and cores busy with other programs, re-checked while "
                                               "training; documentation/pretraining.md)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="default: %(default)s")
    p.add_argument("--precision", default="auto", choices=PRECISIONS,
                   help="arithmetic of the training step: auto is bf16 autocast on CUDA and fp32 on CPU; "
                        "bf16 on a CPU pays off only with native bf16 (AVX-512 BF16, AMX; "
                        "documentation/pretraining.md) (default: %(default)s)")
    p.add_argument("--val-every", type=int, default=1, help="validate every N epochs (default: %(default)s)")
    p.add_argument("--max-minutes", type=float, metavar="M",
                   help="stop after the last whole epoch that fits in M minutes of training (steps, loading, "
                        "validation), if that comes before --epochs; the lr schedule stays laid out over --epochs "
                        "(or --schedule-epochs) (default: no limit)")
    p.add_argument("-s", "--setting", action="append", type=_parse_setting, default=[], metavar="KEY=VALUE",
                   help="trainer-specific setting (repeatable), e.g. -s num_tasks=8")
    add_path_arguments(p)
    add_common_arguments(p)


def _add_finetune_parser(subparsers) -> None:
    p = subparsers.add_parser("FINETUNE", help="downstream training on a labelled dataset",
                              description="Few-shot segmentation finetuning or frozen-encoder classification on a "
                                          "labelled preprocessed dataset (documentation/finetuning.md).")
    p.add_argument("-d", "--datasets", nargs=1, required=True, help="the labelled dataset (id or name)")
    p.add_argument("-shots", "--shots", type=int, help="labelled training cases, chosen by --seed (segmentation; "
                                                       "default: the whole train split)")
    p.add_argument("--pretrained", help="checkpoint to start from (default: random initialisation, i.e. scratch)")
    p.add_argument("--train-fraction", type=float, help="classification: share of the train split to train on, "
                                                        "e.g. 0.05 (default: 1)")
    p.add_argument("--patience", type=int, help="early stopping: validations without improvement before "
                                                "stopping (default: train every epoch)")
    _add_run_arguments(p, "SegmentationFinetuner", "50")


def _add_pretrain_parser(subparsers) -> None:
    p = subparsers.add_parser("PRETRAIN", help="self-supervised pretraining (MASSPretrainer by default)",
                              description="Self-supervised pretraining on preprocessed datasets and their masks.")
    p.add_argument("-d", "--datasets", nargs="+", required=True, help="dataset id(s) or name(s)")
    p.add_argument("--masks", help="mask generator whose banks to use (default: the only one present)")
    p.add_argument("--val-dataset", nargs="+", help="labelled dataset(s) for in-context Dice validation on their "
                                                    "val cases, besides the loss on held-out auto masks")
    p.add_argument("--val-batches", type=int, default=4, help="held-out batches per validation (default: %(default)s)")
    p.add_argument("--schedule", default="poly", choices=list(LR_SCHEDULES), help="default: %(default)s")
    p.add_argument("--schedule-epochs", type=int, metavar="N",
                   help="lay the lr schedule over N epochs and stop after --epochs: the first steps of the longer "
                        "run, weights and lr as it has them there (default: over --epochs)")
    p.add_argument("--dice", default="adaptive_tversky", choices=["adaptive_tversky", "soft_dice"],
                   help="Dice term of the loss (default: %(default)s)")
    _add_run_arguments(p, "MASSPretrainer", "100")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mass_train", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    subparsers = parser.add_subparsers(dest="mode", required=True, metavar="MODE")
    _add_pretrain_parser(subparsers)
    _add_finetune_parser(subparsers)
    return parser


def options_from_args(args) -> TrainingOptions:
    if args.lr is not None and args.lr_scaling is not None:
        raise MassError("--lr is used as given and --lr-scaling scales only the trainer's default lr; give one of "
                        "them")
    mode_specific = {"PRETRAIN": ("masks", "val_dataset", "val_batches", "schedule", "schedule_epochs", "dice"),
                     "FINETUNE": ("shots", "pretrained", "train_fraction", "patience")}[args.mode]
    return TrainingOptions(mode=args.mode, datasets=[str(d) for d in args.datasets], trainer=args.trainer,
                           configuration=args.configuration, plans_name=args.plans_name, epochs=args.epochs,
                           iters_per_epoch=args.iters_per_epoch, batch_size=args.batch_size, lr=args.lr,
                           lr_scaling=args.lr_scaling,
                           seed=args.seed, tag=args.tag, continue_training=args.continue_training,
                           num_workers=args.num_workers, threads=args.threads, device=args.device,
                           precision=args.precision,
                           val_every=args.val_every, grad_clip=args.grad_clip, max_minutes=args.max_minutes,
                           extra=dict(args.setting), **{key: getattr(args, key) for key in mode_specific})


def _run(args) -> int:
    from mass_nn.training.run_training import run_training
    if args.val_every < 1:
        raise MassError("--val-every must be at least 1")
    summary = run_training(options_from_args(args), paths_from_args(args))
    exit_code = 130 if summary["stopped_early"] else 0  # a scheduler can tell a stopped run from a finished one
    if int(os.environ.get("RANK", "0")) != 0:  # under torchrun only rank 0 reports
        return exit_code
    state = "stopped early (resume with --continue)" if summary["stopped_early"] else "finished"
    best = (f", best {summary['best_metric_key']} {summary['best_metric']:.4f}"
            if summary["best_metric"] is not None else "")
    if "test_mean_auc" in summary:  # classification runs end with a test-split evaluation
        value = summary["test_mean_auc"]
        best += f", test mean AUC {value:.4f}" if value is not None else ", test mean AUC undefined (one class)"
    print(f"{state}: {summary['epochs_done']} epochs, {summary['global_step']} steps{best} -> "
          f"{summary['output_folder']}")
    return exit_code


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
