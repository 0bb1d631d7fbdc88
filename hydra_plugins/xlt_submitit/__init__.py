"""``hydra/launcher=slurm``: hydra-submitit-launcher's Slurm launcher, with a
job that did not end ok (stopped, failed) a failed submitit job.

Hydra discovers this package through the ``hydra_plugins`` namespace;
``conf/hydra/launcher/slurm.yaml`` names :class:`.launcher.SlurmLauncher`.
"""
