"""The files of a sweep directory: what one stage writes and another reads.

The stages of a sweep run on different machines at different times and share no
process; they meet only in the sweep directory. Its file formats live here, below
every stage, so that the launching stage and the run stage each import them and never
each other:

    manifest.py   sweep.json: the sweep, its tasks and their attempts (written by the launcher)
    written.py    the manifest this process last wrote, while the file is still that one
    payloads.py   .submitit/sweep_payload.*.pkl: what the tasks run, and their code snapshot
    pools.py      .pools/: a worker pool's claims and journals (written by the workers)
    runfiles.py   each run directory's files: metrics.json, history.csv, ... (written by the job;
                  read by the launcher, which skips configurations completed there, and by results)
"""
