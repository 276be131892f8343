#!/usr/bin/env bash
# Regenerates test/fixtures/export/: what `llm2vec train` exports (MNTP adapter, then a SimCSE adapter
# trained on top of it) checked against Python's peft + llm2vec, which load it and embed the same token
# ids. Run by hand from anywhere (needs the Python venv of scripts/requirements.txt; CI never runs it):
#
#   scripts/make_export_fixture.sh [WORK_DIR]     # default WORK_DIR: a fresh mktemp -d, kept at the end
#
# Steps (all on the CPU backend, stories260K, fixed seeds, so a rerun gives the same files):
#   1. build build/llm2vec and build/test/test_export
#   2. prepare: the first 300 lines of WikiText-2 valid (MNTP documents) and 200 SICK sentences (SimCSE)
#   3. train mntp   (10 steps, lr 1e-3, r 4, mask token "<0x5F>", blocks of 64)      -> WORK/mntp
#   4. train simcse (10 steps, lr 1e-3, r 4, on top of WORK/mntp)                    -> WORK/simcse
#      and once more with --adapter_layout causal_lm                                 -> WORK/simcse_causal_lm
#   5. convert the base to a Hugging Face directory                                   -> WORK/base_hf
#   6. copy the two adapters, llm2vec_config.json and inputs.txt into test/fixtures/export/; the test
#      binary writes the left-padded batch our embed path builds for inputs.txt (batch.safetensors)
#   7. build/llm2vec embed --precision fp32 --model WORK/simcse (our CLI)                              -> WORK/ours.npy
#   8. scripts/check_export.py: PEFT/llm2vec load the chain, embed batch.safetensors, compare with
#      ours.npy and with WORK/*/merged; writes python_embeddings.npy and check_report.json
#   9. run build/test/test_export against the new fixture
# Paths given to `train` are relative to the repository root, so the committed adapter_config.json
# files name the base as "assets/stories260K/stories260K.bin" on every machine.
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$REPO"
WORK=${1:-$(mktemp -d /tmp/l2v_export.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
PY=${PYTHON:-scripts/.venv/bin/python}
OUT=test/fixtures/export
BASE=assets/stories260K/stories260K.bin
TOK=assets/stories260K/tok512.bin
echo "work directory: $WORK"

make build/llm2vec build/test/test_export

# 2. data
head -n 300 assets/wikitext-2/wiki.valid.raw > "$WORK/mntp.txt"
build/llm2vec prepare --tokenizer "$TOK" --input "$WORK/mntp.txt" --format wikitext --out "$WORK/data-mntp" --quiet
awk -F'\t' 'NR > 1 && NR <= 201 { print $2 }' assets/sick/SICK.txt > "$WORK/simcse.txt"
build/llm2vec prepare --tokenizer "$TOK" --input "$WORK/simcse.txt" --format sentences --out "$WORK/data-simcse" --quiet

# 3-4. the two stages (the defaults not given here: seed 42, linear decay, clipping 1.0, lora_alpha 2r,
# lora_dropout 0.05, bidirectional, mean pooling, adapter_layout llm2vec)
rm -rf "$WORK/mntp" "$WORK/simcse"
build/llm2vec train --torch_dtype float32 --stage mntp --model_name_or_path "$BASE" --tokenizer "$TOK" \
  --dataset_file_path "$WORK/data-mntp-*.bin" --output_dir "$WORK/mntp" \
  --max_steps 10 --learning_rate 1e-3 --lora_r 4 --mask_token_type "<0x5F>" --max_seq_length 64 \
  --per_device_train_batch_size 4 --logging_steps 5
build/llm2vec train --torch_dtype float32 --stage simcse --model_name_or_path "$BASE" --tokenizer "$TOK" \
  --peft_model_name_or_path "$WORK/mntp" \
  --dataset_file_path "$WORK/data-simcse-*.bin" --output_dir "$WORK/simcse" \
  --max_steps 10 --learning_rate 1e-3 --lora_r 4 --per_device_train_batch_size 8 --logging_steps 5

# the same SimCSE stage exported in the causal_lm layout (not committed; check_export.py loads it with
# PEFT on LlamaForCausalLM and compares it with the llm2vec-layout tensors)
rm -rf "$WORK/simcse_causal_lm"
build/llm2vec train --torch_dtype float32 --stage simcse --model_name_or_path "$BASE" --tokenizer "$TOK" \
  --peft_model_name_or_path "$WORK/mntp" \
  --dataset_file_path "$WORK/data-simcse-*.bin" --output_dir "$WORK/simcse_causal_lm" \
  --max_steps 10 --learning_rate 1e-3 --lora_r 4 --per_device_train_batch_size 8 --logging_steps 5 \
  --adapter_layout causal_lm --save_merged_model false

# 5. the base as transformers loads it
rm -rf "$WORK/base_hf"
build/llm2vec convert --model "$BASE" --out "$WORK/base_hf"

# 6. the fixture: adapters, llm2vec_config.json, inputs, our batch
rm -rf "$OUT"
mkdir -p "$OUT/mntp" "$OUT/simcse"
cp "$WORK/mntp/adapter_config.json" "$WORK/mntp/adapter_model.safetensors" "$OUT/mntp/"
cp "$WORK/simcse/adapter_config.json" "$WORK/simcse/adapter_model.safetensors" "$WORK/simcse/llm2vec_config.json" \
  "$OUT/simcse/"
cat > "$OUT/inputs.txt" <<'EOF'
The little girl played with her red ball in the park.
A small girl was playing in the park with a red ball.
Tom was sad.
The big dog ate his dinner in the kitchen and then went to sleep under the warm table.
A man is playing a guitar.
The sun was shining and the birds were singing.
EOF
L2V_EXPORT_WRITE_BATCH="$OUT/batch.safetensors" build/test/test_export --gtest_filter='Export.BatchIsOurs'

# 7. our embeddings through the CLI (reads WORK/simcse/llm2vec_run.json: base, tokenizer, adapter chain)
build/llm2vec embed --precision fp32 --model "$WORK/simcse" --input "$OUT/inputs.txt" --output "$WORK/ours.npy" --quiet

# 8. Python
"$PY" scripts/check_export.py --work "$WORK" --fixture "$OUT"

# 9. the C++ test against what was just written
build/test/test_export
du -ab "$OUT" | sort -k2
echo "total: $(du -sb "$OUT" | cut -f1) bytes (work directory kept: $WORK)"
