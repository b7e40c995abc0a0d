"""Training progress for the main job's cell bar (issue #18): the file a trainer writes, the line the bar shows."""
import json

import lightning as L
import pytest
import torch
from lightning.pytorch.callbacks import TQDMProgressBar
from torch.utils.data import DataLoader, TensorDataset

from ppllava.run_notebooks import show_training
from ppllava.train.config import TrainConfig
from ppllava.progress import PROGRESS_ENV, describe, eta_seconds, status_line
from ppllava.train.progress import ProgressFile
from ppllava.train.run import build_trainer


def test_eta_is_the_steps_left_at_the_rate_so_far():
    assert eta_seconds(10, 100, 20.0) == pytest.approx(180)
    assert eta_seconds(60, 100, 20.0, first_step=50) == pytest.approx(80)  # a resumed run: its own 10 steps
    assert eta_seconds(100, 100, 20.0) == 0
    assert eta_seconds(0, 100, 0.0) is None and eta_seconds(50, 100, 1.0, first_step=50) is None  # no step yet
    assert eta_seconds(10, float("inf"), 20.0) is None and eta_seconds(10, None, 20.0) is None


def test_describe_says_stage_steps_and_time_left():
    state = {"stage": "sft2", "step": 1200, "max_steps": 4690, "elapsed_s": 60.0, "eta_s": 174.4}
    assert describe(state) == "training sft2 1200/4690 steps, ~3 min left"
    assert describe({**state, "eta_s": 40.2}) == "training sft2 1200/4690 steps, ~40 s left"
    assert describe({**state, "step": 0, "eta_s": None}) == "training sft2 0/4690 steps"


MALFORMED = {"missing": None, "empty": "", "half-written": '{"stage": "sf', "not-an-object": "[1, 2]",
             "keys-missing": '{"stage": "sft2"}', "not-utf8": b"\xff\xfe{",
             "eta-a-string": '{"stage": "x", "step": 1, "max_steps": 2, "eta_s": "soon"}',
             "eta-nan": '{"stage": "x", "step": 1, "max_steps": 2, "eta_s": NaN}'}


@pytest.mark.parametrize("text", MALFORMED.values(), ids=MALFORMED.keys())
def test_a_missing_or_malformed_file_shows_no_line(tmp_path, text):
    path = tmp_path / ".progress.json"
    if isinstance(text, bytes):
        path.write_bytes(text)
    elif text is not None:
        path.write_text(text)
    assert status_line(path) == ""
    assert status_line(None) == ""  # the variable unset


class FakeBar:
    def __init__(self):
        self.postfix, self.refreshes = "old", 0

    def set_postfix_str(self, text, refresh=True):
        assert not refresh  # one redraw per tick, by refresh() below
        self.postfix = text

    def refresh(self):
        self.refreshes += 1


def test_the_tick_shows_the_written_state_then_clears_it(tmp_path):
    path, bar = tmp_path / ".progress.json", FakeBar()
    path.write_text(json.dumps({"stage": "sft2", "step": 1200, "max_steps": 4690, "elapsed_s": 60.0, "eta_s": 174.4}))
    show_training(bar, str(path))
    assert bar.postfix == "training sft2 1200/4690 steps, ~3 min left" and bar.refreshes == 1
    path.unlink()  # the stage ended
    show_training(bar, str(path))
    assert bar.postfix == "" and bar.refreshes == 2


class Toy(L.LightningModule):
    def __init__(self, fail_at: int = -1):
        super().__init__()
        self.layer, self.fail_at = torch.nn.Linear(2, 1), fail_at

    def training_step(self, batch, batch_idx):
        if batch_idx == self.fail_at:
            raise RuntimeError("failed on purpose")
        return self.layer(batch[0]).pow(2).mean()

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Reader(L.Callback):
    """Reads the file after each batch, after ProgressFile wrote it (callbacks run in list order)."""

    def __init__(self, path):
        self.path, self.states = path, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.states.append(json.loads(self.path.read_text()))


def fit(tmp_path, module, path):
    reader = Reader(path)
    trainer = L.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, default_root_dir=tmp_path, accelerator="cpu",
                        callbacks=[ProgressFile(path, "toy", every_s=0), reader])
    trainer.fit(module, DataLoader(TensorDataset(torch.randn(8, 2)), batch_size=2))
    return reader.states


def test_progress_file_follows_a_fit_and_is_removed_at_its_end(tmp_path):
    path = tmp_path / ".progress.json"
    states = fit(tmp_path, Toy(), path)
    assert [s["step"] for s in states] == [1, 2, 3]
    assert all(s["stage"] == "toy" and s["max_steps"] == 3 and s["elapsed_s"] >= 0 for s in states)
    assert states[-1]["eta_s"] == 0 and states[0]["eta_s"] >= 0
    assert not path.exists() and not list(tmp_path.glob("*.tmp"))


def test_progress_file_is_removed_when_training_fails(tmp_path):
    path = tmp_path / ".progress.json"
    with pytest.raises(RuntimeError, match="failed on purpose"):
        fit(tmp_path, Toy(fail_at=1), path)
    assert not path.exists()


def test_with_the_variable_set_the_trainer_writes_the_file_and_draws_no_bar(tmp_path, monkeypatch):
    cfg = TrainConfig(stage="sft2", preset="tiny", data=str(tmp_path), run_dir=str(tmp_path / "sft2"))
    monkeypatch.delenv(PROGRESS_ENV, raising=False)
    interactive = build_trainer(cfg, tmp_path / "sft2")
    assert isinstance(interactive.progress_bar_callback, TQDMProgressBar)
    assert not any(isinstance(c, ProgressFile) for c in interactive.callbacks)

    monkeypatch.setenv(PROGRESS_ENV, str(tmp_path / ".progress.json"))
    trainer = build_trainer(cfg, tmp_path / "sft2")
    assert trainer.progress_bar_callback is None
    written = [c for c in trainer.callbacks if isinstance(c, ProgressFile)]
    assert len(written) == 1 and written[0].path == tmp_path / ".progress.json" and written[0].stage == "sft2"
