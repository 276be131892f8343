#!/usr/bin/env bash
# Turns the ptxas -v logs of the CUDA build into a per-kernel resource table (registers, shared memory,
# stack, spills) with the estimated occupancy of every kernel on sm_80 and sm_90, and fails if a hot
# kernel spills to local memory.
#   usage: cuda_resource_report.sh OUT.txt DYNAMIC_SMEM.tsv OBJ...
# For each OBJ the build left OBJ.ptxas.log (ptxas -v) and OBJ.ptx (the compute_90 PTX that nvcc -keep
# wrote). DYNAMIC_SMEM.tsv is the output of cuda/dynamic_smem.cpp: "kernel<TAB>D<TAB>bytes".
#
# Occupancy (resident blocks and warps per SM) is the CUDA occupancy calculator's arithmetic
# (cuda_occupancy.h) with these per-SM limits, the same for sm_80 (A100) and sm_90 (H100) except shared
# memory: 65536 registers in 4 sub-partitions, allocated per warp in units of 256 (a thread's registers
# times 32, rounded up), at most 2048 threads (64 warps) and 32 blocks; shared memory 164 KiB on sm_80 and
# 228 KiB on sm_90 (the largest carveout), allocated per block in units of 128 bytes with 1 KiB reserved
# per block by the driver, at most 163 KiB / 227 KiB for one block. The inputs: registers and static
# shared memory from ptxas, the block size from the kernel's __launch_bounds__ (the PTX .maxntid; every
# kernel here is launched with exactly that many threads, and one without __launch_bounds__ is an
# error), and the dynamic shared memory it is launched with from DYNAMIC_SMEM.tsv, keyed by kernel name
# and head dim (the first template argument); a kernel that uses dynamic shared memory without a line
# there is an error. "limit" names what stops one more block: regs, smem, threads or blocks.
#
# Hot kernels (attention, the tensor-core attention included, RMSNorm, LoRA, the fused LM-head cross
# entropy) must not spill on sm_90, and the tensor-core attention kernels (attention_mma_*) must use no
# stack and no spills on either architecture.
set -euo pipefail
out=$1
dyn=$2
shift 2
logs=() ptxs=()
for obj in "$@"; do logs+=("$obj.ptxas.log"); ptxs+=("$obj.ptx"); done

