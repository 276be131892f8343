#!/usr/bin/env bash
# The LLM2Vec recipe end to end on the bundled stories260K model, on the CPU, and the paper's ablation
# at micro scale: SICK-R (TEST split) Spearman of
#   Uni + mean (no training) | Bi + mean (no training) | Bi + MNTP | Bi + MNTP + SimCSE |
#   Bi + MNTP + supervised (SICK TRAIN entailment/contradiction triples)
# Data: WikiText-2 valid (MNTP documents; its sentences for SimCSE), SICK (assets/sick).
# Everything goes to $OUT (default build/micro_ablation); results.json feeds scripts/plot_ablation.py.
#
# usage: scripts/micro_ablation.sh [--steps-scale X]   (X multiplies every stage's step count; default 1)
set -euo pipefail
cd "$(dirname "$0")/.."

SCALE=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --steps-scale) SCALE="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "micro_ablation.sh: unknown option $1" >&2; exit 2 ;;
  esac
done
steps() { awk -v n="$1" -v s="$SCALE" 'BEGIN { v = int(n * s + 0.5); print (v < 1 ? 1 : v) }'; }

BIN=build/llm2vec
MODEL=assets/stories260K/stories260K.bin
TOK=assets/stories260K/tok512.bin
SICK=assets/sick/SICK.txt
OUT=${OUT:-build/micro_ablation}
SEED=${SEED:-42}

[[ -x $BIN ]] || { echo "micro_ablation.sh: $BIN is missing (run make)" >&2; exit 1; }
mkdir -p "$OUT"
# Recomputation (on by default, as llm2vec) saves memory this small model does not need; it changes no bit.
COMMON=(--model_name_or_path "$MODEL" --tokenizer "$TOK" --seed "$SEED" --overwrite_output_dir true
        --save_merged_model false --logging_steps 25 --gradient_checkpointing false)

echo "== data"
$BIN prepare --tokenizer "$TOK" --input assets/wikitext-2/wiki.valid.raw --out "$OUT/data/wiki" --quiet
# SimCSE sentences: WikiText paragraphs cut at " . " (a crude splitter; WikiText is pre-tokenized).
grep -v '^ = ' assets/wikitext-2/wiki.valid.raw |
  awk '{ n = split($0, a, / \. /); for (i = 1; i <= n; i++) { s = a[i]; gsub(/^ +| +$/, "", s);
         if (length(s) > 30 && length(s) < 120) print s " ." } }' > "$OUT/data/sentences.txt"
$BIN prepare --tokenizer "$TOK" --input "$OUT/data/sentences.txt" --format sentences --out "$OUT/data/sentences" --quiet
$BIN prepare --tokenizer "$TOK" --input "$SICK" --format sick --out "$OUT/data/sick" --quiet

echo "== MNTP"
$BIN train "${COMMON[@]}" --stage mntp --dataset_file_path "$OUT/data/wiki-*.bin" --output_dir "$OUT/mntp" \
  --max_steps "$(steps 150)" --per_device_train_batch_size 8 --max_seq_length 64 --learning_rate 1e-3 \
  --warmup_steps 10 --lora_r 8 --mask_token_type '<0x5F>'
echo "== SimCSE (on the merged MNTP model)"
$BIN train "${COMMON[@]}" --stage simcse --peft_model_name_or_path "$OUT/mntp" \
  --dataset_file_path "$OUT/data/sentences-*.bin" --output_dir "$OUT/simcse" \
  --max_steps "$(steps 150)" --per_device_train_batch_size 32 --max_seq_length 48 --learning_rate 1e-3 \
  --warmup_steps 10 --lora_r 8
echo "== supervised (on the merged MNTP model)"
$BIN train "${COMMON[@]}" --stage supervised --peft_model_name_or_path "$OUT/mntp" \
  --dataset_file_path "$OUT/data/sick-*.bin" --output_dir "$OUT/supervised" \
  --max_steps "$(steps 100)" --per_device_train_batch_size 8 --learning_rate 1e-3 --warmup_steps 10 --lora_r 8

echo "== supervised with NV-Embed's latent-attention pooling (NV-Embed's sizes: 512 latents, 8 heads)"
$BIN train "${COMMON[@]}" --stage supervised --peft_model_name_or_path "$OUT/mntp" \
  --dataset_file_path "$OUT/data/sick-*.bin" --output_dir "$OUT/supervised_latent" \
  --max_steps "$(steps 100)" --per_device_train_batch_size 8 --learning_rate 1e-3 --warmup_steps 10 --lora_r 8 \
  --pooling_mode latent_attention

echo "== SICK-R (TEST)"
evaluate() {  # name, json, log, eval options...
  local name=$1 json=$2 log=$3; shift 3
  $BIN eval sts --data "$SICK" --split TEST --quiet --json-out "$OUT/$json" "$@"
  ROWS+=("$name|$OUT/$json|$log")
}
ROWS=()
evaluate "Uni + mean" uni.json "" --model "$MODEL" --tokenizer "$TOK" --causal
evaluate "Bi + mean" bi.json "" --model "$MODEL" --tokenizer "$TOK"
evaluate "Bi + MNTP" mntp.json "$OUT/mntp/train_log.jsonl" --model "$OUT/mntp"
evaluate "Bi + MNTP + SimCSE" simcse.json "$OUT/simcse/train_log.jsonl" --model "$OUT/simcse"
evaluate "Bi + MNTP + supervised" supervised.json "$OUT/supervised/train_log.jsonl" --model "$OUT/supervised"
evaluate "Bi + MNTP + supervised, latent" supervised_latent.json "$OUT/supervised_latent/train_log.jsonl" \
  --model "$OUT/supervised_latent"

# results.json and the table
{
  printf '{"model": "stories260K", "command": "make run (scripts/micro_ablation.sh --steps-scale %s)", "rows": [' "$SCALE"
  sep=""
  for row in "${ROWS[@]}"; do
    IFS='|' read -r name json log <<< "$row"
    rho=$(sed -n 's/.*"spearman": *\([-0-9.eE+]*\).*/\1/p' "$json")
    if [[ -n $log ]]; then log="\"$log\""; else log=null; fi
    printf '%s{"name": "%s", "spearman": %s, "log": %s}' "$sep" "$name" "$rho" "$log"
    sep=", "
  done
  printf ']}\n'
} > "$OUT/results.json"

echo
echo "SICK-R (TEST, 4,906 pairs) Spearman x 100, stories260K (260K parameters), CPU, seed $SEED:"
printf '| %-30s | %8s |\n' "model" "SICK-R"
printf '|%s|%s|\n' "--------------------------------" "----------"
for row in "${ROWS[@]}"; do
  IFS='|' read -r name json _ <<< "$row"
  rho=$(sed -n 's/.*"spearman": *\([-0-9.eE+]*\).*/\1/p' "$json")
  printf '| %-30s | %8.2f |\n' "$name" "$(awk -v r="$rho" 'BEGIN { print 100 * r }')"
done
echo
echo "results: $OUT/results.json; plot: scripts/.venv/bin/python scripts/plot_ablation.py --results $OUT/results.json --out $OUT/ablation.png"
