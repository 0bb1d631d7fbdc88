"""``hydra/launcher=local_gpus``: a sweep on one machine, one job per GPU at a time.

Hydra discovers this package through the ``hydra_plugins`` namespace; the
launcher and its config live in :mod:`.launcher`, the per-job process in
:mod:`.worker`.
"""
