"""The in-context segmentation network of MASS/Iris: a 3D ResUNet whose decoder is conditioned on task embeddings.

Import from the submodules (`config`, `in_context_model`, `task_ops`, ...); this package imports nothing itself so
that loading a light submodule never builds the whole network stack.
"""
