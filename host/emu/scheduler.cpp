// The emulator's block scheduler: runs a launch's blocks on OpenMP threads and the threads of each block
// as fibers, implements barriers, warp collectives and shared memory, and reports kernels that can never
// finish (see host/emu/cuda_emu.h for the model).
//
// A block runs in rounds. In a round every runnable thread runs, in the schedule's order, until it
// blocks at a barrier or warp collective or exits. Then:
//   1. every warp collective whose mask's lanes have all arrived with that mask completes (the scheduler
//      computes every lane's result) and those lanes become runnable;
//   2. otherwise, if every thread waits at the same block barrier, the barrier is released;
//   3. otherwise no thread can ever run again: the block's state is reported as a KernelError.
#include <omp.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <memory>
#include <mutex>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "host/emu/cuda_emu.h"
#include "host/emu/fiber.h"
#include "host/emu/internal.h"

namespace l2v::emu {
namespace {

enum class State : uint8_t { kReady, kBlockBarrier, kWarpBarrier, kExited };

// Thrown inside a suspended thread to unwind its stack when its block is abandoned after an error.
struct Cancelled {};

struct Thread {
  Fiber fiber;
  char* stack = nullptr;
  uint3 idx{};
  unsigned linear = 0;  // threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z)
  State state = State::kReady;
  bool started = false;
  bool cancelled = false;
  bool returned = false;  // the kernel body returned normally (its stack holds no stale frames)
  // Where it waits: a block barrier (kind, site, vote input and result) or a warp collective.
  BarrierKind barrier = BarrierKind::kSync;
  const char* file = nullptr;
  int line = 0;
  int pred = 0;
  int vote = 0;
  WarpArrival* arrival = nullptr;
  std::exception_ptr error;
};

struct SharedAlloc {
  const SharedSite* site;
  void* ptr;
  size_t bytes;
};

struct Block {
  const KernelLaunch* launch = nullptr;
  Schedule schedule;
  size_t shared_limit = 0;  // static + dynamic shared bytes allowed
  uint3 idx{};
  uint64_t linear = 0;
  unsigned nthreads = 0;
  unsigned exited = 0;
  std::vector<Thread> threads;
  std::vector<unsigned> order;
  Fiber host;  // the OS thread's own context, where the scheduler runs
  Thread* current = nullptr;
  std::vector<SharedAlloc> shared;
  size_t static_shared = 0;
  void* dynamic_shared = nullptr;
  LaunchCounters* counters = nullptr;
};

thread_local Block t_block_storage;
thread_local Block* t_block = nullptr;  // the block running on this OS thread, if any

std::string dims(unsigned x, unsigned y, unsigned z) {
  return "(" + std::to_string(x) + "," + std::to_string(y) + "," + std::to_string(z) + ")";
}

std::string context(const Block& b) {
  const KernelLaunch& k = *b.launch;
  return "kernel '" + std::string(k.name) + "' block " + dims(b.idx.x, b.idx.y, b.idx.z) + " (grid " +
         dims(k.grid.x, k.grid.y, k.grid.z) + ", block " + dims(k.block.x, k.block.y, k.block.z) + ")";
}

bool same_site(const char* file_a, int line_a, const char* file_b, int line_b) {
  return line_a == line_b && (file_a == file_b || std::strcmp(file_a, file_b) == 0);
}

const char* barrier_name(BarrierKind kind) {
  switch (kind) {
    case BarrierKind::kSync: return "__syncthreads()";
    case BarrierKind::kCount: return "__syncthreads_count()";
    case BarrierKind::kAnd: return "__syncthreads_and()";
    case BarrierKind::kOr: return "__syncthreads_or()";
  }
  return "?";
}

// "0-15, 17, 20-31"
std::string ranges(const std::vector<unsigned>& ids) {
  std::string s;
  for (size_t i = 0; i < ids.size();) {
    size_t j = i;
    while (j + 1 < ids.size() && ids[j + 1] == ids[j] + 1) ++j;
    if (!s.empty()) s += ", ";
    s += std::to_string(ids[i]);
    if (j > i) s += "-" + std::to_string(ids[j]);
    i = j + 1;
  }
  return s;
}

Block& running_block(const char* what) {
  if (t_block == nullptr || t_block->current == nullptr) {
    throw std::logic_error(std::string("llm2vec.cu emulator: ") + what + " called outside a kernel");
  }
  return *t_block;
}

void* alloc_shared(size_t bytes) {
  void* p = nullptr;
  if (posix_memalign(&p, 32, bytes) != 0) throw std::bad_alloc();
  std::memset(p, 0xFF, bytes);  // poison: NaN as float/bf16/half, -1 as an integer
  return p;
}

// Runs t until it blocks or exits.
void resume(Block& b, Thread& t) {
  threadIdx = t.idx;
  b.current = &t;
  t.started = true;
  fiber_switch(b.host, t.fiber);
  b.current = nullptr;
}

// Called by the running thread: back to the scheduler until it resumes us.
void suspend(Block& b, Thread& t) {
  fiber_switch(t.fiber, b.host);
  if (t.cancelled) throw Cancelled{};
}

void wait_at_warp(Block& b, Thread& t, WarpArrival& a) {
  t.arrival = &a;
  t.state = State::kWarpBarrier;
  t.file = a.file;
  t.line = a.line;
  suspend(b, t);
}

void thread_main(void* arg) {
  Thread& t = *static_cast<Thread*>(arg);
  Block& b = *t_block;
  try {
    b.launch->thunk(b.launch->call);
    ptx_thread_returned(t.linear);
    t.returned = true;
  } catch (const Cancelled&) {
  } catch (...) {
    t.error = std::current_exception();
  }
  t.state = State::kExited;
  ++b.exited;
  fiber_finish(t.fiber, b.host);
}

uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ULL;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
  return x ^ (x >> 31);
}

void fill_order(Block& b, uint64_t round) {
  const unsigned n = b.nthreads;
  b.order.resize(n);
  for (unsigned k = 0; k < n; ++k) b.order[k] = b.schedule.order == Order::kReverse ? n - 1 - k : k;
  if (b.schedule.order != Order::kShuffle) return;
  uint64_t state = splitmix64(b.schedule.seed ^ splitmix64(b.linear ^ splitmix64(round)));
  for (unsigned i = n - 1; i > 0; --i) {
    state = splitmix64(state);
    std::swap(b.order[i], b.order[state % (i + 1)]);
  }
}

struct VoteArrival : WarpArrival {
  int pred = 0;
  unsigned result = 0;
};

// __activemask() waits like a collective without a mask: it resolves when the round ends (every lane of
// the warp is blocked or exited), and the lanes waiting at the same __activemask() site are the active
// set -- lanes that exited or took another path are not in it, as on a GPU.
const WarpOp kActiveMask{"__activemask", nullptr};

// Step 1 of a round's end. Returns whether any lane became runnable.
bool complete_warp_collectives(Block& b) {
  bool progressed = false;
  for (unsigned base = 0; base < b.nthreads; base += 32) {
    WarpArrival* lanes[32] = {};
    unsigned waiting = 0;
    for (unsigned l = 0; l < 32 && base + l < b.nthreads; ++l) {
      const Thread& t = b.threads[base + l];
      if (t.state == State::kWarpBarrier) {
        lanes[l] = t.arrival;
        waiting |= 1u << l;
      }
    }
    while (waiting != 0) {
      const unsigned first = static_cast<unsigned>(__builtin_ctz(waiting));
      if (lanes[first]->op == &kActiveMask) {
        unsigned group = 0;
        for (unsigned l = 0; l < 32; ++l) {
          if ((waiting >> l & 1) && lanes[l]->op == &kActiveMask &&
              same_site(lanes[l]->file, lanes[l]->line, lanes[first]->file, lanes[first]->line)) {
            group |= 1u << l;
          }
        }
        for (unsigned l = 0; l < 32; ++l) {
          if (!(group >> l & 1)) continue;
          static_cast<VoteArrival*>(lanes[l])->result = group;
          b.threads[base + l].state = State::kReady;
        }
        waiting &= ~group;
        progressed = true;
        continue;
      }
      const unsigned mask = lanes[first]->mask;
      unsigned group = 0;
      for (unsigned l = 0; l < 32; ++l) {
        if ((waiting >> l & 1) && lanes[l]->op != &kActiveMask && lanes[l]->mask == mask) group |= 1u << l;
      }
      waiting &= ~group;
      if (group != mask) continue;  // not everyone named has arrived (a stall is reported if never)
      WarpArrival* members[32] = {};
      for (unsigned l = 0; l < 32; ++l) {
        if (!(group >> l & 1)) continue;
        if (lanes[l]->op != lanes[first]->op) {
          fail(std::string("the lanes of warp ") + std::to_string(base / 32) + " named by mask " + hex(mask) +
               " call different warp collectives: lane " + std::to_string(first) + " " + lanes[first]->op->name +
               " at " + site(lanes[first]->file, lanes[first]->line) + ", lane " + std::to_string(l) + " " +
               lanes[l]->op->name + " at " + site(lanes[l]->file, lanes[l]->line));
        }
        members[l] = lanes[l];
      }
      lanes[first]->op->complete(members, mask);
      for (unsigned l = 0; l < 32; ++l) {
        if (group >> l & 1) b.threads[base + l].state = State::kReady;
      }
      progressed = true;
    }
  }
  return progressed;
}

// Step 2: releases the block barrier when every thread waits at the same one.
bool release_block_barrier(Block& b) {
  if (b.exited > 0) return false;
  const Thread& first = b.threads[0];
  int count = 0;
  for (const Thread& t : b.threads) {
    if (t.state != State::kBlockBarrier || t.barrier != first.barrier ||
        !same_site(t.file, t.line, first.file, first.line)) {
      return false;
    }
    count += t.pred != 0;
  }
  const int n = static_cast<int>(b.nthreads);
  int vote = 0;
  switch (first.barrier) {
    case BarrierKind::kSync: break;
    case BarrierKind::kCount: vote = count; break;
    case BarrierKind::kAnd: vote = count == n; break;
    case BarrierKind::kOr: vote = count > 0; break;
  }
  for (Thread& t : b.threads) {
    t.vote = vote;
    t.state = State::kReady;
  }
  ptx_block_barrier();
  return true;
}

std::string describe(const Thread& t) {
  switch (t.state) {
    case State::kExited: return "exited";
    case State::kBlockBarrier: return std::string("wait at ") + barrier_name(t.barrier) + " at " + site(t.file, t.line);
    case State::kWarpBarrier:
      if (t.arrival->op == &kActiveMask) return "wait at __activemask() at " + site(t.file, t.line);
      return std::string("wait at ") + t.arrival->op->name + " (mask " + hex(t.arrival->mask) + ") at " +
             site(t.file, t.line);
    case State::kReady: return "runnable";
  }
  return "?";
}

// Step 3: nothing can run. Says why, then what every thread is doing.
[[noreturn]] void report_stall(const Block& b) {
  std::vector<std::pair<std::string, std::vector<unsigned>>> groups;  // in order of first thread
  bool warp_waits = false;
  size_t barrier_sites = 0;
  for (const Thread& t : b.threads) {
    warp_waits |= t.state == State::kWarpBarrier;
    std::string d = describe(t);
    auto g = std::find_if(groups.begin(), groups.end(), [&](const auto& e) { return e.first == d; });
    if (g == groups.end()) {
      barrier_sites += t.state == State::kBlockBarrier;
      groups.push_back({std::move(d), {t.linear}});
    } else {
      g->second.push_back(t.linear);
    }
  }
  std::string what;
  if (warp_waits) {
    what = "deadlock at a warp collective: the lanes named in its mask never all arrive with that mask";
  } else if (barrier_sites > 1) {
    what = "divergent __syncthreads(): the threads of the block wait at different barriers, so none completes";
  } else {
    what = std::to_string(b.exited) + " thread(s) exited while the others wait at a barrier: a block barrier "
           "must be reached by every thread of the block";
  }
  for (const auto& g : groups) {
    what += "\n  thread" + std::string(g.second.size() > 1 ? "s " : " ") + ranges(g.second) + ": " + g.first;
  }
  if (b.launch->block.y > 1 || b.launch->block.z > 1) {
    what += "\n  (thread number = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z))";
  }
  fail(what);
}

void schedule_block(Block& b) {
  for (uint64_t round = 0;; ++round) {
    fill_order(b, round);
    for (unsigned k = 0; k < b.nthreads; ++k) {
      Thread& t = b.threads[b.order[k]];
      if (t.state != State::kReady) continue;
      resume(b, t);
      if (t.error) std::rethrow_exception(t.error);
    }
    if (b.exited == b.nthreads) return;
    if (complete_warp_collectives(b)) continue;
    if (release_block_barrier(b)) continue;
    report_stall(b);
  }
}

// Unwinds every thread still suspended (its barrier call throws Cancelled), so destructors run.
void cancel_threads(Block& b) {
  for (Thread& t : b.threads) {
    if (t.state == State::kExited) continue;
    if (!t.started) {
      t.state = State::kExited;
      ++b.exited;
      continue;
    }
    t.cancelled = true;
    resume(b, t);
    if (t.state != State::kExited) {
      std::fprintf(stderr,
                   "llm2vec.cu emulator: %s: thread %u kept running after its block was cancelled "
                   "(does the kernel swallow exceptions with catch (...)?)\n",
                   context(b).c_str(), t.linear);
      std::abort();
    }
  }
}

void release_block_resources(Block& b) {
  ptx_block_end();  // before the shared memory its pending copies point into is freed
  for (Thread& t : b.threads) release_stack(t.stack, t.started && !t.returned);
  for (const SharedAlloc& s : b.shared) std::free(s.ptr);
  b.shared.clear();
  std::free(b.dynamic_shared);
  b.dynamic_shared = nullptr;
}

void run_block(Block& b, const KernelLaunch& k, uint64_t linear, Schedule schedule, size_t shared_limit,
               LaunchCounters& counters) {
  b.launch = &k;
  b.counters = &counters;
  b.schedule = schedule;
  b.shared_limit = shared_limit;
  b.linear = linear;
  b.idx = uint3{static_cast<unsigned>(linear % k.grid.x), static_cast<unsigned>(linear / k.grid.x % k.grid.y),
                static_cast<unsigned>(linear / (static_cast<uint64_t>(k.grid.x) * k.grid.y))};
  b.nthreads = k.block.x * k.block.y * k.block.z;
  b.exited = 0;
  b.static_shared = 0;
  b.threads.clear();
  b.threads.resize(b.nthreads);
  for (unsigned i = 0; i < b.nthreads; ++i) {
    Thread& t = b.threads[i];
    t.idx = uint3{i % k.block.x, i / k.block.x % k.block.y, i / (k.block.x * k.block.y)};
    t.linear = i;
    t.stack = acquire_stack();
    fiber_prepare(t.fiber, b.host, t.stack, &thread_main, &t);
  }
  // None requested: nullptr, so a kernel that uses it anyway faults instead of corrupting the heap.
  b.dynamic_shared = k.dynamic_shared > 0 ? alloc_shared(k.dynamic_shared) : nullptr;
  ptx_block_begin(b.nthreads);
  blockIdx = b.idx;
  blockDim = k.block;
  gridDim = k.grid;
  t_block = &b;
  std::exception_ptr error;
  try {
    schedule_block(b);
  } catch (...) {
    error = std::current_exception();
  }
  if (error) cancel_threads(b);
  release_block_resources(b);
  t_block = nullptr;
  if (error) std::rethrow_exception(error);
}

cudaError_t check_configuration(const KernelLaunch& k) {
  if (k.kernel == nullptr) return cudaErrorInvalidDeviceFunction;
  if (!stream_is_valid(k.stream)) return cudaErrorInvalidResourceHandle;
  const unsigned block[3] = {k.block.x, k.block.y, k.block.z};
  const unsigned grid[3] = {k.grid.x, k.grid.y, k.grid.z};
  for (int d = 0; d < 3; ++d) {
    if (block[d] == 0 || block[d] > static_cast<unsigned>(kMaxBlockDim[d])) return cudaErrorInvalidConfiguration;
    if (grid[d] == 0 || grid[d] > kMaxGridDim[d]) return cudaErrorInvalidConfiguration;
  }
  if (static_cast<uint64_t>(block[0]) * block[1] * block[2] > kMaxThreadsPerBlock) {
    return cudaErrorInvalidConfiguration;
  }
  size_t max_dynamic = kSharedPerBlock;
  dynamic_shared_attribute(k.kernel, &max_dynamic);
  if (k.dynamic_shared > max_dynamic) return cudaErrorInvalidValue;
  return cudaSuccess;
}

template <int Mode>  // 0 idx, 1 up, 2 down, 3 xor
void complete_shuffle(WarpArrival* const lanes[32], unsigned mask) {
  const int first = __builtin_ctz(mask);
  const int width = static_cast<ShuffleArrival*>(lanes[first])->width;
  for (int l = 0; l < 32; ++l) {
    if (!(mask >> l & 1)) continue;
    auto& a = *static_cast<ShuffleArrival*>(lanes[l]);
    if (a.width != width) {
      fail(std::string(a.op->name) + ": lanes of one call pass different widths (lane " + std::to_string(first) +
           ": " + std::to_string(width) + ", lane " + std::to_string(l) + ": " + std::to_string(a.width) + ")");
    }
    // The PTX shfl.sync rule: the source must lie in the lane's segment of `width` lanes (xor and idx may
    // also read earlier segments); otherwise the lane keeps its own value.
    const long long w = width, seg_first = l & ~(w - 1), seg_last = seg_first + w - 1;
    long long src = l;
    switch (Mode) {
      case 0: src = seg_first + (a.arg & (w - 1)); break;
      case 1: src = l - a.arg; break;
      case 2: src = l + a.arg; break;
      case 3: src = l ^ a.arg; break;
    }
    const bool in_range = Mode == 1 ? src >= seg_first : (src >= 0 && src <= seg_last);
    if (!in_range) {
      a.result = a.value;
    } else if (mask >> src & 1) {
      a.result = static_cast<ShuffleArrival*>(lanes[src])->value;
    } else {
      a.result = ~uint64_t{0};  // a lane outside the mask: undefined on a GPU, poison here
    }
  }
}

template <int Mode>  // 0 ballot, 1 any, 2 all, 3 syncwarp
void complete_vote(WarpArrival* const lanes[32], unsigned mask) {
  unsigned ballot = 0;
  for (int l = 0; l < 32; ++l) {
    if ((mask >> l & 1) && static_cast<VoteArrival*>(lanes[l])->pred != 0) ballot |= 1u << l;
  }
  const unsigned result = Mode == 0 ? ballot : Mode == 1 ? ballot != 0 : Mode == 2 ? ballot == mask : 0;
  for (int l = 0; l < 32; ++l) {
    if (mask >> l & 1) static_cast<VoteArrival*>(lanes[l])->result = result;
  }
}

std::mutex g_schedule_mutex;
bool g_schedule_set = false;
Schedule g_schedule;

thread_local LaunchStats t_last_launch_stats;  // of the last launch made by this host thread

}  // namespace

