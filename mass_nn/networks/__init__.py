"""Network architectures only: the in-context segmentation network of MASS/Iris (a 3D ResUNet whose decoder is
conditioned on task embeddings), the baselines' networks (reconstruction UNet, contrastive encoder, ViT/MAE,
MiM, S3D, UNETR) and their heads. Nothing here reads checkpoints (that is mass_nn/model/).

Import from the submodules (`config`, `in_context_model`, `task_ops`, ...); this package imports nothing itself so
that loading a light submodule never builds the whole network stack.
"""
