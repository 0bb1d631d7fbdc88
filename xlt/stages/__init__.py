"""The stages of one job, each a module: ``align`` (sample + word-align a
parallel corpus), ``adjust`` (Eq. 1), ``trainer`` (the Lightning Trainer from
config) and ``job`` (fine-tune, evaluate, write results).  Cache keys and
paths live in ``xlt.keys``; artifacts are built by ``xlt.artifacts``.
"""
