// CUDA on the CPU: what a kernel source sees when it is compiled by g++ instead of nvcc.
// cuda/common.cuh includes this header when __CUDACC__ is not defined (and L2V_EMULATE is), so the
// same kernel text runs on the GPU and, here, on the CPU, where its results are compared with the
// fp32 reference (host/cpu_ops.h). Types and host API declarations come from the real CUDA headers
// (cuda_runtime.h, cuda_bf16.h, cuda_fp16.h); the definitions of the runtime and cuBLAS functions are
// the emulator's own (host/emu/runtime.cpp, host/emu/cublas.cpp), linked instead of libcudart/libcublas.
//
// Execution model (host/emu/scheduler.cpp):
//   * A launch runs the grid block by block; blocks run in parallel on OpenMP threads.
//   * The threads of a block are fibers on one OS thread (host/emu/fiber.h). Each runs until it reaches
//     a block barrier (__syncthreads*), a warp collective (__shfl*_sync, __ballot_sync, __syncwarp,
//     __activemask, wmma::*_sync, and cuda/ptx.cuh's mma and ldmatrix) or its end; then the next thread runs, in the order chosen by
//     set_schedule (forward, reverse, or a seeded shuffle that changes every round). When every thread
//     is blocked, completed warp collectives are resolved and a barrier reached by every thread is
//     released.
//   * threadIdx, blockIdx, blockDim and gridDim are thread_local variables that the scheduler sets
//     before resuming a fiber (a block's fibers share one OS thread, so that is enough).
//   * Each thread has a 256 KiB stack above a guard page: a kernel that overflows it dies with SIGSEGV;
//     the AddressSanitizer build (build/asan/) reports it as a stack-overflow with the kernel's frames.
//
// Bugs reported as l2v::emu::KernelError thrown out of the launch (the fibers of the failing block are
// unwound first, so destructors in kernels run): threads waiting at different __syncthreads() sites,
// threads that exited while others wait at a barrier, warp collectives whose mask does not name exactly
// the lanes that arrive, misuse of WMMA (misaligned pointers, bad ldm, a partial warp), and misuse of the
// PTX-level operations of cuda/ptx.cuh (host/emu/ptx.h: divergent or partial-warp mma/ldmatrix,
// misaligned rows or copies, a cp.async destination read before the wait that lands it, ...).
// Shared memory starts poisoned (every byte 0xFF: a NaN float, a NaN bf16, -1 as an integer), and each
// shared array is its own exactly-sized heap block, so AddressSanitizer sees out-of-bounds accesses.
//
// What the emulator cannot show: performance (run times here say nothing about a GPU), memory-model
// races between threads that do not meet at a barrier (fibers are never preempted, so a missing
// __syncthreads() shows only when the schedule order makes a reader run before its writer; the races
// between warps around a cp.async are the exception, host/emu/ptx.h), lanes of a
// warp running independently between collectives (true of Volta and later, invisible here), and spin
// loops waiting for another thread or block (they never yield: they hang). Streams are synchronous.
// Fast-math intrinsics (__expf, __fdividef, ...) are computed exactly; tensor-core MMA accumulates in
// plain fp32 in k order (WMMA and mma.sync; a GPU's order and rounding differ, see host/emu/ptx.h).
// __CUDA_ARCH__ is not defined here: kernels must not depend on it.
#pragma once

#if !defined(L2V_EMULATE)
#error "host/emu/cuda_emu.h is the CUDA-on-CPU emulator: compile with -DL2V_EMULATE (EMU_CXXFLAGS in host/emu/emu.mk)"
#endif

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// ---- Qualifiers. The CUDA headers already expand __global__, __device__, __host__ to nothing and
// __forceinline__ to always_inline outside nvcc; __restrict__ is a g++ keyword.
#define __launch_bounds__(...)
// A plain __shared__ variable would silently become per-thread storage here.
#undef __shared__
#define __shared__ \
  static_assert(false, "use L2V_SHARED(T, name, dims) / L2V_DYNAMIC_SHARED(T, name) from cuda/common.cuh, not __shared__");

