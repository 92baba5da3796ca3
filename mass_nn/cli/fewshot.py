"""mass_fewshot: the few-shot protocol (paper Table 1) for one checkpoint on one labelled dataset.

For each k and seed: training-free in-context segmentation and finetuning from the checkpoint (add --scratch
for the randomly initialised baseline), scored on the test split; writes results.json, results.md (mean (std)
over seeds) and examples.png. Re-running resumes: finished runs are read back.

Example:
  mass_fewshot -d 991 --checkpoint MASS_results/.../checkpoint_final.pt -k 1 5 10 --seeds 0 1 2
"""
from __future__ import annotations

import argparse
from pathlib import Path

from mass_nn.cli.common import add_common_arguments, add_path_arguments, paths_from_args, run_cli
from mass_nn.errors import MassError
from mass_nn.io.atomic import prepare_output_folder
from mass_nn.model.checkpoint import load_checkpoint
from mass_nn.training.run_folder import checkpoint_identity


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mass_fewshot", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-d", "--dataset", required=True, help="labelled dataset (id or name)")
    parser.add_argument("--checkpoint", required=True, help="pretrained MASS checkpoint")
    parser.add_argument("-k", "--shots", type=int, nargs="+", default=[1, 5, 10], help="default: %(default)s")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="default: %(default)s")
    parser.add_argument("--no-in-context", action="store_true", help="skip training-free in-context segmentation")
    parser.add_argument("--calibrated", action="store_true",
                        help="also in context with each class's threshold read off its references (not 0.5)")
    parser.add_argument("--no-finetune", action="store_true", help="skip finetuning from the checkpoint")
    parser.add_argument("--scratch", action="store_true", help="also finetune from random initialisation")
    parser.add_argument("-c", "--configuration", help="default: the checkpoint's configuration")
    parser.add_argument("-p", "--plans", dest="plans_name", default="MassPlans", help="default: %(default)s")
    parser.add_argument("--epochs", type=int, help="finetuning epochs (default: the trainer's, 50)")
    parser.add_argument("--iters-per-epoch", type=int, help="finetuning steps per epoch (default: the trainer's)")
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="default: %(default)s")
    parser.add_argument("--tag", default="", help="suffix of the finetuning run folders")
    parser.add_argument("--hd95", action="store_true", help="also compute HD95")
    parser.add_argument("--context-tasks", type=int,
                        help="in context: tasks per pass, the labels filled up with generator masks of the references "
                             "(default: the checkpoint's pretraining task count; 0: the labels alone)")
    parser.add_argument("-o", "--output", help="results folder (default: <results>/<dataset>/fewshot__<checkpoint id>"
                                               "[__tag], the id being the start of the checkpoint file's SHA-256)")
    add_path_arguments(parser)
    add_common_arguments(parser)
    return parser


def _run(args) -> int:
    from mass_nn.experiments.few_shot_protocol import FewShotProtocol, results_table, run_few_shot_protocol
    from mass_nn.io.dataset_json import find_dataset_name
    paths = paths_from_args(args)
    methods = ([] if args.no_in_context else ["in_context"]) + (["in_context_calibrated"] if args.calibrated else []) \
        + ([] if args.no_finetune else ["finetune"]) + (["scratch"] if args.scratch else [])
    if not methods:
        raise MassError("nothing to run: --no-in-context and --no-finetune without --scratch")
    output = prepare_output_folder(args.output) if args.output else None  # before the checkpoint is read
    protocol = FewShotProtocol(dataset=args.dataset, checkpoint=Path(args.checkpoint), shots=args.shots,
                               seeds=args.seeds, methods=methods,
                               configuration=args.configuration or load_checkpoint(args.checkpoint).meta.configuration,
                               plans_name=args.plans_name, epochs=args.epochs, iters_per_epoch=args.iters_per_epoch,
                               device=args.device, tag=args.tag, hd95=args.hd95, context_tasks=args.context_tasks)
    name = find_dataset_name(args.dataset, [paths.preprocessed, paths.raw])
    output = output or prepare_output_folder(paths.results / name / (
        f"fewshot__{checkpoint_identity(args.checkpoint)}" + (f"__{args.tag}" if args.tag else "")))
    results = run_few_shot_protocol(protocol, paths, output)
    print(f"label maps:\n{results_table(results)}\neach structure's own claim (overlaps kept):\n"
          f"{results_table(results, 'structures_alone_dice')}")
    print(f"results.json, results.md and examples.png in {output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
