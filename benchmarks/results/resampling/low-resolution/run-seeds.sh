#!/bin/bash
# issue 10: low-resolution simulation, more seeds (seed 0 is in ../lowres); same store and command
. /work/main/.venv/bin/activate
export PYTHONPATH=/work/exp/lowres2/src
D=/work/shared/data/brats18
W=/work/exp/lowres2
S=/work/exp/lowres/store
cd $W
for SEED in 1 2; do for P in 0 0.25; do
  R=run-s$SEED-p$P
  if ! grep -q '"finished"' $R/run.json 2>/dev/null; then
    if [ -f $R/checkpoint.pt ]; then RES=--resume; else RES=; fi
    /usr/bin/time -f "%e s wall" semicml train $S --out $R --method semicml-prel --splits $D/splits.json --profile cpu --width 8 \
      --iterations 200 --val-every 25 --labeled-fraction 0.1 --low-resolution $P --seed $SEED $RES > $R.log 2>&1 || true
  fi
  [ -f result-s$SEED-p$P/results.json ] || python /work/main/benchmarks/resample_brats.py --run $R --data $D --out $W/result-s$SEED-p$P --work $W/work-s$SEED-p$P \
     --engine onnxruntime --skip-as-is --no-progress > $W/bench-s$SEED-p$P.log 2>&1
done; done
echo done
