"""Training: the loss goes down, checkpoints resume exactly, the result loads like any adapter, data errors."""
import json

import pytest
import torch

from ezigen_lib.checkpoint import load_adapter
from ezigen_lib.training.data import FolderDataset, TrainingDataError
from ezigen_lib.training.checkpoints import checkpoint_steps
from ezigen_lib.training.trainer import TrainSettings

from training_data import write_training_folder

from tiny_models import sample, tiny_model, tiny_vae, random_context
from tiny_models import tiny_trainer


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_training_folder(tmp_path_factory.mktemp("train-data"))


def eval_loss(trainer, batch) -> float:
    torch.manual_seed(123)
    trainer.rng.seed(123)
    with torch.no_grad():
        return sum(float(trainer.objective.loss(batch)) for _ in range(8)) / 8


@pytest.mark.slow
def test_loss_decreases(folder, tmp_path):
    trainer = tiny_trainer(folder, tmp_path, steps=40, learning_rate=2e-3, save_every=0, batch_size=2)
    batch = next(trainer.batches())
    before = eval_loss(trainer, batch)
    trainer.run()
    after = eval_loss(trainer, batch)
    assert after < 0.9 * before, (before, after)


def test_checkpoint_resume_continues_exactly(folder, tmp_path):
    full = tiny_trainer(folder, tmp_path / "full", steps=4, save_every=2, learning_rate=1e-3)
    full.run()
    assert checkpoint_steps(tmp_path / "full") == [2, 4]
    resumed = tiny_trainer(folder, tmp_path / "resumed", steps=4, save_every=0, learning_rate=1e-3)
    resumed.resume(tmp_path / "full" / "checkpoint-2")
    assert resumed.step == 2  # the reference restarts its count at 0
    resumed.run()
    assert resumed.step == 4
    for key, value in full.adapters.state_dict().items():
        torch.testing.assert_close(resumed.adapters.state_dict()[key], value, atol=1e-6, rtol=1e-6)
    latest = tiny_trainer(folder, tmp_path / "full", steps=4)
    latest.resume(tmp_path / "full" / "latest")
    assert latest.step == 4


def test_trained_adapter_loads_like_any_adapter_and_changes_the_output(folder, tmp_path):
    from ezigen_lib.capture import encode_subject
    from ezigen_lib.encoder import load_encoder
    from ezigen_lib.inject import apply_subject

    trainer = tiny_trainer(folder, tmp_path, steps=2, save_every=0)
    out = trainer.run()
    weights = load_adapter(out)
    assert weights.metadata["training_steps"] == "2" and json.loads(weights.metadata["training_settings"])["steps"] == 2
    assert weights.info.head_dim == 32 and weights.info.widths == trainer.info.widths
    reference = load_adapter(trainer.export_reference_folder(tmp_path / "ref"))  # the reference's key layout
    assert set(reference.state_dict) == set(weights.state_dict)

    model = tiny_model(seed=7)
    encoder = load_encoder(out, model)
    with torch.inference_mode():
        subject = encode_subject(model, tiny_vae(), random_context(), torch.rand(1, 64, 64, 3), None, 0, 64,
                                 encoder.info.widths)
    patched = apply_subject(model, encoder, subject, 1.0, 0.0, 1.0)
    assert (sample(patched, steps=3) - sample(model, steps=3)).abs().max() > 1e-4


def test_dropout_settings():
    assert TrainSettings().effective_subject_dropout == 0.2
    assert TrainSettings(faithful=True).effective_subject_dropout == 0.8


def test_data_errors(tmp_path, folder):
    with pytest.raises(TrainingDataError, match="manifest.jsonl not found"):
        FolderDataset(tmp_path, 64)
    cases = {
        "{not json": "not JSON",
        '{"subject": "subject/0.png", "target": "target/0.png"}': "missing caption",
        '{"subject": "nope.png", "target": "target/0.png", "caption": "x"}': "subject file",
        "": "lists no examples",
    }
    for line, message in cases.items():
        bad = tmp_path / f"case{abs(hash(line))}"
        bad.mkdir()
        (bad / "subject").symlink_to(folder / "subject")
        (bad / "target").symlink_to(folder / "target")
        (bad / "manifest.jsonl").write_text(line + "\n")
        with pytest.raises(TrainingDataError, match=message):
            FolderDataset(bad, 64)


def run_two_processes(out, folder, *worker_args: str) -> list[dict]:
    """ddp_worker.py in two torchrun processes (CPU, gloo); each rank's step, world and adapter state."""
    import subprocess
    import sys
    from pathlib import Path

    worker = Path(__file__).with_name("ddp_worker.py")
    # its logs under out: by default torchrun leaves a torchelastic_* folder in /tmp at every run
    run = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                          "--log-dir", str(out / "torchrun-logs"),
                          str(worker), str(out), str(folder), *worker_args], capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    ranks = [torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1)]
    assert [r["step"] for r in ranks] == [3, 3] and [r["world"] for r in ranks] == [2, 2]
    for key, value in ranks[0]["state"].items():
        torch.testing.assert_close(ranks[1]["state"][key], value)  # averaged gradients: identical updates
    assert (out / "ezigen_adapter.safetensors").is_file()  # written once, by rank 0
    return ranks


@pytest.mark.slow
def test_two_processes_with_torchrun_stay_in_step(folder, tmp_path):
    run_two_processes(tmp_path, folder)


def test_bf16_autocast_and_gradient_checkpointing_train(folder, tmp_path):
    trainer = tiny_trainer(folder, tmp_path, steps=2, save_every=0, mixed_precision="bf16",
                           gradient_checkpointing=True)
    before = {k: v.clone() for k, v in trainer.adapters.state_dict().items()}
    losses = [trainer.train_step(batch) for batch, _ in zip(trainer.batches(), range(2))]
    assert all(torch.isfinite(torch.tensor(losses)))
    assert any(not torch.equal(before[k], v) for k, v in trainer.adapters.state_dict().items())
