#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU: builds what it can, runs the CUDA tests on the GPU, the
# CUDA binary end to end, the GPU benchmarks (and PyTorch's SDPA on the same shapes, for ratios), an
# nsys-profiled short training step and an ncu look at the tensor-core attention kernels, and writes
# everything to one report file. Meant to finish in under 10 minutes on one H100 with the binaries
# built (an nvcc build from scratch adds several minutes; each step has its own time limit). Not yet
# run on a GPU: the steps' durations are expectations, the report prints the measured ones.
#   usage: scripts/gpu_check.sh [REPORT]     (default build/gpu_check/report.txt; run from anywhere)
#
# First it reports what it finds: nvcc (CUDA_HOME, default /usr/local/cuda), nvidia-smi and the GPU,
# nsys, ncu, python3 with PyTorch and whether PyTorch sees the GPU; each later step runs only where its
# tool is there and says so otherwise. With nvcc and the project's dependencies it builds the binaries
# (make); without them it uses binaries already in build/ (built elsewhere and shipped with the
# repository: build/llm2vec, build/llm2vec_cuda, build/test/test_gpu_binary, build/gpu/test/*,
# build/bench/bench_attention, bench_gemm and bench_lora; they load libcudart, libcublas and libcublasLt
# from CUDA_HOME/lib64 or the library path, checked with ldd).
#
# What runs on the GPU:
#   * every CUDA test (test/test_cuda_*.cpp) built by nvcc against the real CUDA runtime (make gpu-tests,
#     cuda/cuda.mk): the same tests as under the emulator except the emulator-only ones (scheduling
#     orders, ldmatrix bank-conflict counters; the planted-bug tests of the emulator itself,
#     test_emulator*, are not CUDA tests and do not run here);
#   * test_gpu_binary (it checks the binary's no-GPU message, so on a GPU it reports itself skipped);
#   * build/llm2vec_cuda end to end: MNTP then SimCSE for a few steps on the bundled stories260K model
#     (head dim 8: the SIMT attention; the tensor-core kernels run in the tests and benchmarks), and
#     MNTP under `mpirun -np 1` (the NCCL communicator on a real GPU) against the plain run, and MNTP
#     with CUDA graphs against the same steps launched kernel by kernel (the logs must be equal);
#   * `llm2vec_cuda bench-step`: 10 MNTP training steps of Sheared-LLaMA-1.3B's configuration with random
#     weights (8 x 512 tokens, bf16, LoRA r=16): ms/step, tokens/s and MFU; again with every kernel
#     launched directly (--cuda_graphs false), and at 2 x 128 tokens with and without graphs;
#   * build/bench/bench_attention, bench_gemm and bench_lora (each validates before timing), then
#     scripts/bench_sdpa.py (PyTorch flash and cuDNN SDPA) where PyTorch sees the GPU, and a table of
#     our TFLOP/s over PyTorch's for every shape both measured;
#   * scripts/profile_nsys.sh on the stories260K step (where nsys exists);
#   * ncu (where it exists): the speed-of-light and occupancy sections of the first launch of each
#     tensor-core attention kernel in bench_attention.
# Without a GPU it builds, runs the benchmarks' no-GPU path, says that nothing ran on a device, and exits
# 0. With a GPU the exit status is 1 if any step failed (listed at the end).
set -uo pipefail
report=$(realpath -m "${1:-$(dirname "$0")/../build/gpu_check/report.txt}")
cd "$(dirname "$0")/.."
dir=$(dirname "$report")
mkdir -p "$dir"
exec > >(tee "$report") 2>&1
CUDA_HOME=${CUDA_HOME:-/usr/local/cuda}
export CUDA_HOME
t_start=$SECONDS
failures=()

# step NAME TIMEOUT_S COMMAND...: runs, times and records one step.
step() {
  local name=$1 limit=$2
  shift 2
  echo
  echo "== $name"
  local t0=$SECONDS
  timeout "$limit" "$@"
  local rc=$?
  echo "-- $name: exit $rc, $((SECONDS - t0)) s"
  [[ $rc -eq 0 ]] || failures+=("$name (exit $rc$([[ $rc -eq 124 ]] && echo ", timed out after $limit s"))")
  return 0
}

