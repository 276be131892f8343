#!/usr/bin/env bash
# Turns the ptxas -v logs of the CUDA build into a per-kernel resource table (registers, shared memory,
# stack, spills) and fails if a hot kernel spills to local memory on sm_90.
#   usage: cuda_resource_report.sh OUT.txt LOG...
# Hot kernels: attention, RMSNorm, LoRA, and the fused LM-head cross-entropy (names matched below).
set -euo pipefail
out=$1
shift
# ptxas prints, per kernel and architecture: "Compiling entry function 'NAME' for 'sm_XX'", then
# "N bytes stack frame, S bytes spill stores, L bytes spill loads", then "Used R registers, ... M bytes smem".
perl -ne '
  if (/Compiling entry function .(\S+). for .(sm_\w+)./) { ($fn, $arch) = ($1, $2); ($stack, $st, $ld) = (0, 0, 0); }
  elsif (defined $fn && /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/) { ($stack, $st, $ld) = ($1, $2, $3); }
  elsif (defined $fn && /Used (\d+) registers/) {
    my $regs = $1; my $smem = /(\d+) bytes smem/ ? $1 : 0;
    print join("\t", $arch, $regs, $smem, $stack, $st, $ld, $fn), "\n"; undef $fn;
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
