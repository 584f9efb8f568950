"""train.py end to end on a tiny config: resumable after Ctrl-C and after SIGKILL (mid-save) to
the same bits, stops cleanly on a non-finite loss, and writes what a run directory promises."""
import json
import logging
import os
import signal
import shutil
import subprocess

import jax
import numpy as np
import pytest

import train
from configs.quickstart import get_config
from rundir.config_file import load_config
from rundir.metric_writers import read_metrics
from saved_runs import (ROOT, assert_bitwise_equal, final_state, finish, start, train_command,
                        unfinished_saves, wait_for)
from training import checkpoints

# The quick start's captions through MiniLM: a resumed run sees the text states the
# uninterrupted one saw (each caption is encoded alone, whatever shares its batch).
CONFIG = "configs/quickstart.py:tiny"
# Long enough that a signal sent after the first checkpoint arrives mid-run.
LONG_RUN = ["--config.train.num_steps=30", "--config.train.checkpoint_every=5",
            "--config.train.log_every=1", "--config.train.sample_every=0",
            "--config.optim.decay_steps=30"]


def start_training(workdir) -> subprocess.Popen:
  return start(train_command(CONFIG, workdir, *LONG_RUN))


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
  workdir = tmp_path_factory.mktemp("uninterrupted")
  finish(start_training(workdir))
  return final_state(workdir)


def test_ctrl_c_saves_and_the_run_resumes_to_the_same_bits(uninterrupted, tmp_path):
  # SIGTERM takes the same path (and test_multiprocess sends it to one process of two).
  process = start_training(tmp_path)
  wait_for(lambda: os.path.isdir(tmp_path / "checkpoints" / "5"), process)
  process.send_signal(signal.SIGINT)
  output = finish(process)
  assert "stopped by SIGINT" in output and "Traceback" not in output
  stopped_at = max(checkpoints.saved_steps(tmp_path))
  assert 5 <= stopped_at < 30 and f"after step {stopped_at}, checkpoint saved" in output
  assert f"resumed from {tmp_path / 'checkpoints'} at step {stopped_at}" in finish(
      start_training(tmp_path))
  assert_bitwise_equal(final_state(tmp_path), uninterrupted)


def test_a_second_ctrl_c_stops_at_once():
  with train.TerminationRequest() as termination:
    os.kill(os.getpid(), signal.SIGINT)
    assert termination.requested == "SIGINT"
    with pytest.raises(KeyboardInterrupt, match="a second SIGINT"):
      os.kill(os.getpid(), signal.SIGINT)
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored


def test_a_second_train_py_on_a_workdir_in_use_exits_with_a_clear_error(tmp_path):
  from rundir.workdir_lock import WorkdirLock  # pylint: disable=g-import-not-at-top
  with WorkdirLock(str(tmp_path)):  # as a training process holds it
    second = subprocess.run(train_command(CONFIG, tmp_path, *LONG_RUN), cwd=ROOT,
                            capture_output=True, text=True, timeout=300)
  assert second.returncode != 0
  assert f"is in use by another train.py (pid {os.getpid()} on " in second.stderr
  assert "Traceback" not in second.stderr and not os.path.exists(tmp_path / "config.json")


def test_a_run_killed_while_saving_resumes_from_the_last_complete_step(uninterrupted, tmp_path):
  process = start_training(tmp_path)
  while True:  # until a save is caught in flight, after a complete one
    wait_for(lambda: checkpoints.saved_steps(tmp_path) and unfinished_saves(tmp_path), process,
             poll=0.001)
    process.send_signal(signal.SIGSTOP)  # frozen: is the save still unfinished?
    if unfinished_saves(tmp_path):
      break
    process.send_signal(signal.SIGCONT)  # it finished in between: catch the next one
  complete = max(checkpoints.saved_steps(tmp_path))
  process.kill()
  process.communicate()
  assert f"resumed from {tmp_path / 'checkpoints'} at step {complete}" in finish(
      start_training(tmp_path))
  assert not unfinished_saves(tmp_path)  # the interrupted save's folder is removed
  assert_bitwise_equal(final_state(tmp_path), uninterrupted)


