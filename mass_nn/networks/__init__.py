"""Network architectures only, grouped by role: `in_context/` (the MASS/Iris network: a 3D ResUNet whose decoder is
conditioned on task embeddings), `baselines/` (the baseline pretrainers' networks) and `heads/` (classification
heads); `conv_blocks.py` and `attention.py` are shared by all, `build.py` builds a registered network from its saved
configuration. Nothing here reads checkpoints (that is mass_nn/model/).

Import from the submodules (`config`, `in_context_model`, `task_ops`, ...); this package imports nothing itself so
that loading a light submodule never builds the whole network stack.
"""
