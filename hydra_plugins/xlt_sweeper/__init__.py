"""``hydra/sweeper=xlt`` (xlt's default): Hydra's basic sweeper without
repeated jobs.

Hydra discovers this package through the ``hydra_plugins`` namespace; the
sweeper and its config live in :mod:`.sweeper`.
"""