echo "gpu_check.sh $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
echo
echo "== what this machine has"
have_nvcc=0 have_gpu=0 have_nsys=0 have_ncu=0 have_torch=0
if [[ -x $CUDA_HOME/bin/nvcc ]]; then
  have_nvcc=1
  echo "nvcc: $("$CUDA_HOME/bin/nvcc" --version | tail -1)"
else
  echo "nvcc: none at $CUDA_HOME/bin/nvcc (using prebuilt binaries)"
fi
if command -v nvidia-smi > /dev/null && nvidia-smi -L 2> /dev/null | grep -q '^GPU '; then
  have_gpu=1
  nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
else
  echo "GPU: none (nvidia-smi $(command -v nvidia-smi > /dev/null && echo 'lists no GPU' || echo 'is not installed'))"
fi
if command -v nsys > /dev/null; then have_nsys=1; echo "nsys: $(nsys --version)"; else echo "nsys: not on PATH"; fi
if command -v ncu > /dev/null; then have_ncu=1; echo "ncu: $(ncu --version | tail -1)"; else echo "ncu: not on PATH"; fi
if torch_info=$(python3 -c 'import torch; print(torch.__version__, "cuda" if torch.cuda.is_available() else "no-cuda")' 2> /dev/null); then
  echo "PyTorch: $torch_info"
  [[ $torch_info == *" cuda" ]] && have_torch=1
else
  echo "PyTorch: not importable by python3"
fi

gpu_tests=()
for src in test/test_cuda_*.cpp; do gpu_tests+=("build/gpu/test/$(basename "$src" .cpp)"); done
targets=(build/llm2vec build/llm2vec_cuda build/test/test_gpu_binary build/bench/bench_attention
         build/bench/bench_gemm build/bench/bench_lora "${gpu_tests[@]}")
if [[ $have_nvcc -eq 1 ]]; then
  step "build" 3000 make -j"$(nproc)" "${targets[@]}"
fi
echo
echo "== binaries"
for b in "${targets[@]}"; do
  if [[ ! -x $b ]]; then
    echo "missing: $b"
  elif missing=$(ldd "$b" 2> /dev/null | grep 'not found'); then
    echo "$b: shared libraries not found: $missing"
  else
    echo "ok: $b"
  fi
done

if [[ $have_gpu -eq 0 ]]; then
  echo
  echo "== the benchmarks without a GPU"
  for b in build/bench/bench_attention build/bench/bench_gemm build/bench/bench_lora; do [[ -x $b ]] && "$b"; done
  echo
  echo "NO GPU on this machine: the build was checked, nothing ran on a device (no CUDA test, benchmark,"
  echo "profile or PyTorch comparison). Run scripts/gpu_check.sh on a machine with an NVIDIA GPU."
  echo "report: $report"
  exit 0
fi

for t in "${gpu_tests[@]}"; do step "$(basename "$t") on the GPU" 300 "$t"; done
step "test_gpu_binary" 60 build/test/test_gpu_binary

e2e() {
  local tok=assets/stories260K/tok512.bin out=$dir/e2e
  build/llm2vec prepare --tokenizer "$tok" --input assets/wikitext-2/wiki.valid.raw --out "$out/data/wiki" --quiet &&
    build/llm2vec prepare --tokenizer "$tok" --input assets/stories260K/sentences.txt --format sentences \
      --out "$out/data/sentences" --quiet &&
    build/llm2vec_cuda train --stage mntp --model_name_or_path assets/stories260K/stories260K.bin --tokenizer "$tok" \
      --dataset_file_path "$out/data/wiki-*.bin" --output_dir "$out/mntp" --overwrite_output_dir true --max_steps 20 \
      --per_device_train_batch_size 8 --max_seq_length 64 --lora_r 8 --logging_steps 5 --mask_token_type '<0x5F>' &&
    build/llm2vec_cuda train --stage simcse --model_name_or_path assets/stories260K/stories260K.bin --tokenizer "$tok" \
      --peft_model_name_or_path "$out/mntp" --dataset_file_path "$out/data/sentences-*.bin" \
      --output_dir "$out/simcse" --overwrite_output_dir true --max_steps 5 --per_device_train_batch_size 4 \
      --max_seq_length 48 --lora_r 8 --logging_steps 1
}
export dir
export -f e2e
step "llm2vec_cuda end to end (MNTP 20 steps, SimCSE 5 steps, stories260K)" 300 bash -c e2e

