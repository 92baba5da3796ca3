"""MASS pretraining: data pipeline, losses, optimisation and the training loop."""