const WarpOp kShflIdx{"__shfl_sync", &complete_shuffle<0>};
const WarpOp kShflUp{"__shfl_up_sync", &complete_shuffle<1>};
const WarpOp kShflDown{"__shfl_down_sync", &complete_shuffle<2>};
const WarpOp kShflXor{"__shfl_xor_sync", &complete_shuffle<3>};
const WarpOp kBallot{"__ballot_sync", &complete_vote<0>};
const WarpOp kAny{"__any_sync", &complete_vote<1>};
const WarpOp kAll{"__all_sync", &complete_vote<2>};
const WarpOp kSyncwarp{"__syncwarp", &complete_vote<3>};

std::string site(const char* file, int line) { return std::string(file) + ":" + std::to_string(line); }

std::string hex(uint64_t value) {
  char buf[24];
  std::snprintf(buf, sizeof(buf), "0x%llx", static_cast<unsigned long long>(value));
  return buf;
}

void fail(const std::string& what) {
  std::string msg = "llm2vec.cu emulator: ";
  if (t_block != nullptr) {
    msg += context(*t_block);
    if (const Thread* t = t_block->current) msg += " thread " + dims(t->idx.x, t->idx.y, t->idx.z);
    msg += ": ";
  }
  throw KernelError(msg + what);
}

