#!/bin/bash
# issue 10: low-resolution simulation; baseline vs p=0.25, same code, same seed
set -e
. /work/main/.venv/bin/activate
export PYTHONPATH=/work/exp/lowres/src
D=/work/shared/data/brats18
W=/work/exp/lowres
cd $W
[ -d store ] || semicml prepare $D store --modalities t2,t1ce --target wt --size 128
for P in 0.25 0; do
  R=run-p$P
  if [ ! -f $R/run.json ] || ! grep -q '"finished"' $R/run.json 2>/dev/null; then
    if [ -f $R/checkpoint.pt ]; then RES=--resume; else RES=; fi
    semicml train store --out $R --method semicml-prel --splits $D/splits.json --profile cpu --width 8 \
      --iterations 200 --val-every 25 --labeled-fraction 0.1 --low-resolution $P $RES > $R.log 2>&1 || true
  fi
  python /work/main/benchmarks/resample_brats.py --run $R --data $D --out $W/result-p$P --work $W/work-p$P \
     --engine onnxruntime --skip-as-is --no-progress > $W/bench-p$P.log 2>&1
done
echo done