// ---- Built-in variables (set by the scheduler before it resumes a thread).
inline thread_local uint3 threadIdx;
inline thread_local uint3 blockIdx;
inline thread_local dim3 blockDim;
inline thread_local dim3 gridDim;
constexpr int warpSize = 32;

namespace l2v::emu {

// A bug found in a kernel (deadlock, divergent barrier, bad warp mask, WMMA misuse, ...). The message
// names the kernel, the block, and the source sites and thread indices involved.
class KernelError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// Throws KernelError(what) prefixed with the running kernel, block and (inside a thread) thread index.
[[noreturn]] void fail(const std::string& what);
// "0x..." for messages.
std::string hex(uint64_t value);
inline std::string hex(const void* p) { return hex(reinterpret_cast<uintptr_t>(p)); }

// ---- The order in which the threads of a block run in each scheduling round.
enum class Order { kForward, kReverse, kShuffle };
struct Schedule {
  Order order = Order::kForward;
  uint64_t seed = 0;  // kShuffle: every (seed, block, round) gets its own permutation
};
// "forward", "reverse" or "shuffle:SEED"; throws std::invalid_argument otherwise.
Schedule parse_schedule(const std::string& text);
// The schedule of later launches. Initially from the environment variable L2V_EMU_ORDER (forward when
// unset); set_schedule overrides it (tests run a kernel under several orders).
void set_schedule(Schedule s);
Schedule current_schedule();

// Device memory (cudaMalloc minus cudaFree): bytes allocated now, and the most at any time since the
// last reset_peak_device_bytes() (the memory planner's tests compare it with model/memory_plan.h).
size_t device_bytes();
size_t peak_device_bytes();
void reset_peak_device_bytes();

// Host waits: the calls that block the host until the device has finished earlier work, as the CUDA
// runtime documents them (API synchronization behavior): cudaStreamSynchronize, cudaDeviceSynchronize,
// cudaEventSynchronize, cudaFree, a synchronous cudaMemcpy, and a cudaMemcpyAsync to or from host memory
// that cudaMallocHost did not allocate (pageable memory, which the driver may stage after
// waiting for the stream). Counted since the start of the process, so that a test can assert how often
// a training step makes the host wait (the emulator itself never waits: its streams are synchronous).
uint64_t host_waits();

// Graphs (stream capture, host/emu/graph.cpp): cudaStreamBeginCapture records what is queued on the
// stream — kernel launches with their arguments' values, asynchronous copies and memsets, cuBLAS GEMMs —
// instead of running it; cudaStreamEndCapture returns the graph; cudaGraphInstantiate / cudaGraphExecUpdate
// / cudaGraphLaunch replay it in capture order. As in cudaStreamCaptureModeGlobal, a call that would wait
// for the device or allocate (cudaMalloc, cudaFree, cudaMallocHost, synchronous copies, stream, device
// and event synchronisation, an asynchronous copy from or to pageable host memory) fails with
// cudaErrorStreamCaptureUnsupported and invalidates the capture, so a step that captures cleanly here
// has none of them. Not emulated: captures that fork into other streams through events (refused), graph
// launches inside a capture (refused), conditional and host nodes. The number of cudaGraphLaunch calls
// and of nodes they ran since the start of the process:
uint64_t graph_launches();
uint64_t graph_nodes_run();

// ---- Shared memory (used through the L2V_SHARED / L2V_DYNAMIC_SHARED macros of cuda/common.cuh).
// One per declaration site: its address is the key of the block's storage for that declaration.
struct SharedSite {
  const char* name;
  const char* file;
  int line;
};
// The block's storage for `site` (allocated, 32-byte aligned and poisoned by the first thread that
// reaches the declaration in this block).
void* shared_static(const SharedSite& site, size_t bytes);
// The block's dynamic shared memory (the size given at launch).
void* shared_dynamic();

// ---- Block barriers.
enum class BarrierKind { kSync, kCount, kAnd, kOr };
// Blocks until every thread of the block is at this barrier; returns the vote (kCount: how many
// threads passed pred != 0; kAnd / kOr: 0 or 1; kSync: 0).
int block_barrier(BarrierKind kind, int pred, const char* file, int line);

// ---- Warp collectives. A lane arrives with a WarpArrival (on its own stack) and blocks; when every
// lane named in the mask has arrived with the same mask, the scheduler calls op->complete once with
// the arrivals of those lanes (lanes[i] == nullptr for lanes not in the mask), which writes each lane's
// result into its arrival, and the lanes resume.
struct WarpArrival;
struct WarpOp {
  const char* name;
  void (*complete)(WarpArrival* const lanes[32], unsigned mask);
};
struct WarpArrival {
  const WarpOp* op = nullptr;
  unsigned mask = 0;
  const char* file = nullptr;
  int line = 0;
};
void warp_collective(WarpArrival& arrival);
// The lane of the running thread within its warp.
unsigned lane_id();

struct ShuffleArrival : WarpArrival {
  uint64_t value = 0;   // the bytes of the lane's var
  uint64_t result = 0;  // the bytes it receives
  long long arg = 0;    // srcLane, delta or laneMask
  int width = warpSize;
};
extern const WarpOp kShflIdx, kShflUp, kShflDown, kShflXor;
uint64_t shuffle_bits(const WarpOp& op, unsigned mask, uint64_t value, long long arg, int width,
                      const char* file, int line);
template <typename T>
T shuffle(const WarpOp& op, unsigned mask, T var, long long arg, int width, const char* file, int line) {
  static_assert(std::is_trivially_copyable<T>::value && sizeof(T) <= 8,
                "warp shuffles move trivially copyable values of at most 8 bytes");
  uint64_t bits = 0;
  std::memcpy(&bits, static_cast<const void*>(&var), sizeof(T));
  bits = shuffle_bits(op, mask, bits, arg, width, file, line);
  T out;
  std::memcpy(static_cast<void*>(&out), &bits, sizeof(T));
  return out;
}

extern const WarpOp kBallot, kAny, kAll, kSyncwarp;
// kBallot: the mask of lanes with pred != 0; kAny / kAll: 0 or 1; kSyncwarp: 0.
unsigned vote(const WarpOp& op, unsigned mask, int pred, const char* file, int line);
// The lanes of the running thread's warp that call __activemask() at the same site in the same
// scheduling round (a scheduling point: it waits until the rest of the warp is blocked or exited).
unsigned active_mask(const char* file, int line);

// ---- Launch.
struct KernelLaunch {
  const char* name;    // for error messages
  const void* kernel;  // identity (cudaFuncSetAttribute)
  dim3 grid, block;
  size_t dynamic_shared;
  cudaStream_t stream;
  void (*thunk)(const void* call);  // runs the kernel body for the current thread
  const void* call;
  // A heap copy of `call` and its deletion: a launch into a capturing stream keeps its arguments, as
  // a graph's kernel node keeps the values they had at capture.
  void* (*clone)(const void* call);
  void (*destroy)(void* call);
};
// Runs every block of the launch and returns when all are done (streams are synchronous). An invalid
// configuration (empty or oversized grid/block, too much dynamic shared memory, unknown stream) sets
// the error returned by cudaGetLastError() and runs nothing, as on a GPU. Bugs found while running
// throw KernelError (the first failing block's; no further blocks are started).
void launch_kernel(const KernelLaunch& launch);

// The emulator's `kernel<<<grid, block, smem, stream>>>(args...)`: the arguments are converted to the
// kernel's parameter types once, and every thread calls the kernel with copies of them.
template <typename... KArgs, typename... Args>
void launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem,
            cudaStream_t stream, Args&&... args) {
  static_assert(sizeof...(KArgs) == sizeof...(Args), "kernel launched with the wrong number of arguments");
  static_assert(!(std::is_reference<KArgs>::value || ...), "kernel parameters are passed by value");
  struct Call {
    void (*kernel)(KArgs...);
    std::tuple<KArgs...> params;
  };
  const Call call{kernel, std::tuple<KArgs...>(std::forward<Args>(args)...)};
  launch_kernel({name, reinterpret_cast<const void*>(kernel), grid, block, smem, stream,
                 [](const void* p) {
                   const Call& c = *static_cast<const Call*>(p);
                   std::apply(c.kernel, c.params);
                 },
                 &call, [](const void* p) -> void* { return new Call(*static_cast<const Call*>(p)); },
                 [](void* p) { delete static_cast<Call*>(p); }});
}

