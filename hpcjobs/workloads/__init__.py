"""Workloads: the functions a run executes, each ``fn(cfg, ctx) -> dict`` of metrics.

A workload is named by a yaml in ``conf/workload/`` (``_target_``, and optionally a
torch-free ``preflight`` check run on the login node before submission). ``noop``
returns at once (launcher scale tests); ``cnn`` trains the seed image classifier.
"""
