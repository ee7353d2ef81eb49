"""Gradual magnitude pruning inside the Hugging Face ``Trainer``: a tiny BERT classifier (built
from a config, no download) learns whether a sequence contains a marker token, while the share
of pruned weights in its linear layers rises to 70% on a polynomial schedule.

``PrunekitTrainerCallback`` calls ``pruner.step()`` after every optimizer step and (with
``finalize=True``) bakes the masks in when training ends; ``callback.loss_with_penalty()`` is the
Trainer's ``compute_loss_func``: the classification loss plus ``pruner.penalty()``. With
checkpoints on (``save_strategy="steps"``) each one also holds the Pruner's state
(``prunekit_pruner.pt``), and ``trainer.train(resume_from_checkpoint=True)`` in a new process,
with the model, Pruner and callback built as here, goes on with the same masks and schedule.

Run:  .venv/bin/python examples/hf_trainer_tiny_bert.py     (needs: pip install prunekit[transformers]; ~10 s)
"""

from __future__ import annotations

import tempfile

import torch
from transformers import BertConfig, BertForSequenceClassification, Trainer, TrainingArguments

import prunekit
from prunekit.integrations.hf_trainer import PrunekitTrainerCallback
from prunekit.schedules import Polynomial

MARKER, VOCAB, LENGTH = 5, 40, 12


def marker_data(count: int, seed: int) -> list[dict]:
    """Token sequences; the label says whether MARKER occurs in the sequence (about half do)."""
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(MARKER + 1, VOCAB, (count, LENGTH), generator=generator)
    labels = torch.randint(0, 2, (count,), generator=generator)
    positions = torch.randint(0, LENGTH, (count,), generator=generator)
    ids[labels == 1, positions[labels == 1]] = MARKER
    return [{"input_ids": row, "labels": label} for row, label in zip(ids, labels)]


def accuracy(model: torch.nn.Module, examples: list[dict]) -> float:
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=torch.stack([example["input_ids"] for example in examples])).logits
    return float((logits.argmax(-1) == torch.stack([example["labels"] for example in examples])).float().mean())


def main(epochs: int = 6, sparsity: float = 0.7) -> dict:
    """Train and prune; returns the steps, the pruned share of the weights the Pruner targets and test accuracy."""
    torch.manual_seed(0)
    config = BertConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                        intermediate_size=64, max_position_embeddings=LENGTH, num_labels=2)
    model = BertForSequenceClassification(config)
    train_data, test_data = marker_data(512, seed=0), marker_data(256, seed=1)
    steps = epochs * len(train_data) // 32
    pruner = prunekit.Pruner(model, "magnitude", sparsity, scope="global",
                             schedule=Polynomial(begin_step=steps // 4, end_step=3 * steps // 4, frequency=4))
    callback = PrunekitTrainerCallback(pruner, finalize=True)
    with tempfile.TemporaryDirectory() as output_dir:
        args = TrainingArguments(output_dir=output_dir, per_device_train_batch_size=32, num_train_epochs=epochs,
                                 learning_rate=3e-3, save_strategy="no", report_to=[], logging_strategy="no",
                                 use_cpu=True, disable_tqdm=True, seed=0)
        trainer = Trainer(model=model, args=args, train_dataset=train_data, callbacks=[callback],
                          compute_loss_func=callback.loss_with_penalty())
        trainer.train()
    return {"steps": trainer.state.global_step, "sparsity": pruner.sparsity.achieved,  # of the weights it targets
            "accuracy": accuracy(model, test_data)}


if __name__ == "__main__":
    result = main()
    print(f"{result['steps']} steps: sparsity {result['sparsity']:.1%}, "
          f"test accuracy {result['accuracy']:.2%}")
