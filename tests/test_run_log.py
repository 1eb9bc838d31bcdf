"""What a run says and where: run.log beside run.json, the progress bar while probing, the cluster job in run.json."""

import logging
import sys

import pytest
import torch

import phases.training.execute as execute_module
from phases.store.identity import run_id
from phases.store.record import RunStatus, run_folder
from phases.training.data import dataset_info
from phases.training.evaluation import EvaluationStage, Evaluator
from phases.training.models import build_model
from phases.training.probes import OWN_DATASET, build_probes
from phases.training.provenance import provenance
from phases.training.run_log import LOGGER
from phases.training.train import train
from tests.test_hostile_runs import QUICK, quick_config, run_front_door


def file_handlers() -> list[logging.Handler]:
    return [handler for handler in LOGGER.handlers if isinstance(handler, logging.FileHandler)]


def test_a_run_logs_its_start_evaluations_and_end_to_run_log_and_the_terminal(data_dir, tmp_path, capsys):
    cfg = quick_config(data_dir, tmp_path / "outputs")
    folder = run_folder(cfg.paths.outputs, run_id(cfg))
    assert execute_module.execute(cfg).status == RunStatus.done
    lines = (folder / "run.log").read_text().splitlines()
    messages = [line.split(" INFO ", 1)[1] for line in lines]
    assert messages[0] == f"run {folder.name} started on cpu: 4 steps, writing to {folder}"
    assert [message.split(" evaluated")[0] for message in messages[1:-1]] == [
        f"run {folder.name}: step {step}" for step in (0, 1, 2, 4)]
    assert messages[-1].startswith(f"run {folder.name} done in ")
    assert capsys.readouterr().out.splitlines() == messages  # the terminal shows the same lines, without the time
    assert not file_handlers()  # closed with the run

    # Rerun from scratch (force): the same file goes on.
    execute_module.execute(quick_config(data_dir, tmp_path / "outputs", "force=true"))
    again = (folder / "run.log").read_text().splitlines()
    assert again[: len(lines)] == lines and sum(" started on cpu" in line for line in again) == 2


def test_a_failed_runs_error_and_traceback_are_in_its_run_log(data_dir, tmp_path, monkeypatch, capsys):
    def refuse(*_arguments, **_keywords):  # as torch.optim refuses a value our checks let through
        raise ValueError("Invalid momentum value: 7")

    monkeypatch.setattr(execute_module, "build_optimizer", refuse)
    outputs = tmp_path / "outputs"
    monkeypatch.setattr(sys, "argv", ["phases.run", *QUICK, f"paths.data_dir={data_dir}", f"paths.outputs={outputs}"])
    with pytest.raises(SystemExit) as exit_status:
        run_front_door()
    assert exit_status.value.code == 1
    (folder,) = (outputs / "runs").iterdir()
    log = (folder / "run.log").read_text()
    message = (f"error: run failed (ValueError: Invalid momentum value: 7); recorded in {folder / 'run.json'}; "
               "its traceback:")
    assert f"ERROR {message}\nTraceback (most recent call last):" in log
    assert ", in attempt\n" in log and ", in refuse\n" in log
    assert log.rstrip().endswith("ValueError: Invalid momentum value: 7")
    # The terminal: the message once, then the traceback Hydra prints for the error re-raised.
    stderr = capsys.readouterr().err
    assert stderr.count(message) == 1 and stderr.count("Traceback (most recent call last)") == 1
    assert not file_handlers()


def test_each_job_of_a_sweep_run_by_one_process_logs_to_its_own_file(data_dir, tmp_path, monkeypatch, capsys):
    def refuse(*_arguments, **_keywords):
        raise ValueError("Invalid momentum value: 7")

    monkeypatch.setattr(execute_module, "build_optimizer", refuse)
    outputs = tmp_path / "outputs"
    monkeypatch.setattr(sys, "argv", ["phases.run", "-m", *QUICK, f"paths.data_dir={data_dir}",
                                      f"paths.outputs={outputs}", "seed=0,1"])
    with pytest.raises(SystemExit) as exit_status:  # Hydra's basic launcher: both jobs in this process
        run_front_door()
    assert exit_status.value.code == 1  # after both jobs: a failed job does not stop the sweep
    folders = sorted((outputs / "runs").iterdir())
    assert len(folders) == 2
    for folder in folders:
        log = (folder / "run.log").read_text()
        other = next(each for each in folders if each != folder)
        assert f"run {folder.name} started on cpu" in log and other.name not in log
        assert f"error: run failed (ValueError: Invalid momentum value: 7); recorded in {folder / 'run.json'}\n" \
               "Traceback (most recent call last):" in log
    assert "Traceback" not in capsys.readouterr().err  # in a sweep, the traceback is in run.log and run.json only
    assert not file_handlers()


