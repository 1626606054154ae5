#!/usr/bin/env bash
# The GPU check (issue 12): paper recipe (--profile paper: 160 x 160, width 32, bf16 autocast,
# channels_last) on the 16 shared BraTS cases; results in benchmarks/results/gpu-<gpu name>/.
#
#   bash benchmarks/gpu_check.sh [--data DIR] [--work DIR] [extra options of gpu_check.py]
#
# On a machine without CUDA it runs on the CPU; CI runs it with `--profile tiny` on a phantom.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
exec "${PYTHON:-python}" "$here/gpu_check.py" "$@"