// Read-modify-write with a compare-and-swap loop, for the atomics the CPU has no instruction for.
// Blocks run on several OS threads, so kernel atomics must be real atomics.
template <typename T, typename F>
T atomic_update(T* address, F update) {
  T old;
  __atomic_load(address, &old, __ATOMIC_RELAXED);
  T desired = update(old);
  while (!__atomic_compare_exchange(address, &old, &desired, true, __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
    desired = update(old);
  }
  return old;
}

template <typename T>
T atomic_max(T* a, T v) {
  return atomic_update(a, [v](T old) { return old < v ? v : old; });
}
template <typename T>
T atomic_min(T* a, T v) {
  return atomic_update(a, [v](T old) { return v < old ? v : old; });
}
template <typename T>
T atomic_cas(T* a, T compare, T val) {
  __atomic_compare_exchange_n(a, &compare, val, false, __ATOMIC_RELAXED, __ATOMIC_RELAXED);
  return compare;  // the old value, whether or not the swap happened
}

}  // namespace l2v::emu

// ---- Synchronisation. The defaulted file/line arguments record the caller's source site (GCC's
// __builtin_FILE/__builtin_LINE are evaluated at the call) for barrier and deadlock reports.
inline void __syncthreads(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  l2v::emu::block_barrier(l2v::emu::BarrierKind::kSync, 0, file, line);
}
inline int __syncthreads_count(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return l2v::emu::block_barrier(l2v::emu::BarrierKind::kCount, pred, file, line);
}
inline int __syncthreads_and(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return l2v::emu::block_barrier(l2v::emu::BarrierKind::kAnd, pred, file, line);
}
inline int __syncthreads_or(int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return l2v::emu::block_barrier(l2v::emu::BarrierKind::kOr, pred, file, line);
}
inline void __syncwarp(unsigned mask = 0xffffffffu, const char* file = __builtin_FILE(),
                       int line = __builtin_LINE()) {
  l2v::emu::vote(l2v::emu::kSyncwarp, mask, 0, file, line);
}
// Memory fences: blocks run on several OS threads.
inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
inline void __threadfence_block() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }

