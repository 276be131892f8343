// What the emulator's own .cpp files share (kernels and tests use host/emu/cuda_emu.h instead).
#pragma once
#include <cuda_runtime_api.h>

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

// L2V_EMU_ASAN: defined in the AddressSanitizer build (g++ and clang spell the test differently), which
// then has the ASan interface (ASAN_POISON_MEMORY_REGION, ...).
#if defined(__SANITIZE_ADDRESS__)
#define L2V_EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define L2V_EMU_ASAN 1
#endif
#endif
#if defined(L2V_EMU_ASAN)
#include <sanitizer/asan_interface.h>
#endif

namespace l2v::emu {

// The emulated device: an sm_90-like GPU (also what cudaGetDeviceProperties reports).
constexpr size_t kSharedPerBlock = 48 * 1024;         // without opting in
constexpr size_t kSharedPerBlockOptin = 227 * 1024;   // with cudaFuncAttributeMaxDynamicSharedMemorySize
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxBlockDim[3] = {1024, 1024, 64};
constexpr long long kMaxGridDim[3] = {2147483647LL, 65535, 65535};

// Records err (unless cudaSuccess) as this host thread's last error, for cudaGetLastError; returns it.
cudaError_t record_error(cudaError_t err);
// nullptr (the default stream) or a stream from cudaStreamCreate not yet destroyed.
bool stream_is_valid(cudaStream_t stream);
// The kernel's cudaFuncAttributeMaxDynamicSharedMemorySize if it was set (true), else false.
bool dynamic_shared_attribute(const void* kernel, size_t* bytes);

// "file:line" for messages.
std::string site(const char* file, int line);

// ---- What the scheduler (scheduler.cpp) offers the PTX-level operations (ptx.cpp), for the running block.
// Launch-wide counters that every block of a launch adds to (blocks run on several OS threads);
// last_launch_stats() reports them once the launch is over.
struct LaunchCounters {
  std::atomic<uint64_t> ldmatrix_wavefronts{0};
  std::atomic<uint64_t> ldmatrix_bank_conflicts{0};
};
LaunchCounters& launch_counters();
// The running thread's number in its block: threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z).
unsigned thread_rank();
// Whether [p, p + bytes) lies inside one shared array of the running block (an L2V_SHARED variable or
// the dynamic shared memory).
bool in_shared_memory(const void* p, size_t bytes);

// ---- What ptx.cpp's per-block state (pending cp.async copies) needs from the scheduler's block life cycle.
void ptx_block_begin(unsigned nthreads);
// A thread's kernel body returned: fails (KernelError) if its cp.async copies were not all waited for.
void ptx_thread_returned(unsigned thread);
// A block barrier was released: what the block's warps read and landed before it is ordered.
void ptx_block_barrier();
// The block is over (finished or abandoned after an error): drops what is still pending.
void ptx_block_end();

// ---- Stream capture (graph.cpp). One operation of a captured graph; cudaGraphLaunch runs the nodes in
// capture order (the emulator's streams are serial, so a captured stream's graph is a chain).
struct GraphNode {
  enum class Kind { kKernel, kMemcpy, kMemset, kLibrary };
  Kind kind;
  const void* function;      // the kernel (kKernel) or library entry point (kLibrary), else nullptr:
                             // what cudaGraphExecUpdate compares besides the kind
  std::function<void()> run; // the operation, with everything it needs captured by value
};
// What an operation queued on `stream` does now.
enum class StreamMode { kRun, kCapture, kError };
// kCapture when `stream` is capturing; kError (with *err) when its capture was invalidated, or when it is
// the legacy default stream while another stream captures in global mode (cudaErrorStreamCaptureImplicit,
// which invalidates that capture); else kRun.
StreamMode stream_mode(cudaStream_t stream, cudaError_t* err);
// Appends `node` to the graph `stream` is capturing (stream_mode said kCapture).
void capture_node(cudaStream_t stream, GraphNode node);
// A "potentially unsafe" call (one that waits for the device, allocates or frees): while a capture is
// active it invalidates every active capture and returns cudaErrorStreamCaptureUnsupported (recorded as
// the last error), as the runtime does in cudaStreamCaptureModeGlobal; otherwise cudaSuccess.
cudaError_t unsafe_during_capture();
// A stream is being destroyed: its capture, if any, ends without a graph.
void drop_capture(cudaStream_t stream);

}  // namespace l2v::emu
