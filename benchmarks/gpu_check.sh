#!/usr/bin/env bash
# The GPU checks, in a few minutes, on a machine with a CUDA GPU: the CNN tests with the GPU
# visible (everything that trains with trainer.device=auto then runs on CUDA, and the
# CUDA-only tests run: 2-rank NCCL training where 2 GPUs are visible), then the training
# throughput on the GPU (fp32, bf16, auto, auto + torch.compile against a plain PyTorch loop),
# ending with a table that names the card, then the image-folder path at 150x150: training
# images/s with the real loader streaming from the decoded-image cache (pinned buffers,
# non_blocking copies) against the data already on the GPU.
#
# From a fresh checkout, with a CUDA build of torch installed (this script installs nothing):
#     pip install -e '.[test]'        # or: pip install torch==2.13.0 -e '.[test]' where that is a CUDA build
#     benchmarks/gpu_check.sh [--quick]
#
# Exit status: 0 when the tests pass and the throughput goals hold (workload precision=auto
# >= 2x the plain fp32 loop, batch 256 of 64x64 images; image folder streamed >= 0.9x the data
# on the GPU, batch 128 of 150x150), 1 otherwise. --quick: fewer steps and images (a smoke
# test; the goals are not enforced). The Python it calls runs on a CPU too (the test suite
# runs `data_pipeline.py --feed --device cpu --quick`; `bash -n` checks this script).
set -euo pipefail
cd "$(dirname "$0")/.."

quick=()
if [[ "${1:-}" == "--quick" ]]; then
    quick=(--quick)
fi

python - <<'EOF'
import sys

import torch

if not torch.cuda.is_available():
    sys.exit(f"gpu_check: no CUDA device visible (torch {torch.__version__}, CUDA build: {torch.version.cuda});"
             " run it on a GPU machine, with a CUDA build of torch")
for i in range(torch.cuda.device_count()):
    p = torch.cuda.get_device_properties(i)
    print(f"cuda:{i}  {p.name}, sm{p.major}{p.minor}, {p.total_memory / 2**30:.0f} GiB")
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}")
EOF

echo
echo "== tests, with the GPU visible"
tests_status=0
python -m pytest -q -p no:cacheprovider tests/test_cnn_model.py tests/test_cnn_data.py tests/test_cnn_train.py \
    tests/test_cnn_distributed.py tests/test_resume.py tests/test_cnn_stream.py || tests_status=$?

echo
echo "== training throughput on the GPU"
bench_status=0
python benchmarks/workload_throughput.py --device cuda --image-size 64 --batch 256 --compile ${quick[@]+"${quick[@]}"} \
    || bench_status=$?

echo
echo "== image folder at 150x150 on the GPU: streamed from the cache vs the data on the GPU"
feed_status=0
python benchmarks/data_pipeline.py --feed --device cuda --size 150 --batch 128 ${quick[@]+"${quick[@]}"} \
    || feed_status=$?

echo
echo "gpu_check: tests $([[ $tests_status == 0 ]] && echo passed || echo FAILED)," \
     "throughput goal $([[ $bench_status == 0 ]] && echo met || echo MISSED)," \
     "image-folder feed goal $([[ $feed_status == 0 ]] && echo met || echo MISSED)"
[[ $tests_status == 0 && $bench_status == 0 && $feed_status == 0 ]]
