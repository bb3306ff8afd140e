"""Importers of published weights into modlisa's formats (no model code of their own; nothing is unpickled).

- ``sam_original``: an original segment-anything checkpoint (``sam_vit_b/l/h_*.pth``) -> a transformers
  ``SamModel`` (the key mapping of transformers' ``convert_sam_to_hf.py``, every key accounted for).
- ``lisa``: a LISA checkpoint folder (``LISAForCausalLM``: Llama LM, LLaVA projector, SAM in the original
  naming, ``text_hidden_fcs``) -> a modlisa export folder (``modlisa.weights.export``), which ``eval``,
  ``predict`` and ``train --init_from`` accept.
"""
