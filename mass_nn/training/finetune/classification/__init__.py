"""Frozen-encoder classification probe (mass_train FINETUNE -tr ClassificationProbe): case selection, labels, batches, loss, settings, the trainer and its report."""
