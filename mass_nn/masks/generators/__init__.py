"""Mask generators, chosen by name through mass_nn.registry.MASK_GENERATORS."""
