"""The ``transformers`` code of the models that GPT-2's own classes cannot run (softplus attention, other position
encodings, a length scale).

``export-hf`` copies these files into the exported folder (``save_pretrained`` of classes registered for the auto
classes), so they import nothing of this package: torch and transformers only.
"""