def test_a_non_finite_loss_stops_with_a_clear_message_and_keeps_the_last_good_checkpoint(
    tmp_path):
  config = get_config("tiny,text=hashed_words")
  config.unlock()
  config.optim.lr = 1e30  # the updates blow the weights up within a few steps
  config.train.update(num_steps=30, checkpoint_every=1, log_every=1, sample_every=0)
  with pytest.raises(train.NonFiniteLossError,
                     match=r"non-finite .* at step \d+; the last good checkpoint, step \d+, is "
                           r"intact .*Lower optim.lr"):
    train.train(config, str(tmp_path))
  state = final_state(tmp_path)
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))
  logged = read_metrics(tmp_path)
  assert int(state.step) == logged[-1]["step"]  # the last step logged with a finite loss


def test_a_run_directory_holds_its_config_metrics_checkpoints_and_samples(tmp_path):
  config = get_config("tiny,text=hashed_words")
  state = train.train(config, str(tmp_path))
  assert int(state.step) == config.train.num_steps
  written = load_config(tmp_path)
  assert written.train.to_dict() == json.loads(config.to_json_best_effort())["train"]
  assert written.model.hidden_size == config.model.hidden_size
  metrics = read_metrics(tmp_path)
  every = (config.train.log_every, config.train.checkpoint_every)  # 2 and 3: logged at both
  assert [m["step"] for m in metrics] == [s for s in range(1, config.train.num_steps + 1)
                                          if s % every[0] == 0 or s % every[1] == 0]
  assert {"loss", "grad_norm", "lr", "steps_per_sec", "tokens_per_sec"} <= set(metrics[0])
  assert os.listdir(tmp_path / "tensorboard")
  samples = tmp_path / "samples" / f"step_{config.train.num_steps}"
  assert {"0.mp4", "0.gif", "1.mp4", "1.gif", "grid.png", "prompts.txt"} <= set(
      os.listdir(samples))
  # Running again finds the run finished: it restores and does no more steps.
  assert int(train.train(config, str(tmp_path)).step) == config.train.num_steps


def test_data_that_does_not_fit_the_model_is_rejected_before_training(tmp_path):
  config = get_config("tiny,text=hashed_words")
  config.unlock()
  config.data.kwargs.size = 32
  with pytest.raises(ValueError, match=r"videos of shape \(2, 32, 32, 1\).*make them agree"):
    train.train(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "checkpoints")


def test_a_changed_model_on_a_saved_run_is_an_error_that_changes_nothing(tiny_run, tmp_path):
  from rundir.open_run import open_run  # pylint: disable=g-import-not-at-top
  workdir = tmp_path / "run"
  shutil.copytree(tiny_run, workdir)
  before = (workdir / "config.json").read_bytes()
  config = get_config("tiny,text=hashed_words")
  config.unlock()
  config.train.sample_every = 0
  config.model.hidden_size = 64
  with pytest.raises(ValueError, match=r"(?s)cannot resume.*model.hidden_size: 32 -> 64.*new "
                                       r"--workdir"):
    train.train(config, str(workdir))
  assert (workdir / "config.json").read_bytes() == before
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]
  assert not os.path.exists(workdir / "config.1.json")
  with open_run(str(workdir)) as run:  # the run is as it was
    assert run.step == 6
  config.model.update(hidden_size=32, attention="block_sparse", dtype="bfloat16")  # runtime
  assert train.identity_changes(train.load_config(str(workdir)), config) == []


def test_a_run_saved_before_a_field_was_added_reads_as_it_ran(tiny_run, tmp_path):
  """model.prediction and sample.guidance_interval came after runs that predicted velocities
  and guided at every noise level: their config.json reads so, and asking such a run to
  predict data is a change of its identity, not a silent switch."""
  workdir = tmp_path / "run"
  shutil.copytree(tiny_run, workdir)
  saved = json.loads((workdir / "config.json").read_text())
  del saved["model"]["prediction"], saved["sample"]["guidance_interval"]
  (workdir / "config.json").write_text(json.dumps(saved))
  old = train.load_config(str(workdir))
  assert old.model.prediction == "velocity"
  assert tuple(old.sample.guidance_interval) == (0.0, 1.0)
  config = get_config("tiny,text=hashed_words")
  config.unlock()
  config.model.prediction = "data"
  assert train.identity_changes(old, config) == ["model.prediction: 'velocity' -> 'data'"]


