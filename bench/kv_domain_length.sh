#!/usr/bin/env bash
# Domain or length? Trained KV compressors of SmolLM2-135M lose far more on Debian fortunes text
# than on GCIDE (bench/RESULTS.md, "KV-cache compression: out of domain"), but that text was also
# 2029 tokens long where training used 128-token windows. This scores each model on a 2 x 2 grid,
# GCIDE and fortunes held-out text at 128- and 1024-token windows (eval --reference: perplexity,
# KL from the original, top-1 agreement), and heals the svd-merged 3 -> 1 KV heads once more on
# the two corpora's training documents mixed, at 512-token windows, to see what broader and
# longer training buys.
#
#   bash bench/kv_domain_length.sh [stages]     stages: data,heal,eval (default: all three)
#
# Inputs (env, defaults those of bench/out): ORIG the imported model, GCIDE its GCIDE token store,
# MERGED the svd-merged checkpoint to heal, MODELS "name=checkpoint[:--eval-option=value]" words to score
# besides the new heal; OUT the output directory. Threads: one per eval (OMP_NUM_THREADS=1).
set -euo pipefail
cd "$(dirname "$0")/.."
STAGES=${1:-data,heal,eval}
C=${CONDENSE:-build/condense}
ORIG=${ORIG:-bench/out/smollm2/smollm2.h5}
GCIDE=${GCIDE:-bench/out/smollm2/gcide-smollm2.h5}
MERGED=${MERGED:-bench/out/kv_smollm2_fidheal/merge_svd_kv1.h5}
FID=bench/out/kv_smollm2_fidheal
MODELS=${MODELS:-"svd-heal-gcide128=$FID/heal_svd_kv1/checkpoints/step_000150.h5 mkv-r32-gcide128=$FID/matryoshka/checkpoints/step_000150.h5:--kv-rank=32"}
OUT=${OUT:-bench/out/kv_domain_length}
mkdir -p "$OUT"
FORT="$OUT/fortunes-smollm2.h5"
has() { [[ ",$STAGES," == *",$1,"* ]]; }

if has data; then
  # The model's own tokenizer (its checkpoint names it), 4000 fortunes, 5% held out.
  [[ -f $FORT ]] || "$C" prepare --corpus fortunes --max-documents 4000 --tokenizer "$ORIG" \
      --val-fraction 0.05 --out "$FORT"
  [[ -f $OUT/hf/tokenizer.json ]] || "$C" export "$ORIG" "$OUT/hf" --format hf
  # The mixture: both stores' training documents only, so neither held-out split is trained on.
  [[ -d $OUT/mix_text ]] || .venv/bin/python tools/store_documents.py \
      --tokenizer "$OUT/hf/tokenizer.json" --out "$OUT/mix_text" gcide="$GCIDE" fortunes="$FORT"
  [[ -f $OUT/mix.h5 ]] || "$C" prepare --corpus dir --path "$OUT/mix_text" --tokenizer "$ORIG" \
      --val-fraction 0.01 --out "$OUT/mix.h5"
fi

if has heal; then
  # The GCIDE heal's recipe (recipes/heal_kv_heads.yaml through kv_compress.py: 150 steps, lr
  # 3e-4, pure distillation from the original) on the mixture at 512-token windows, 2 per step.
  "$C" train recipes/heal_kv_heads.yaml init="$MERGED" distill.teacher="$ORIG" \
      out_dir="$OUT/heal_mix512" name=heal_mix512 data.dataset="$OUT/mix.h5" data.seq_len=512 \
      data.batch_size=2 train.steps=150 train.lr=3e-4 train.min_lr=3e-5 train.warmup_steps=10 \
      train.eval_every=0 checkpoint.every=50 --resume
fi

if has eval; then
  score() {  # name checkpoint [extra eval args]
    local name=$1 ck=$2; shift 2
    for data in "$GCIDE" "$FORT"; do
      for T in 128 1024; do
        local B=8; [[ $T == 1024 ]] && B=2
        local ref=(--reference "$ORIG"); [[ $ck == "$ORIG" ]] && ref=()
        printf '%s\t%s\t%s\t' "$name" "$(basename "$data" .h5)" "$T"
        OMP_NUM_THREADS=1 "$C" eval "$ck" --data "$data" --seq-len "$T" --batch-size 4 \
            --batches "$B" "${ref[@]}" "$@" 2>/dev/null
      done
    done
  }
  {
    score original "$ORIG"
    for m in $MODELS; do
      name=${m%%=*} rest=${m#*=}
      if [[ $rest == *:* ]]; then score "$name" "${rest%%:*}" "${rest#*:}"; else score "$name" "$rest"; fi
    done
    score svd-heal-mix512 "$OUT/heal_mix512/checkpoints/step_000150.h5"
  } | tee "$OUT/grid.tsv"
fi