@pytest.fixture
def evaluation_parts(data_dir, tmp_path):
    cfg = quick_config(data_dir, tmp_path / "outputs")
    info = dataset_info(cfg.dataset)
    torch.manual_seed(0)
    model = build_model(cfg.arch, info)
    datasets = execute_module.load_datasets(cfg, torch.device("cpu"), None)
    return cfg, model, datasets, build_probes(cfg.probe, cfg.seed, info)


def test_an_evaluation_tells_each_layer_and_probe_before_fitting_it(evaluation_parts):
    cfg, model, datasets, probes = evaluation_parts
    evaluator = Evaluator(model, datasets, probes, cfg.probe, cfg.seed, cfg.schedule.batch_size)
    stages: list[EvaluationStage] = []
    rows = evaluator(stages.append)
    layers = model.resolve_points(None)  # probe.layers=null: every point
    # Point by point (each point's shared Gram is freed after its probes), every probe at each point.
    assert stages == [EvaluationStage("activations"),
                      *(EvaluationStage(probe.name, layer, number, len(layers))
                        for number, layer in enumerate(layers, start=1) for probe in probes),
                      EvaluationStage("sample_loss")]
    measured = {(row["probe"], row["layer"]) for row in rows if row["layer"] != "output"}
    assert measured == {(stage.task, stage.layer) for stage in stages if stage.layer is not None}
    assert str(stages[1 + 2 * len(probes)]) == f"layer 3/{len(layers)} reconstruction ({layers[2]})"


def test_the_progress_bar_says_which_probe_the_evaluation_is_at(evaluation_parts, capsys):
    cfg, model, datasets, _ = evaluation_parts
    shown = []

    def evaluate(step, epoch, show):
        show(f"layer 1/2 reconstruction (at {step})")
        shown.append(step)
        return 0.5

    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    train(model, optimizer, datasets[OWN_DATASET], cfg.schedule, cfg.seed, evaluate, progress=True)
    bar = capsys.readouterr().err
    assert shown == [0, 1, 2, 4]
    for step in shown:
        assert f"probing step {step}: layer 1/2 reconstruction (at {step})" in bar


def test_run_json_names_the_slurm_job_and_submitits_logs(tmp_path, monkeypatch):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID", "SUBMITIT_EXECUTOR", "SUBMITIT_FOLDER",
                 "_TEST_CLUSTER_"):
        monkeypatch.delenv(name, raising=False)
    outside = provenance("cpu")
    assert outside["slurm_job_id"] is None and outside["submitit_logs"] is None

    monkeypatch.setenv("SLURM_JOB_ID", "4242")  # an sbatch script, no submitit
    assert provenance("cpu")["slurm_job_id"] == "4242" and provenance("cpu")["submitit_logs"] is None
    monkeypatch.setenv("SLURM_ARRAY_JOB_ID", "4200")
    monkeypatch.setenv("SLURM_ARRAY_TASK_ID", "7")  # a task of an array: the id squeue shows
    assert provenance("cpu")["slurm_job_id"] == "4200_7"

    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")  # inside a submitit job, before its folder is known
    assert provenance("cpu")["submitit_logs"] is None  # never fails the run
    monkeypatch.setenv("SUBMITIT_FOLDER", str(tmp_path / "%j"))
    monkeypatch.setenv("SLURM_PROCID", "0")
    assert provenance("cpu")["submitit_logs"] == {"stdout": str(tmp_path / "4200_7" / "4200_7_0_log.out"),
                                                  "stderr": str(tmp_path / "4200_7" / "4200_7_0_log.err")}