// ---- Warp shuffles and votes (any trivially copyable T of at most 8 bytes).
template <typename T>
T __shfl_sync(unsigned mask, T var, int srcLane, int width = warpSize, const char* file = __builtin_FILE(),
              int line = __builtin_LINE()) {
  return l2v::emu::shuffle(l2v::emu::kShflIdx, mask, var, srcLane, width, file, line);
}
template <typename T>
T __shfl_up_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                 const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return l2v::emu::shuffle(l2v::emu::kShflUp, mask, var, delta, width, file, line);
}
template <typename T>
T __shfl_down_sync(unsigned mask, T var, unsigned delta, int width = warpSize,
                   const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return l2v::emu::shuffle(l2v::emu::kShflDown, mask, var, delta, width, file, line);
}
template <typename T>
T __shfl_xor_sync(unsigned mask, T var, int laneMask, int width = warpSize,
                  const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return l2v::emu::shuffle(l2v::emu::kShflXor, mask, var, laneMask, width, file, line);
}
inline unsigned __ballot_sync(unsigned mask, int pred, const char* file = __builtin_FILE(),
                              int line = __builtin_LINE()) {
  return l2v::emu::vote(l2v::emu::kBallot, mask, pred, file, line);
}
inline int __any_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(l2v::emu::vote(l2v::emu::kAny, mask, pred, file, line));
}
inline int __all_sync(unsigned mask, int pred, const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return static_cast<int>(l2v::emu::vote(l2v::emu::kAll, mask, pred, file, line));
}
inline unsigned __activemask(const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  return l2v::emu::active_mask(file, line);
}

