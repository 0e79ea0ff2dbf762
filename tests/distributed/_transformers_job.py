"""A Hugging Face ``Trainer`` fit on each rank of a two-process job (gloo, CPU)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch


def trainer_job(rank: int, world: int) -> dict[str, Any]:
    """Two ranks train a tiny BERT with the callback; rank 0's report file is returned."""
    import transformers

    from gradcheckup.integrations.transformers import GradcheckupCallback
    from tests.test_transformers import Examples, tiny_bert

    # What torchrun would set; the process group itself is already up (FileStore).
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT="0",
    )
    folder = Path(tempfile.mkdtemp())
    callback = GradcheckupCallback(report_path=folder / "grads.json")
    args = transformers.TrainingArguments(
        output_dir=str(folder / "out"),
        use_cpu=True,
        report_to=[],
        max_steps=3,
        logging_steps=3,
        per_device_train_batch_size=4,
        save_strategy="no",
        disable_tqdm=True,
        ddp_backend="gloo",
    )
    trainer = transformers.Trainer(
        model=tiny_bert(), args=args, train_dataset=Examples(), callbacks=[callback]
    )
    trainer.train()
    wrapped = type(trainer.model_wrapped).__name__
    report = json.loads((folder / "grads.json").read_text()) if rank == 0 else None
    return {"wrapped": wrapped, "report": report, "torch_ranks": torch.distributed.get_world_size()}