def test_a_workdir_that_cannot_take_checkpoints_fails_at_the_start(tmp_path):
  config = get_config("tiny,text=hashed_words")
  (tmp_path / "checkpoints").write_text("a file where the folder should be")
  with pytest.raises(PermissionError, match=r"cannot write to .*checkpoints .*another --workdir"):
    train.train(config, str(tmp_path))
  if os.geteuid() != 0:  # root writes into read-only folders
    os.remove(tmp_path / "checkpoints")
    (tmp_path / "checkpoints").mkdir(mode=0o500)
    with pytest.raises(PermissionError, match="Permission denied"):
      train.train(config, str(tmp_path))
  assert not os.path.exists(tmp_path / "config.json")


def damage_truncated_array(step_folder):
  """Every array data file of the state cut to half its length (one cut file could hold only
  data that a restore does not read: a clean-clone CI run restored such a checkpoint)."""
  arrays = [os.path.join(folder, name) for folder, _, names in os.walk(step_folder / "state")
            for name in names if os.sep + "d" + os.sep in os.path.join(folder, name)]
  assert arrays
  for path in arrays:
    with open(path, "r+b") as f:
      f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize("damage", [damage_truncated_array])  # (missing data position: same path)
def test_a_damaged_latest_checkpoint_is_set_aside_and_the_run_resumes_from_the_previous(
    tiny_run, tmp_path, damage, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(tiny_run, workdir)
  damage(workdir / "checkpoints" / "6")
  # A save killed mid-write leaves a temporary folder: removed at the next start.
  shutil.copytree(workdir / "checkpoints" / "3",
                  workdir / "checkpoints" / "9.orbax-checkpoint-tmp-1234")
  config = get_config("tiny,text=hashed_words")
  config.unlock()
  config.train.sample_every = 0
  with caplog.at_level(logging.WARNING):
    state = train.train(config, str(workdir))
  broken = str(workdir / "checkpoints" / "6")
  assert any(f"checkpoint {broken} (step 6) does not restore" in r.getMessage()
             for r in caplog.records)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "6"]  # 6 saved again
  assert os.listdir(workdir / "checkpoints_damaged") == ["6"]  # kept, never deleted
  assert_bitwise_equal(state, final_state(tiny_run))  # trained 3 -> 6 again, the same bits


def test_a_changed_config_keeps_the_earlier_one(tmp_path):
  config = get_config("tiny,text=hashed_words")
  train.write_config(config, str(tmp_path))
  config.unlock()
  config.train.num_steps = 7
  train.write_config(config, str(tmp_path))
  assert load_config(tmp_path).train.num_steps == 7
  with open(tmp_path / "config.1.json") as f:
    assert '"num_steps": 6' in f.read()


def test_training_on_a_video_folder_skips_and_counts_an_unreadable_file(tmp_path):
  from data.video_io import write_gif
  videos = tmp_path / "videos"
  videos.mkdir()
  rng = np.random.default_rng(0)
  for i in range(8):
    write_gif(str(videos / f"clip_{i}.gif"), rng.integers(0, 255, (4, 20, 20, 3), np.uint8))
  (videos / "broken.mp4").write_bytes(b"not a video")
  config = get_config("tiny,text=hashed_words")
  config.unlock()
  config.data = dict(name="video_folder", num_threads=1,
                     kwargs=dict(root=str(videos), num_frames=2, size=(16, 16)))
  config.model.in_channels = 3
  config.train.update(num_steps=4, batch_size=8, sample_every=0)
  train.train(config, str(tmp_path / "run"))
  assert read_metrics(tmp_path / "run")[-1]["skipped_videos"] == 1
