"""Converters that write raw datasets (nnU-Net v2 format) for mass_nn, and the synthetic phantom."""
