"""The learning rate follows the global batch by a stated rule, and the run records both (issue 17, item 6)."""
import json
import math

import pytest

from mass_nn.errors import MassError
from mass_nn.training.optim.lr_scaling import scaled_learning_rate
from mass_nn.training.options import TrainingOptions
from mass_nn.training.run_training import run_training


def test_rules_scale_from_the_reference_batch():
    assert scaled_learning_rate(2e-3, 32, 32, "sqrt") == pytest.approx(2e-3)
    assert scaled_learning_rate(2e-3, 2, 32, "sqrt") == pytest.approx(2e-3 * math.sqrt(2 / 32))
    assert scaled_learning_rate(2e-3, 8, 32, "linear") == pytest.approx(5e-4)
    assert scaled_learning_rate(2e-3, 8, 32, "none") == pytest.approx(2e-3)
    assert scaled_learning_rate(1e-4, 8, None, "sqrt") == pytest.approx(1e-4)  # no reference: never scaled
    with pytest.raises(MassError, match="choose one of sqrt, linear, none"):
        scaled_learning_rate(2e-3, 8, 32, "cubic")


def _run(paths, **options):
    summary = run_training(TrainingOptions(mode="PRETRAIN", datasets=["990"], configuration="3d_cpu", epochs=1,
                                           iters_per_epoch=1, batch_size=1, num_workers=0, device="cpu",
                                           val_batches=1, extra={"num_tasks": 2}, **options), paths)
    return json.loads((paths.results / summary["output_folder"] / "run_config.json").read_text())


@pytest.mark.slow  # about 16 s on 2 cores: keeps the default run under 10 minutes
def test_a_run_records_the_global_batch_and_the_scaled_lr(pretraining_roots, caplog):
    caplog.set_level("INFO")
    config = _run(pretraining_roots, tag="scaled")
    assert config["global_batch_size"] == 1 and config["lr_scaling"] == "sqrt"
    assert config["lr"] == pytest.approx(2e-3 * math.sqrt(1 / 32))
    assert "global batch 1, lr 0.000353553 (sqrt scaling of 0.002 at global batch 32)" in caplog.text
    given = _run(pretraining_roots, tag="given", lr=1e-3)
    assert given["lr"] == pytest.approx(1e-3) and given["lr_scaling"] == "none"
    linear = _run(pretraining_roots, tag="linear", lr_scaling="linear")
    assert linear["lr"] == pytest.approx(2e-3 / 32)


def test_the_request_is_not_changed_by_the_run(pretraining_roots):
    """The trainer resolves its own copy (configuration, lr, settings, masks): the caller's options stay as asked,
    so one request object can start several runs."""
    request = TrainingOptions(mode="PRETRAIN", datasets=["990"], epochs=1, iters_per_epoch=1, batch_size=1,
                              num_workers=0, device="cpu", val_batches=1, extra={"num_tasks": 2}, tag="request")
    asked = request.to_dict()
    summary = run_training(request, pretraining_roots)
    assert request.to_dict() == asked
    resolved = json.loads((pretraining_roots.results / summary["output_folder"] / "run_config.json").read_text())
    assert resolved["configuration"] == "3d_cpu" and resolved["lr"] is not None and resolved["masks"] is not None
    assert resolved["extra"]["num_tasks"] == 2 and "everything_task" in resolved["extra"]
    assert asked["configuration"] is None and asked["lr"] is None and asked["extra"] == {"num_tasks": 2}
