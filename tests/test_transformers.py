"""The Hugging Face callback (``gradcheckup.integrations.transformers``) in real
``Trainer.train`` runs of a tiny BERT on CPU: scalars in every training log (ahead of the
report_to callbacks), the Trainer's clipping bound, stopping, the final report."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import pytest
import torch

import gradcheckup as gcu
from gradcheckup.report_files import read_report
from tests.helpers import hook_count

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")
from gradcheckup.integrations.transformers import GradcheckupCallback  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore::FutureWarning", "ignore::DeprecationWarning")


class Examples(torch.utils.data.Dataset):
    """Random token sequences with random labels: gradients without any download."""

    def __init__(self, count: int = 64, length: int = 12, vocab: int = 100) -> None:
        generator = torch.Generator().manual_seed(0)
        self.input_ids = torch.randint(0, vocab, (count, length), generator=generator)
        self.labels = torch.randint(0, 2, (count,), generator=generator)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {
            "input_ids": self.input_ids[index],
            "attention_mask": torch.ones_like(self.input_ids[index]),
            "labels": self.labels[index],
        }


class Recorder(transformers.TrainerCallback):
    """Stands in for a report_to backend: records what each training log held."""

    def __init__(self) -> None:
        self.logs: list[dict[str, Any]] = []

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if logs and "loss" in logs:
            self.logs.append(dict(logs))


def tiny_bert() -> torch.nn.Module:
    config = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=32,
        num_labels=2,
    )
    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(config)


def train(
    tmp_path: Path,
    callbacks: list[Any],
    trainer_class: type = transformers.Trainer,
    model: torch.nn.Module | None = None,
    **arguments: Any,
) -> Any:
    options = {
        "output_dir": str(tmp_path / "out"),
        "use_cpu": True,
        "report_to": [],
        "max_steps": 12,
        "logging_steps": 4,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "save_strategy": "no",
        "disable_tqdm": True,
        **arguments,
    }
    trainer = trainer_class(
        model=model or tiny_bert(),
        args=transformers.TrainingArguments(**options),
        train_dataset=Examples(),
        callbacks=callbacks,
    )
    trainer.train()
    return trainer


class UnclippedTrainer(transformers.Trainer):
    """A Trainer whose clipping went missing (as in a custom loop that forgot it)."""

    def _clip_grad_norm(self, model: Any) -> None:
        return None


needs_clip_method = pytest.mark.skipif(
    not hasattr(transformers.Trainer, "_clip_grad_norm"),
    reason="this transformers clips inline, without Trainer._clip_grad_norm",
)


def test_scalars_reach_callbacks_before_it_and_the_log_history(tmp_path: Path) -> None:
    backend = Recorder()
    callback = GradcheckupCallback(report_path=tmp_path / "r.json", html_path=tmp_path / "r.html")
    trainer = train(tmp_path, [backend, callback])
    # Three training logs (steps 4, 8, 12), each with the scalars of its own 4 steps
    # (the Trainer clips every step to max_grad_norm=1.0 by default).
    assert len(backend.logs) == 3
    for logs in backend.logs:
        assert logs["gradcheckup/errors"] == 0.0
        assert logs["gradcheckup/step_norm"] > 0
        assert logs["gradcheckup/clipped_steps"] == 4.0
    history = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert [entry["step"] for entry in history] == [4, 8, 12]
    assert all("gradcheckup/depth_ratio" in entry for entry in history)
    report, notes = read_report(tmp_path / "r.json")
    assert not notes and len(report.steps) == 12
    assert "<!DOCTYPE html>" in (tmp_path / "r.html").read_text(encoding="utf-8")
    assert hook_count(trainer.model) == 0


def test_the_trainers_max_grad_norm_is_checked(tmp_path: Path) -> None:
    callback = GradcheckupCallback()
    train(tmp_path, [callback], max_grad_norm=0.05)
    report = callback.report
    assert report is not None and report.config.max_grad_norm == 0.05
    assert all(step.clip_calls for step in report.steps)
    assert not report.findings_of("missing_clipping")


@needs_clip_method
def test_steps_the_clipping_missed_are_errors(tmp_path: Path) -> None:
    callback = GradcheckupCallback()
    with pytest.warns(UserWarning, match=r"\[error\] missing_clipping"):
        train(tmp_path, [callback], trainer_class=UnclippedTrainer, max_grad_norm=0.05)
    assert callback.report is not None
    missing = callback.report.findings_of("missing_clipping")
    assert missing and "max_grad_norm=0.05" in missing[0].message


@needs_clip_method
def test_stop_on_error_stops_training_at_the_first_log(tmp_path: Path) -> None:
    callback = GradcheckupCallback(stop_on="error")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        trainer = train(tmp_path, [callback], trainer_class=UnclippedTrainer, max_grad_norm=0.05)
    assert trainer.state.global_step == 4
    assert callback.stop_reason is not None
    assert callback.stop_reason.startswith("gradcheckup stopped training at step 4")
    messages = [str(w.message) for w in caught if "gradcheckup" in str(w.message)]
    assert sum("missing_clipping" in m and m.startswith("gradcheckup: ") for m in messages) == 1


def test_a_users_bound_wins_and_no_clipping_means_no_bound(tmp_path: Path) -> None:
    own = GradcheckupCallback(gcu.Config(max_grad_norm=2.0))
    train(tmp_path, [own], max_steps=4)
    assert own.report is not None and own.report.config.max_grad_norm == 2.0
    unclipped = GradcheckupCallback()
    train(tmp_path, [unclipped], max_steps=4, max_grad_norm=0.0)
    assert unclipped.report is not None and unclipped.report.config.max_grad_norm is None


def test_the_callback_asks_the_calling_trainer_for_its_ddp_wrapper(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gradcheckup.integrations import transformers as integration

    asked: list[Any] = []
    original = integration.data_parallel_wrapper

    def recording(trainer: Any) -> Any:
        asked.append(trainer)
        return original(trainer)

    monkeypatch.setattr(integration, "data_parallel_wrapper", recording)
    trainer = train(tmp_path, [GradcheckupCallback()], max_steps=2, logging_steps=1)
    # One process: the Trainer wraps nothing, so there is no wrapper to measure through.
    assert asked == [trainer] and original(trainer) is None
