"""Deploying a pruned model: ONNX export, compressed storage, sparse-kernel inference on CPU.

* ``prunekit.deploy.codec``: tensors stored by their nonzeros (bitmask or CSR + values, fp16);
  the prunekit checkpoint format uses it for ``save_checkpoint(..., storage="sparse")``.
* ``prunekit.deploy.storage``: ``save_compressed`` / ``compress_checkpoint`` with a size report.
* ``prunekit.deploy.onnx_export``: ``export_onnx``, checked in onnxruntime against torch.
* ``prunekit.deploy.sparse_inference``: ``sparse_inference``, sparse Linear layers run with sparse
  kernels (``prunekit.deploy.sparse_linear.SparseLinear``) wherever that is measured to be faster.

This package imports none of its modules itself: ``checkpoint.py`` (below ``storage.py``) reads
the codec, so importing them all here would make a cycle. ``prunekit`` exports the public names.
"""
