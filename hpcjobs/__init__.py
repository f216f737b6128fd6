"""hpcjobs: machine-learning experiment sweeps on Slurm clusters (and laptops)."""

__version__ = "0.1.0"
