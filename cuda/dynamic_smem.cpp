// The dynamic shared memory every kernel that has some is launched with, for the occupancy estimate of
// the CUDA resource report (scripts/cuda_resource_report.sh): ptxas reports registers and static shared
// memory only, and the block size comes from each kernel's __launch_bounds__ in the PTX, but the
// dynamic bytes are a launch argument. They are read here from the launchers' own constants (the
// attention kernels' traits and shared-memory layouts), so the table cannot drift from the code.
// Built by g++ against the emulator's headers (cuda/cuda.mk); nothing is launched.
//   usage: dynamic_smem > table.tsv
// Output: one line per (kernel, head dim): "kernel<TAB>D<TAB>bytes", the kernel as its name appears
// before the template arguments. The report fails if a kernel of the PTX uses dynamic shared memory
// and has no line here.
#include <cstdio>

#include "cuda/attention.cuh"
#include "cuda/attention_mma.cuh"

namespace {

void row(const char* kernel, int d, size_t bytes) { std::printf("%s\t%d\t%zu\n", kernel, d, bytes); }

template <int D>
void simt() {
  namespace ad = l2v::cuda::attention_detail;
  row("attention_fwd_kernel", D, ad::FwdSmem<ad::FwdTraits<D>>::kBytes);
  row("attention_bwd_dq_kernel", D, ad::DqSmem<ad::DqTraits<D>>::kBytes);
  row("attention_bwd_dkdv_kernel", D, ad::DkdvSmem<ad::DkdvTraits<D>>::kBytes);
}

template <int D>
void mma() {
  using S = l2v::cuda::attention_mma_detail::MmaSmem<D>;
  row("attention_mma_fwd_kernel", D, S::kFwd);
  row("attention_mma_dq_kernel", D, S::kDq);
  row("attention_mma_dkdv_kernel", D, S::kDkdv);
}

}  // namespace

int main() {
  simt<8>();
  simt<16>();
  simt<64>();
  simt<128>();
  mma<16>();
  mma<64>();
  mma<128>();
  return 0;
}
