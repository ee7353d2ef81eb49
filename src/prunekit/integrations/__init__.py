"""Drive a :class:`prunekit.Pruner` from other training frameworks (optional extras).

Nothing here is imported eagerly: import the module for the framework you use, which needs that
framework installed (``pip install prunekit[lightning]`` or ``prunekit[transformers]``).

* :mod:`prunekit.integrations.lightning`: ``PrunekitLightningCallback`` for PyTorch Lightning.
* :mod:`prunekit.integrations.hf_trainer`: ``PrunekitTrainerCallback`` for the Hugging Face ``Trainer``.

Both step the Pruner once after every optimizer step (as ``pruner.step()`` in a hand-written
loop), can ``finalize()`` it when training ends, and keep its state in the framework's
checkpoints, so that a run resumed into a fresh model goes on with the same masks and schedule;
the sparsity penalty joins the loss where the framework computes it (see each module).
"""
