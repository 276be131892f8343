#!/usr/bin/env bash
# Turns the ptxas -v logs of the CUDA build into a per-kernel resource table (registers, shared memory,
# stack, spills) and fails if a hot kernel spills to local memory on sm_90.
#   usage: cuda_resource_report.sh OUT.txt LOG...
# Hot kernels: attention, RMSNorm, LoRA, and the fused LM-head cross-entropy (names matched below).
set -euo pipefail
out=$1
shift
awk '
  /Compiling entry function/ {
    match($0, /function .([^'"'"']+)/, m); fn = m[1];
    match($0, /for .(sm_[0-9]+a?)/, a); arch = a[1];
  }
  /bytes stack frame/ && fn != "" { stack = $1; spill_st = $5; spill_ld = $9 }
  /Used [0-9]+ registers/ && fn != "" {
    match($0, /Used ([0-9]+) registers/, r);
    smem = 0; if (match($0, /([0-9]+) bytes smem/, s)) smem = s[1];
    printf "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", arch, r[1], smem, stack, spill_st, spill_ld, fn;
    fn = "";
  }
' "$@" | sort -u | while IFS=$'\t' read -r arch regs smem stack st ld fn; do
  printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$arch" "$regs" "$smem" "$stack" "$st" "$ld" "$(echo "$fn" | c++filt)"
done > "$out.tmp"
{
  printf 'arch\tregisters\tsmem_bytes\tstack_bytes\tspill_store_bytes\tspill_load_bytes\tkernel\n'
  cat "$out.tmp"
} > "$out"
rm -f "$out.tmp"
echo "CUDA resource report: $out ($(($(wc -l < "$out") - 1)) kernel builds)"
bad=$(awk -F'\t' 'NR > 1 && $1 == "sm_90" && ($5 > 0 || $6 > 0) && tolower($7) ~ /attention|rmsnorm|lora|lm_head|crossentropy/' "$out")
if [ -n "$bad" ]; then
  echo "hot kernels spill to local memory on sm_90:" >&2
  echo "$bad" >&2
  exit 1
fi
