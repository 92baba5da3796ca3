"""--schedule-epochs: the lr schedule laid out over a longer run than the one trained, so that a run cut to what fits
the machine's hour follows the longer run's lr step for step."""
import json

import pytest

from mass_nn.cli.train import build_parser, options_from_args
from mass_nn.errors import MassError
from mass_nn.training.metrics_log import read_metrics
from mass_nn.training.optim.schedules import PolyWithWarmup
from mass_nn.training.options import TrainingOptions
from mass_nn.training.run_training import run_training


def _options(**overrides) -> TrainingOptions:
    base = dict(mode="PRETRAIN", datasets=["990"], configuration="3d_cpu", epochs=2, iters_per_epoch=2,
                batch_size=1, num_workers=0, device="cpu", val_batches=1, lr=1e-3, extra={"num_tasks": 2})
    return TrainingOptions(**{**base, **overrides})


def test_a_run_stops_at_its_epochs_with_the_longer_schedules_lr(pretraining_roots):
    summary = run_training(_options(schedule_epochs=5, warmup_fraction=0.2, tag="horizon"), pretraining_roots)
    folder = pretraining_roots.results / summary["output_folder"]
    config = json.loads((folder / "run_config.json").read_text())
    assert config["epochs"] == 2 and config["schedule_epochs"] == 5
    assert (folder / "checkpoint_final.pt").is_file()
    longer = PolyWithWarmup(total_steps=10, warmup_steps=2, power=0.9)  # 5 epochs x 2 steps, 20 % warm-up
    recorded = [(r["global_step"], r["lr"]) for r in read_metrics(folder)]
    assert [step for step, _ in recorded] == [2, 4]
    for step, lr in recorded:
        assert lr == pytest.approx(1e-3 * longer(step), rel=1e-6)
    assert recorded[-1][1] > 0  # cut before the longer run's end: the lr has not decayed to 0


def test_a_schedule_shorter_than_the_run_is_refused_with_the_fix(pretraining_roots):
    with pytest.raises(MassError, match="--schedule-epochs 1 is shorter than --epochs 2"):
        run_training(_options(schedule_epochs=1, tag="short"), pretraining_roots)


def test_the_command_line_passes_the_horizon_to_pretraining_only():
    args = build_parser().parse_args(["PRETRAIN", "-d", "990", "--epochs", "10", "--schedule-epochs", "17"])
    assert options_from_args(args).schedule_epochs == 17
    assert options_from_args(build_parser().parse_args(["PRETRAIN", "-d", "990"])).schedule_epochs is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["FINETUNE", "-d", "990", "--schedule-epochs", "17"])