# The PTX: each entry's block size (.maxntid x, y, z) and whether its body touches the dynamic shared
# array (cuda/common.cuh's L2V_DYNAMIC_SHARED). Output: "mangled<TAB>threads<TAB>uses_dynamic".
launch=$(perl -ne '
  if (/^\.(?:visible|weak) \.entry (\S+)\(/) { $fn = $1; ($threads, $dyn) = (0, 0); }
  elsif (defined $fn && /^\s*\.maxntid (\d+), (\d+), (\d+)/) { $threads = $1 * $2 * $3; }
  elsif (defined $fn && /l2v_dynamic_shared/) { $dyn = 1; }
  elsif (defined $fn && /^\}/) { print "$fn\t$threads\t$dyn\n"; undef $fn; }
' "${ptxs[@]}" | sort -u)

# ptxas prints, per kernel and architecture: "Compiling entry function 'NAME' for 'sm_XX'", then
# "N bytes stack frame, S bytes spill stores, L bytes spill loads", then "Used R registers, ... M bytes smem".
perl -ne '
  if (/Compiling entry function .(\S+). for .(sm_\w+)./) { ($fn, $arch) = ($1, $2); ($stack, $st, $ld) = (0, 0, 0); }
  elsif (defined $fn && /(\d+) bytes stack frame, (\d+) bytes spill stores, (\d+) bytes spill loads/) { ($stack, $st, $ld) = ($1, $2, $3); }
  elsif (defined $fn && /Used (\d+) registers/) {
    my $regs = $1; my $smem = /(\d+) bytes smem/ ? $1 : 0;
    print join("\t", $arch, $regs, $smem, $stack, $st, $ld, $fn), "\n"; undef $fn;
  }
' "${logs[@]}" | sort -t$'\t' -k7,7 -k1,1 -u > "$out.ptxas"
printf '%s\n' "$launch" > "$out.launch"
# Demangled names, in the order of the ptxas rows.
cut -f7 "$out.ptxas" | c++filt > "$out.names"

perl -e '
  my ($ptxas, $launch, $names, $dyn) = @ARGV;
  my %limits = (sm_80 => 167936, sm_90 => 233472);  # shared memory per SM, bytes
  my %block_max = (sm_80 => 166912, sm_90 => 232448);  # shared memory per block
  my (%threads, %uses_dyn, %dyn_bytes);
  open my $l, "<", $launch or die; while (<$l>) { chomp; next unless $_; my ($f, $t, $d) = split /\t/; $threads{$f} = $t; $uses_dyn{$f} = $d; }
  open my $d, "<", $dyn or die; while (<$d>) { chomp; my ($k, $hd, $b) = split /\t/; $dyn_bytes{"$k/$hd"} = $b; }
  open my $p, "<", $ptxas or die; open my $n, "<", $names or die;
  my $errors = 0;
  sub up { my ($x, $u) = @_; return int(($x + $u - 1) / $u) * $u; }
  printf "arch\tregisters\tsmem_static\tsmem_dynamic\tthreads\tstack_bytes\tspill_store_bytes\tspill_load_bytes\tblocks_per_sm\twarps_per_sm\tlimit\tkernel\n";
  while (my $row = <$p>) {
    chomp $row; my $name = <$n>; chomp $name;
    my ($arch, $regs, $smem, $stack, $st, $ld, $fn) = split /\t/, $row;
    my $t = $threads{$fn};
    if (!$t) { print STDERR "no __launch_bounds__ (PTX .maxntid) for $name: the report needs its block size\n"; $errors++; next; }
    my $dbytes = 0;
    if ($uses_dyn{$fn}) {
      my ($base, $hd) = $name =~ /(\w+)<(?:[\w:]*Traits<)?(\d+)/;
      $dbytes = defined $base ? $dyn_bytes{"$base/$hd"} : undef;
      if (!defined $dbytes) { print STDERR "$name uses dynamic shared memory but has no line in $dyn (cuda/dynamic_smem.cpp)\n"; $errors++; next; }
    }
    my $warps = int(($t + 31) / 32);
    my $per_sub = int(16384 / up($regs * 32, 256));
    my $by_regs = int(4 * $per_sub / $warps);
    my $alloc = up($smem + $dbytes + 1024, 128);
    my $by_smem = $smem + $dbytes > $block_max{$arch} ? 0 : int($limits{$arch} / $alloc);
    my $by_threads = int(64 / $warps);
    my %by = (regs => $by_regs, smem => $by_smem, threads => $by_threads, blocks => 32);
    my ($lim) = sort { $by{$a} <=> $by{$b} || $a cmp $b } keys %by;
    printf "%s\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%d\t%s\t%s\n", $arch, $regs, $smem, $dbytes, $t, $stack, $st, $ld,
      $by{$lim}, $by{$lim} * $warps, $lim, $name;
  }
  exit($errors ? 1 : 0);
' "$out.ptxas" "$out.launch" "$out.names" "$dyn" > "$out.tmp"
mv "$out.tmp" "$out"
rm -f "$out.ptxas" "$out.launch" "$out.names"
echo "CUDA resource report: $out ($(($(wc -l < "$out") - 1)) kernel builds)"
bad=$(awk -F'\t' 'NR > 1 && (($1 == "sm_90" && ($7 > 0 || $8 > 0) &&
                                tolower($12) ~ /attention|rmsnorm|lora|lm_head|crossentropy/) ||
                               ($12 ~ /attention_mma_/ && ($6 > 0 || $7 > 0 || $8 > 0)))' "$out")
if [ -n "$bad" ]; then
  echo "hot kernels spill to local memory (or the tensor-core attention uses stack):" >&2
  echo "$bad" >&2
  exit 1
fi
