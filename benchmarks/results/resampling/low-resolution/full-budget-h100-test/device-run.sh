#!/bin/bash
# Session 8 device call (~9 min): everything starts at once, packed every 15 s, deadline LIMIT.
#  P issue 9: the 1 mm CV with the paper recipe (semicml-prel, supervised, supervised-100%; 12 runs)
#  E issue 10: low-resolution P = 0 vs 0.25, seeds 0-2, cpu profile, then resample_brats (2 mm, 0.7 mm test)
cd "$(dirname "$0")/.." && . .device/common.sh
T0=$(date +%s); LIMIT=${LIMIT:-480}
el() { echo $(( $(date +%s) - T0 )); }
DATA=$SEMICML_BRATS18
nvidia-smi > $OUT/gpu_util.txt 2>&1
python3 -c "import torch, semicml; print('torch', torch.__version__, torch.cuda.get_device_name(0))" || exit 5
mkdir -p /tmp/lowres /tmp/cvpaper
python3 -m semicml.cli benchmark benchmarks/brats18-cv-paper.yaml --out /tmp/cvpaper --jobs 12 --no-progress > /tmp/cvpaper/log.txt 2>&1 &
python3 -m semicml.cli prepare $DATA /tmp/lowres/store --modalities t2,t1ce --size 160 --workers 8 > /tmp/lowres/prep.log 2>&1
echo "lowres store at $(el) s"
lowres() {  # seed P
  local R=/tmp/lowres/run-s$1-p$2
  OMP_NUM_THREADS=2 python3 -m semicml.cli train /tmp/lowres/store --out $R --method semicml-prel --splits $DATA/splits.json \
    --profile cpu --labeled-fraction 0.1 --low-resolution $2 --seed $1 --device cuda > $R.log 2>&1 && \
  OMP_NUM_THREADS=2 python3 benchmarks/resample_brats.py --run $R --data $DATA --out /tmp/lowres/result-s$1-p$2 \
    --work /tmp/lowres/work-s$1-p$2 --skip-as-is --no-progress > /tmp/lowres/bench-s$1-p$2.log 2>&1
  echo "lowres s$1 p$2 rc=$? at $(el) s"
}
for S in 0 1 2; do for P in 0 0.25; do lowres $S $P & done; done
while pgrep -f "semicml.cli" >/dev/null || pgrep -f resample_brats >/dev/null; do
  sleep 15; pack lowres cvpaper
  nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader >> $OUT/gpu_util.txt 2>/dev/null
  echo "$(el) s: lowres $(ls /tmp/lowres/result-*/results.json 2>/dev/null | wc -l)/6 cvpaper $(ls /tmp/cvpaper/runs/*/seed0/*/result.json 2>/dev/null | wc -l)/12 load $(cut -d' ' -f1 /proc/loadavg)"
  [ $(el) -gt $LIMIT ] && { echo "deadline"; break; }
done
pkill -f "semicml.cli"; pkill -f resample_brats; sleep 1
timeout 30 python3 -m semicml.cli benchmark benchmarks/brats18-cv-paper.yaml --out /tmp/cvpaper --report-only > /tmp/cvpaper/report.txt 2>&1
pack lowres cvpaper
ls -la $OUT; echo "end at $(el) s"
