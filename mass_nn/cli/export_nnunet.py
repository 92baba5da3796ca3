"""mass_export_nnunet: MASS-pretrained weights as a file nnU-Net v2 loads with -pretrained_weights.

Examples:
  mass_export_nnunet --checkpoint RUN/checkpoint_final.pt \\
      --nnunet-plans $nnUNet_preprocessed/Dataset705_X/nnUNetResEncUNetMPlans.json -c 3d_fullres -o mass_resenc_m.pth
  nnUNetv2_train 705 3d_fullres 0 -p nnUNetResEncUNetMPlans -pretrained_weights mass_resenc_m.pth

The checkpoint must come from `mass_train PRETRAIN ... -s nnunet_plans=<the same kind of plans file>`: its encoder
is nnU-Net's ResEnc and goes over key for key; nnU-Net's decoder starts from nnU-Net's own initialisation
(documentation/nnunet.md).
"""
from __future__ import annotations

import argparse

from mass_nn.cli.common import add_common_arguments, run_cli
from mass_nn.export.nnunet_export import export_to_nnunet


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mass_export_nnunet", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="MASS checkpoint with a ResEnc encoder")
    parser.add_argument("--nnunet-plans", required=True,
                        help="the nnU-Net plans file of the target dataset (nnUNetResEncUNet{M,L,XL}Plans.json)")
    parser.add_argument("-c", "--configuration", default="3d_fullres",
                        help="nnU-Net configuration (default 3d_fullres)")
    parser.add_argument("-o", "--output", required=True, help="the file to write, e.g. mass_resenc_m.pth")
    parser.add_argument("--seed", type=int, default=0, help="seed of nnU-Net's decoder initialisation (default 0)")
    add_common_arguments(parser)
    return parser


def _run(args: argparse.Namespace) -> int:
    summary = export_to_nnunet(args.checkpoint, args.nnunet_plans, args.configuration, args.output, args.seed)
    print(f"wrote {summary.output}: {summary.encoder_tensors} encoder tensors from {args.checkpoint}, "
          f"{summary.decoder_tensors} decoder tensors at nnU-Net's initialisation, {summary.input_channels} input "
          f"channel(s); train with nnUNetv2_train ... -pretrained_weights {summary.output}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    raise SystemExit(main())