Schedule parse_schedule(const std::string& text) {
  if (text == "forward") return {Order::kForward, 0};
  if (text == "reverse") return {Order::kReverse, 0};
  const std::string prefix = "shuffle:";
  if (text.compare(0, prefix.size(), prefix) == 0 && text.size() > prefix.size() &&
      text.find_first_not_of("0123456789", prefix.size()) == std::string::npos) {
    return {Order::kShuffle, std::stoull(text.substr(prefix.size()))};
  }
  throw std::invalid_argument("llm2vec.cu emulator: schedule order '" + text +
                              "' (L2V_EMU_ORDER): expected forward, reverse or shuffle:SEED (SEED a decimal integer)");
}

void set_schedule(Schedule s) {
  std::lock_guard<std::mutex> lock(g_schedule_mutex);
  g_schedule = s;
  g_schedule_set = true;
}

Schedule current_schedule() {
  std::lock_guard<std::mutex> lock(g_schedule_mutex);
  if (!g_schedule_set) {
    const char* env = std::getenv("L2V_EMU_ORDER");
    g_schedule = env != nullptr && *env != '\0' ? parse_schedule(env) : Schedule{};
    g_schedule_set = true;
  }
  return g_schedule;
}

void* shared_static(const SharedSite& s, size_t bytes) {
  Block& b = running_block("L2V_SHARED");
  for (const SharedAlloc& a : b.shared) {
    if (a.site == &s) return a.ptr;
  }
  b.static_shared += bytes;
  auto where = [&] { return "L2V_SHARED(" + std::string(s.name) + ") at " + site(s.file, s.line); };
  if (b.static_shared > kSharedPerBlock) {
    fail(where() + ": the block's static shared memory reaches " + std::to_string(b.static_shared) +
         " bytes, over the 48 KiB limit (nvcc refuses such a kernel)");
  }
  if (b.static_shared + b.launch->dynamic_shared > b.shared_limit) {
    fail(where() + ": static (" + std::to_string(b.static_shared) + " bytes) + dynamic (" +
         std::to_string(b.launch->dynamic_shared) + " bytes) shared memory exceeds the block's limit of " +
         std::to_string(b.shared_limit) +
         " bytes (raise it with cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, ...))");
  }
  void* p = alloc_shared(bytes);
  b.shared.push_back({&s, p, bytes});
  return p;
}