# The NCCL path on a real GPU: one rank under mpirun (one GPU is what a lent machine has) runs the
# communicator's set-up (device choice, unique id, ncclCommInitRank) and its all-reduce every step; the
# log must equal the plain run's to the bit (a sum over one rank is the identity).
nccl_one_rank() {
  local tok=assets/stories260K/tok512.bin out=$dir/e2e
  local args=(train --stage mntp --model_name_or_path assets/stories260K/stories260K.bin --tokenizer "$tok"
              --dataset_file_path "$out/data/wiki-*.bin" --overwrite_output_dir true --max_steps 5
              --per_device_train_batch_size 8 --max_seq_length 64 --lora_r 8 --mask_token_type '<0x5F>')
  build/llm2vec_cuda "${args[@]}" --output_dir "$out/plain" >/dev/null &&
    mpirun --allow-run-as-root -np 1 build/llm2vec_cuda "${args[@]}" --output_dir "$out/nccl" &&
    diff <(cut -d, -f1-3 "$out/plain/train_log.jsonl") <(cut -d, -f1-3 "$out/nccl/train_log.jsonl") &&
    echo "NCCL (1 rank): the same losses and gradient norms as the plain run"
}
export -f nccl_one_rank
step "NCCL data-parallel path, 1 rank (mpirun -np 1)" 120 bash -c nccl_one_rank

# CUDA graphs on a real GPU: the same steps with every kernel launched directly must give the same
# losses and gradient norms (the same kernels with the same arguments; a difference would mean cuBLAS
# chose other algorithms inside captures, or a graph replayed stale parameters).
graphs_vs_direct() {
  local tok=assets/stories260K/tok512.bin out=$dir/e2e
  local args=(train --stage mntp --model_name_or_path assets/stories260K/stories260K.bin --tokenizer "$tok"
              --dataset_file_path "$out/data/wiki-*.bin" --overwrite_output_dir true --max_steps 8
              --gradient_accumulation_steps 2 --per_device_train_batch_size 8 --max_seq_length 64 --lora_r 8
              --mask_token_type '<0x5F>' --attention_dropout 0.1)
  build/llm2vec_cuda "${args[@]}" --output_dir "$out/graphs" | grep 'CUDA graphs' &&
    build/llm2vec_cuda "${args[@]}" --output_dir "$out/direct" --cuda_graphs false >/dev/null &&
    diff <(cut -d, -f1-3 "$out/graphs/train_log.jsonl") <(cut -d, -f1-3 "$out/direct/train_log.jsonl") &&
    echo "CUDA graphs: the same losses, learning rates and gradient norms as direct launches"
}
export -f graphs_vs_direct
step "CUDA graphs against direct launches (MNTP 8 steps, stories260K)" 120 bash -c graphs_vs_direct

# Training speed at a real size: MNTP steps of Sheared-LLaMA-1.3B's configuration (1.3B parameters) with
# random weights and tokens, bf16, LoRA r=16 on the 7 projections, 8 x 512 tokens per step, the memory
# plan's least recomputation for this GPU; prints ms/step, tokens/s and MFU against the GPU's peak.
gpu_gb="$(nvidia-smi --query-gpu=memory.total --format=csv,noheader,nounits | head -1 | awk '{print $1 / 1024}')"
step "bench-step: Sheared-LLaMA-1.3B MNTP 8 x 512, random weights (tokens/s, MFU)" 300 \
  build/llm2vec_cuda bench-step --model_name_or_path assets/configs/Sheared-LLaMA-1.3B --stage mntp \
    --per_device_train_batch_size 8 --max_seq_length 512 --lora_r 16 --max_steps 10 --gpu_memory_gb "$gpu_gb"
