#!/usr/bin/env bash
# Profiles a few training steps of build/llm2vec_cuda with Nsight Systems and writes a text report of
# where the GPU time goes: kernel time by NVTX range (the backend marks layers, attention and MLP
# blocks, the LM head and the loss) and by kernel, and the CUDA API summary.
#   usage: scripts/profile_nsys.sh [OUT_DIR] [-- LLM2VEC_CUDA_ARGS...]
# OUT_DIR (default build/nsys) receives profile.nsys-rep and report.txt. Without arguments after --, the
# run is 5 MNTP steps on the bundled stories260K model (prepared from WikiText's validation split into
# OUT_DIR/data first): small enough for any GPU, but launch-bound and with head dim 8 (the SIMT
# attention); pass a real model's train command after -- to profile the production shapes, e.g.
#   scripts/profile_nsys.sh build/nsys_mistral -- train --stage mntp --model_name_or_path DIR ...
# Needs nsys on PATH and a GPU; says so and exits 1 otherwise. Reports that an older nsys lacks are
# skipped with a note.
set -euo pipefail
out=build/nsys
if [[ $# -gt 0 && $1 != -- ]]; then out=$1; shift; fi
[[ ${1:-} == -- ]] && shift
bin=build/llm2vec_cuda
command -v nsys > /dev/null || { echo "profile_nsys.sh: nsys is not on PATH (Nsight Systems)" >&2; exit 1; }
[[ -x $bin ]] || { echo "profile_nsys.sh: $bin is missing (run make on a machine with nvcc)" >&2; exit 1; }
mkdir -p "$out"

args=("$@")
if [[ ${#args[@]} -eq 0 ]]; then
  tok=assets/stories260K/tok512.bin
  build/llm2vec prepare --tokenizer "$tok" --input assets/wikitext-2/wiki.valid.raw --out "$out/data/wiki" --quiet
  args=(train --stage mntp --model_name_or_path assets/stories260K/stories260K.bin --tokenizer "$tok"
        --dataset_file_path "$out/data/wiki-*.bin" --output_dir "$out/run" --overwrite_output_dir true
        --max_steps 5 --per_device_train_batch_size 8 --max_seq_length 64 --lora_r 8 --logging_steps 1
        --save_merged_model false --mask_token_type '<0x5F>')
fi

nsys profile --trace=cuda,nvtx,cublas --sample=none --cpuctxsw=none --force-overwrite=true \
  --output "$out/profile" "$bin" "${args[@]}"

report=$out/report.txt
{
  echo "# nsys profile of: $bin ${args[*]}"
  echo "# $(nsys --version)"
  # nvtx_gpu_proj_sum: GPU time projected onto NVTX ranges; nvtx_kern_sum: kernels within each range;
  # cuda_gpu_kern_sum: time per kernel; cuda_api_sum: host-side CUDA API time.
  for r in nvtx_gpu_proj_sum nvtx_kern_sum cuda_gpu_kern_sum cuda_api_sum; do
    echo
    echo "## $r"
    nsys stats --report "$r" --format column "$out/profile.nsys-rep" 2>&1 ||
      echo "(this nsys has no $r report)"
  done
} > "$report"
echo "profile_nsys.sh: $out/profile.nsys-rep, summaries in $report"