void* shared_dynamic() { return running_block("L2V_DYNAMIC_SHARED").dynamic_shared; }

bool in_shared_memory(const void* p, size_t bytes) {
  const Block& b = running_block("a shared-memory access");
  auto inside = [&](const void* base, size_t size) {
    const auto q = reinterpret_cast<uintptr_t>(p), lo = reinterpret_cast<uintptr_t>(base);
    return base != nullptr && q >= lo && bytes <= size && q - lo <= size - bytes;
  };
  if (inside(b.dynamic_shared, b.launch->dynamic_shared)) return true;
  return std::any_of(b.shared.begin(), b.shared.end(), [&](const SharedAlloc& a) { return inside(a.ptr, a.bytes); });
}

// Also called by warp collectives as they complete, between the block's threads.
LaunchCounters& launch_counters() {
  if (t_block == nullptr) throw std::logic_error("llm2vec.cu emulator: launch counters used outside a kernel");
  return *t_block->counters;
}

unsigned thread_rank() { return running_block("thread_rank()").current->linear; }

LaunchStats last_launch_stats() { return t_last_launch_stats; }

int block_barrier(BarrierKind kind, int pred, const char* file, int line) {
  Block& b = running_block(barrier_name(kind));
  Thread& t = *b.current;
  t.state = State::kBlockBarrier;
  t.barrier = kind;
  t.file = file;
  t.line = line;
  t.pred = pred;
  suspend(b, t);
  return t.vote;
}

