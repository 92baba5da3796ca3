"""The throughput benchmark drives MASSPretrainer.train_step outside `run()`: its trainer must carry the same
resolved settings as one that `mass_train` builds (a missing default once broke the benchmark at clipping)."""
from __future__ import annotations

from benchmarks.pretraining_throughput import measure_step_rate
from benchmarks.pretraining_workspace import build_trainer
from mass_nn.training.optim.lr_scaling import scaled_learning_rate
from mass_nn.training.pretrain.mass_pretrainer import MASSPretrainer


def test_benchmark_trainer_has_the_trainer_defaults_and_steps(pretraining_roots):
    trainer = build_trainer(990, pretraining_roots, steps=2)
    options = trainer.options
    expected_lr = scaled_learning_rate(MASSPretrainer.default_lr, options.batch_size, MASSPretrainer.lr_reference_batch,
                                       MASSPretrainer.default_lr_scaling)
    assert (options.lr, options.grad_clip) == (expected_lr, MASSPretrainer.default_grad_clip)
    assert options.global_batch_size == options.batch_size
    assert (options.epochs, options.iters_per_epoch) == (1, 2)
    assert measure_step_rate(trainer, 1) > 0