# The same steps with every kernel launched directly, and a small step (2 x 128, where launches cost the
# most) both ways: what the CUDA graphs (cuda_graphs, on by default) are worth.
step "bench-step: the same, --cuda_graphs false" 300 \
  build/llm2vec_cuda bench-step --model_name_or_path assets/configs/Sheared-LLaMA-1.3B --stage mntp \
    --per_device_train_batch_size 8 --max_seq_length 512 --lora_r 16 --max_steps 10 --gpu_memory_gb "$gpu_gb" \
    --cuda_graphs false
for graphs in true false; do
  step "bench-step: Sheared-LLaMA-1.3B MNTP 2 x 128, --cuda_graphs $graphs" 120 \
    build/llm2vec_cuda bench-step --model_name_or_path assets/configs/Sheared-LLaMA-1.3B --stage mntp \
      --per_device_train_batch_size 2 --max_seq_length 128 --lora_r 16 --max_steps 10 --cuda_graphs "$graphs"
done

# A benchmark that finds no usable device exits 0 without result lines: here, with a GPU, that fails.
for b in bench_attention bench_gemm bench_lora; do
  step "$b" 300 bash -o pipefail -c "build/bench/$b | tee '$dir/$b.txt' && grep -q '^bench=' '$dir/$b.txt'"
done
if [[ $have_torch -eq 1 ]]; then
  step "PyTorch SDPA (flash, cuDNN)" 300 bash -o pipefail -c "python3 scripts/bench_sdpa.py | tee '$dir/bench_sdpa.txt'"
  echo
  echo "== our TFLOP/s over PyTorch's (same shapes, same run; > 1: ours is faster)"
  cat "$dir/bench_attention.txt" "$dir/bench_sdpa.txt" | awk '
    /^bench=attention / {
      delete f
      for (i = 1; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] }
      key = f["pass"] " " f["shape"] " dropout=" f["dropout"]
      tf[f["impl"], key] = f["tflops"]; if (!(key in seen)) { seen[key] = 1; keys[++n] = key }
    }
    END {
      printf "%-48s %8s %8s %12s %12s %12s %12s\n", "pass shape dropout", "simt", "mma", "mma/flash",
             "mma/cudnn", "simt/flash", "simt/cudnn"
      for (k = 1; k <= n; k++) {
        key = keys[k]; line = sprintf("%-48s %8s %8s", key, tf["simt", key], tf["mma", key])
        split("mma torch_flash mma torch_cudnn simt torch_flash simt torch_cudnn", r, " ")
        for (j = 1; j <= 8; j += 2) {
          a = tf[r[j], key]; b = tf[r[j + 1], key]
          line = line sprintf(" %12s", (a != "" && b != "" && b > 0) ? sprintf("%.2f", a / b) : "-")
        }
        print line
      }
    }'
else
  echo
  echo "== PyTorch SDPA: skipped (no PyTorch that sees the GPU)"
fi

if [[ $have_nsys -eq 1 ]]; then
  step "nsys profile of a short training step" 300 bash scripts/profile_nsys.sh "$dir/nsys"
  [[ -f $dir/nsys/report.txt ]] && cat "$dir/nsys/report.txt"
else
  echo
  echo "== nsys: skipped (not on PATH)"
fi
if [[ $have_ncu -eq 1 ]]; then
  step "ncu: tensor-core attention kernels (first launch of each)" 300 \
    ncu --kernel-name regex:attention_mma_ --launch-count 3 --section SpeedOfLight --section Occupancy \
      build/bench/bench_attention
else
  echo
  echo "== ncu: skipped (not on PATH)"
fi

echo
echo "== summary ($((SECONDS - t_start)) s in all)"
if [[ ${#failures[@]} -eq 0 ]]; then
  echo "every step passed; report: $report"
  exit 0
fi
printf 'FAILED: %s\n' "${failures[@]}"
echo "report: $report"
exit 1