void warp_collective(WarpArrival& a) {
  Block& b = running_block(a.op->name);
  Thread& t = *b.current;
  const unsigned lane = t.linear % 32, warp_first = t.linear - lane;
  const unsigned lanes = std::min(32u, b.nthreads - warp_first);
  const unsigned existing = lanes == 32 ? ~0u : (1u << lanes) - 1;
  auto where = [&] { return std::string(a.op->name) + " at " + site(a.file, a.line) + ": mask " + hex(a.mask); };
  if (!(a.mask >> lane & 1)) {
    fail(where() + " does not name the calling lane " + std::to_string(lane) + " (a lane must include itself)");
  }
  if ((a.mask & ~existing) != 0) {
    fail(where() + " names lanes that do not exist: warp " + std::to_string(warp_first / 32) + " has " +
         std::to_string(lanes) + " lane(s) in a block of " + std::to_string(b.nthreads) + " threads");
  }
  wait_at_warp(b, t, a);
}

unsigned lane_id() { return running_block("lane_id()").current->linear % 32; }

uint64_t shuffle_bits(const WarpOp& op, unsigned mask, uint64_t value, long long arg, int width, const char* file,
                      int line) {
  if (width < 1 || width > 32 || (width & (width - 1)) != 0) {
    fail(std::string(op.name) + " at " + site(file, line) + ": width " + std::to_string(width) +
         " is not a power of two in [1, 32]");
  }
  ShuffleArrival a;
  a.op = &op;
  a.mask = mask;
  a.file = file;
  a.line = line;
  a.value = value;
  a.arg = arg;
  a.width = width;
  warp_collective(a);
  return a.result;
}

