#!/bin/bash
# Convergence of Top-K 1% with EF / EControl with AdamW in an SGD-like regime (train.eps=0.01);
# see bench/RESULTS.md "Convergence in an SGD-like regime". Run from anywhere: OUT=/abs/dir bash bench/sgd_like_convergence.sh
cd "$(dirname "$0")/.." && mkdir -p "${OUT:-/tmp/sgdlike}"
for cfg in "dense|" "topk1ef|comm.compression.codec=topk comm.compression.ratio=0.01 comm.compression.error_control=ef comm.compression.warmup_steps=10" "topk1ec|comm.compression.codec=topk comm.compression.ratio=0.01 comm.compression.error_control=econtrol comm.compression.eta=0.1 comm.compression.warmup_steps=10" "topk1none|comm.compression.codec=topk comm.compression.ratio=0.01 comm.compression.warmup_steps=10"; do
  name=${cfg%%|*}; over=${cfg#*|}
  rm -rf ${OUT:-/tmp/sgdlike}/$name
  mpirun --allow-run-as-root --oversubscribe -np 4 --mca mpi_yield_when_idle 1 --mca btl_vader_single_copy_mechanism none build/condense train recipes/quickstart.yaml name=s out_dir=${OUT:-/tmp/sgdlike}/$name train.steps=200 train.eval_every=25 data.batch_size=4 train.threads=1 checkpoint.every=0 train.log_every=50 train.eps=0.01 $over > ${OUT:-/tmp/sgdlike}/log_$name.log 2>&1
  echo "$name $(grep '"val"' ${OUT:-/tmp/sgdlike}/$name/metrics.jsonl | tail -1)" >> ${OUT:-/tmp/sgdlike}/results.txt
done
