"""Run identity: a hash of what differs from the schema's defaults, so new settings keep old ids."""

from dataclasses import dataclass

import pytest

from phases.config import schema
from phases.config.compose import compose
from phases.store.identity import result_settings, run_id

# The default run's id since PreciseBN's statistics come from one batch (issue 16: probe.bn_mode=precise_eval
# revision 2, which changed every precise_eval run's id, these three included); a change here re-runs every
# finished default run. With the classifier probe's L-BFGS not preconditioned (as before issue 16),
# ISSUE_14_RUN_ID (the published script's resize, the ridge chosen by generalised cross-validation, wide
# points probed on 4 images per feature); with the issue 11 settings, a bilinear resize and a ridge of 1e-3,
# BILINEAR_RUN_ID.
DEFAULT_RUN_ID = "fashion_mnist-vgg8-sgd-s0-f1067016"
BEFORE_ISSUE_16 = ["probe.linear.preconditioned=false"]
ISSUE_14_RUN_ID = "fashion_mnist-vgg8-sgd-s0-6b3c6d97"
BILINEAR_RUN_ID = "fashion_mnist-vgg8-sgd-s0-7167c6b3"
BEFORE_ISSUE_14 = [*BEFORE_ISSUE_16, "dataset.resize=bilinear", "probe.reconstruction.ridge=0.001",
                   "probe.min_images_per_feature=0"]


def test_the_default_runs_id_is_stable():
    assert run_id(compose()) == DEFAULT_RUN_ID


def test_a_new_setting_with_a_default_keeps_every_id(monkeypatch):
    before = {overrides: run_id(compose(list(overrides))) for overrides in [(), ("seed=3",), ("probe=paper",)]}

    @dataclass
    class ScheduleWithWarmup(schema.ScheduleConfig):
        warmup_steps: int = 0  # a setting added in a later version, at its default

    monkeypatch.setitem(schema.SCHEMAS, "schedule_schema", ScheduleWithWarmup)
    assert compose().schedule.warmup_steps == 0
    assert {overrides: run_id(compose(list(overrides))) for overrides in before} == before
    assert run_id(compose(["schedule.warmup_steps=100"])) != before[()]


@pytest.mark.parametrize("override", [
    "device=cpu", "progress=false", "force=true", "paths.outputs=/elsewhere", "probe.batch_size=7",
    "probe.max_activation_gb=1", "schedule.checkpoint_minutes=1",
    "probe.transfer.validation_fraction=0.5",  # transfer is not enabled
    "probe.reconstruction_conv.epochs=3",  # reconstruction_conv is not enabled
    "probe.reconstruction.ridge=gcv",  # the default, written out
])
def test_settings_that_cannot_change_results_keep_the_id(override):
    assert run_id(compose([override])) == DEFAULT_RUN_ID


@pytest.mark.parametrize("override", [
    "seed=1", "schedule.max_steps=4096", "probe.reconstruction.ridge=0.01", "arch.width=0.5",
    "probe.min_images_per_feature=8",
    "probe.enabled=[reconstruction,linear,transfer,sample_loss]", "probe.bn_mode=eval", "optimizer.lr=0.01",
])
def test_settings_that_change_results_change_the_id(override):
    assert run_id(compose([override])) != DEFAULT_RUN_ID


def test_calibration_size_counts_only_when_statistics_are_recomputed():
    assert run_id(compose(["probe.calibration_size=10"])) != DEFAULT_RUN_ID
    eval_mode = run_id(compose(["probe.bn_mode=eval"]))
    assert run_id(compose(["probe.bn_mode=eval", "probe.calibration_size=10"])) == eval_mode


def test_a_default_that_changed_what_runs_compute_changes_their_ids_but_not_the_old_ones():
    """dataset.resize came with a default (spline) other than what runs did before (bilinear): a finished
    bilinear run keeps its id and is never taken for a spline one."""
    assert run_id(compose(BEFORE_ISSUE_14)) == BILINEAR_RUN_ID != DEFAULT_RUN_ID
    assert run_id(compose(BEFORE_ISSUE_16)) == ISSUE_14_RUN_ID != DEFAULT_RUN_ID
    for changed in BEFORE_ISSUE_14:  # each alone makes a run of its own
        assert run_id(compose([changed])) not in (BILINEAR_RUN_ID, ISSUE_14_RUN_ID) or changed in BEFORE_ISSUE_16


def test_the_preconditioner_is_hashed_only_for_the_classifier_that_uses_it():
    assert "probe.linear.preconditioned" in result_settings(compose())
    assert "probe.linear.preconditioned" not in result_settings(compose(["probe=paper"]))
    transfer = ["probe.enabled=[transfer]"]
    assert "probe.transfer.classifier.preconditioned" in result_settings(compose(transfer))
    assert "probe.transfer.classifier.preconditioned" not in result_settings(
        compose([*transfer, "probe.transfer.classifier.solver=sgd"]))


def test_the_ridge_is_hashed_only_for_the_decoder_that_uses_it():
    assert "probe.reconstruction.ridge" in result_settings(compose())
    paper = result_settings(compose(["probe=paper"]))
    assert "probe.reconstruction.ridge" not in paper


def test_a_name_that_came_to_mean_another_network_is_hashed_with_its_revision():
    """arch=vgg11 was the standard VGG-11 and is now the published script's: its runs get new ids."""
    assert result_settings(compose(["arch=vgg11"]))["arch.name@revision"] == 2
    assert "arch.name@revision" not in result_settings(compose(["arch=vgg11_bn"]))
    # PreciseBN's statistics from one batch, no longer averaged over batches (issue 16): every precise_eval run.
    assert result_settings(compose())["probe.bn_mode@revision"] == 2
    assert "probe.bn_mode@revision" not in result_settings(compose(["probe.bn_mode=train"]))


def test_the_hashed_settings_name_what_is_built():
    assert result_settings(compose()) == {"dataset.name": "fashion_mnist", "dataset.resize": "spline",
                                          "dataset.mean": [0.281], "dataset.std": [0.352], "arch.name": "vgg8",
                                          "optimizer._target_": "torch.optim.SGD",
                                          "probe.reconstruction.ridge": "gcv", "probe.min_images_per_feature": 4.0,
                                          "probe.linear.preconditioned": True, "probe.bn_mode@revision": 2}
    assert result_settings(compose(["probe.bn_mode=train"]))["probe.bn_mode"] == "train"