unsigned vote(const WarpOp& op, unsigned mask, int pred, const char* file, int line) {
  VoteArrival a;
  a.op = &op;
  a.mask = mask;
  a.file = file;
  a.line = line;
  a.pred = pred;
  warp_collective(a);
  return a.result;
}

unsigned active_mask(const char* file, int line) {
  Block& b = running_block("__activemask()");
  VoteArrival a;
  a.op = &kActiveMask;
  a.file = file;
  a.line = line;
  wait_at_warp(b, *b.current, a);
  return a.result;
}

namespace {

// Runs every block of a launch whose configuration has been checked.
void run_launch(const KernelLaunch& k) {
  const Schedule schedule = current_schedule();
  size_t attribute = 0;
  const size_t shared_limit = dynamic_shared_attribute(k.kernel, &attribute) ? kSharedPerBlockOptin : kSharedPerBlock;
  const long long blocks = static_cast<long long>(k.grid.x) * k.grid.y * k.grid.z;
  std::mutex mutex;
  std::exception_ptr first_error;
  long long first_failed = blocks;
  std::atomic<bool> stop{false};
  LaunchCounters counters;
#pragma omp parallel for schedule(dynamic, 1) if (blocks > 1)
  for (long long i = 0; i < blocks; ++i) {
    if (stop.load(std::memory_order_relaxed)) continue;
    try {
      run_block(t_block_storage, k, static_cast<uint64_t>(i), schedule, shared_limit, counters);
    } catch (...) {
      std::lock_guard<std::mutex> lock(mutex);
      if (i < first_failed) {
        first_failed = i;
        first_error = std::current_exception();
      }
      stop.store(true, std::memory_order_relaxed);
    }
  }
  t_last_launch_stats = {counters.ldmatrix_wavefronts.load(), counters.ldmatrix_bank_conflicts.load()};
  if (first_error) std::rethrow_exception(first_error);
}

}  // namespace

void launch_kernel(const KernelLaunch& k) {
  if (t_block != nullptr) fail("a kernel cannot launch kernels in the emulator (no dynamic parallelism)");
  const cudaError_t config = check_configuration(k);
  if (config != cudaSuccess) {
    record_error(config);
    return;
  }
  cudaError_t err = cudaSuccess;
  switch (stream_mode(k.stream, &err)) {
    case StreamMode::kRun: return run_launch(k);
    case StreamMode::kError: record_error(err); return;
    case StreamMode::kCapture: break;
  }
  // A kernel node: the arguments as they are now, replayed on every launch of the graph.
  std::shared_ptr<void> call(k.clone(k.call), k.destroy);
  KernelLaunch node = k;
  node.call = call.get();
  capture_node(k.stream, {GraphNode::Kind::kKernel, k.kernel, [node, call] { run_launch(node); }});
}

}  // namespace l2v::emu
