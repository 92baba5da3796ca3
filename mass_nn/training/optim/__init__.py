"""Optimisation for MASS pretraining: the LAMB optimiser, per-iteration learning-rate schedules and an EMA copy
of the model weights. Gradient clipping is plain torch.nn.utils.clip_grad_norm_."""