// ---- Atomics (relaxed, as on the GPU; they return the old value).
inline int atomicAdd(int* a, int v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicAdd(unsigned* a, unsigned v) { return __atomic_fetch_add(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicAdd(unsigned long long* a, unsigned long long v) {
  return __atomic_fetch_add(a, v, __ATOMIC_RELAXED);
}
inline float atomicAdd(float* a, float v) {
  return l2v::emu::atomic_update(a, [v](float old) { return old + v; });
}
inline double atomicAdd(double* a, double v) {
  return l2v::emu::atomic_update(a, [v](double old) { return old + v; });
}
inline __nv_bfloat16 atomicAdd(__nv_bfloat16* a, __nv_bfloat16 v) {
  return l2v::emu::atomic_update(
      a, [v](__nv_bfloat16 old) { return __float2bfloat16(__bfloat162float(old) + __bfloat162float(v)); });
}
inline int atomicSub(int* a, int v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicSub(unsigned* a, unsigned v) { return __atomic_fetch_sub(a, v, __ATOMIC_RELAXED); }
inline int atomicMax(int* a, int v) { return l2v::emu::atomic_max(a, v); }
inline unsigned atomicMax(unsigned* a, unsigned v) { return l2v::emu::atomic_max(a, v); }
inline long long atomicMax(long long* a, long long v) { return l2v::emu::atomic_max(a, v); }
inline unsigned long long atomicMax(unsigned long long* a, unsigned long long v) { return l2v::emu::atomic_max(a, v); }
inline int atomicMin(int* a, int v) { return l2v::emu::atomic_min(a, v); }
inline unsigned atomicMin(unsigned* a, unsigned v) { return l2v::emu::atomic_min(a, v); }
inline long long atomicMin(long long* a, long long v) { return l2v::emu::atomic_min(a, v); }
inline unsigned long long atomicMin(unsigned long long* a, unsigned long long v) { return l2v::emu::atomic_min(a, v); }
inline int atomicCAS(int* a, int compare, int val) { return l2v::emu::atomic_cas(a, compare, val); }
inline unsigned atomicCAS(unsigned* a, unsigned compare, unsigned val) { return l2v::emu::atomic_cas(a, compare, val); }
inline unsigned long long atomicCAS(unsigned long long* a, unsigned long long compare, unsigned long long val) {
  return l2v::emu::atomic_cas(a, compare, val);
}
inline unsigned short atomicCAS(unsigned short* a, unsigned short compare, unsigned short val) {
  return l2v::emu::atomic_cas(a, compare, val);
}
inline int atomicExch(int* a, int v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicExch(unsigned* a, unsigned v) { return __atomic_exchange_n(a, v, __ATOMIC_RELAXED); }
inline unsigned long long atomicExch(unsigned long long* a, unsigned long long v) {
  return __atomic_exchange_n(a, v, __ATOMIC_RELAXED);
}
inline float atomicExch(float* a, float v) {
  float old;
  __atomic_exchange(a, &v, &old, __ATOMIC_RELAXED);
  return old;
}
inline int atomicAnd(int* a, int v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicAnd(unsigned* a, unsigned v) { return __atomic_fetch_and(a, v, __ATOMIC_RELAXED); }
inline int atomicOr(int* a, int v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicOr(unsigned* a, unsigned v) { return __atomic_fetch_or(a, v, __ATOMIC_RELAXED); }
inline int atomicXor(int* a, int v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }
inline unsigned atomicXor(unsigned* a, unsigned v) { return __atomic_fetch_xor(a, v, __ATOMIC_RELAXED); }

// ---- Math. The fast-math intrinsics are exact here (a GPU's are approximate: compare with tolerances).
// expf, logf, sqrtf, fmaxf, fminf, fmaf, tanhf, ... are the C library's.
inline float __expf(float x) { return std::exp(x); }
inline float __exp10f(float x) { return std::pow(10.0f, x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __tanf(float x) { return std::tan(x); }
inline float __powf(float x, float y) { return std::pow(x, y); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline float __fdividef(float x, float y) { return x / y; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline float __fsqrt_rn(float x) { return std::sqrt(x); }
inline float __fadd_rn(float x, float y) { return x + y; }
inline float __fsub_rn(float x, float y) { return x - y; }
inline float __fmul_rn(float x, float y) { return x * y; }
inline float __fdiv_rn(float x, float y) { return x / y; }
inline float __fmaf_rn(float x, float y, float z) { return std::fma(x, y, z); }
inline double __dadd_rn(double x, double y) { return x + y; }
inline double __dsub_rn(double x, double y) { return x - y; }
inline double __dmul_rn(double x, double y) { return x * y; }
inline double __ddiv_rn(double x, double y) { return x / y; }
inline float __saturatef(float x) { return x >= 1.0f ? 1.0f : (x > 0.0f ? x : 0.0f); }  // NaN -> 0
inline int __float_as_int(float x) {
  int i;
  std::memcpy(&i, &x, sizeof(i));
  return i;
}
inline unsigned __float_as_uint(float x) {
  unsigned u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}
inline float __int_as_float(int i) {
  float x;
  std::memcpy(&x, &i, sizeof(x));
  return x;
}
inline float __uint_as_float(unsigned u) {
  float x;
  std::memcpy(&x, &u, sizeof(x));
  return x;
}
// CUDA's device min/max overloads (nvcc kernels call them unqualified).
inline int min(int a, int b) { return a < b ? a : b; }
inline unsigned min(unsigned a, unsigned b) { return a < b ? a : b; }
inline long min(long a, long b) { return a < b ? a : b; }
inline unsigned long min(unsigned long a, unsigned long b) { return a < b ? a : b; }
inline long long min(long long a, long long b) { return a < b ? a : b; }
inline unsigned long long min(unsigned long long a, unsigned long long b) { return a < b ? a : b; }
inline float min(float a, float b) { return std::fmin(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline int max(int a, int b) { return a > b ? a : b; }
inline unsigned max(unsigned a, unsigned b) { return a > b ? a : b; }
inline long max(long a, long b) { return a > b ? a : b; }
inline unsigned long max(unsigned long a, unsigned long b) { return a > b ? a : b; }
inline long long max(long long a, long long b) { return a > b ? a : b; }
inline unsigned long long max(unsigned long long a, unsigned long long b) { return a > b ? a : b; }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }

// ---- Bit tricks and loads.
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x == 0 ? 32 : __builtin_clz(static_cast<unsigned>(x)); }
inline int __clzll(long long x) { return x == 0 ? 64 : __builtin_clzll(static_cast<unsigned long long>(x)); }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0f0f0f0fu) | ((x & 0x0f0f0f0fu) << 4);
  return __builtin_bswap32(x);
}
// The read-only data cache load: an ordinary load here.
template <typename T>
T __ldg(const T* p) {
  return *p;
}

#include "host/emu/wmma.h"
#include "host/emu/ptx.h"
