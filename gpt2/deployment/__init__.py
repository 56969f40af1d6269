"""Deployment: export a checkpoint to ONNX, check it against PyTorch, build a TensorRT engine, benchmark.

``python -m gpt2 deploy CHECKPOINT`` (:mod:`gpt2.commands.deploy`) runs the stages of :mod:`.pipeline`. The
exports are read and run by :mod:`gpt2.inference` (``evaluate --backend`` / ``generate --backend``). Heavy
dependencies (onnx, onnxruntime, tensorrt) are imported only when used.
"""
