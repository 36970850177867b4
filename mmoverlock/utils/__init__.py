"""Helpers outside the model: the checkpoint allow-list (``safe_load``) and what mmoverlock's tools share
(``runtime``: config task, device adaptation, ``--eval`` mapping)."""
