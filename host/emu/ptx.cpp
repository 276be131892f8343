// The PTX-level warp operations (mma.sync m16n8k16, ldmatrix, cp.async) on the emulator; the contract,
// fragment layouts and numerics are in host/emu/ptx.h. The pending cp.async copies of the block running
// on this OS thread, and what its warps read and landed since its last block barrier, live in t_copies
// (blocks of one OS thread run one after another; the scheduler resets it per block through
// ptx_block_begin / ptx_block_end and per barrier through ptx_block_barrier).
#include "host/emu/ptx.h"

#include <algorithm>
#include <cstring>
#include <map>
#include <string>
#include <unordered_map>
#include <vector>

#include "host/emu/cuda_emu.h"
#include "host/emu/internal.h"

namespace l2v::emu {
namespace {

constexpr unsigned char kPoison = 0xFF;  // fresh shared memory's pattern too (scheduler.cpp)

std::string thread_name(const uint3& t) {
  return "thread (" + std::to_string(t.x) + "," + std::to_string(t.y) + "," + std::to_string(t.z) + ")";
}

// ---- cp.async bookkeeping.

struct PendingCopy {
  const char* op;  // the PTX instruction, for messages
  const char* file;
  int line;
  uint3 thread;     // the issuing thread's threadIdx
  uint64_t group;   // the issuing thread's group: the number of groups it had committed before the copy
  const unsigned char* src;
  unsigned bytes;      // cp-size
  unsigned src_bytes;  // bytes read from src; the rest of the destination is zero-filled
  unsigned char data[16];  // the source bytes, read at issue
};

// A 16-byte chunk of shared memory touched since the block's last barrier: the warps that read it
// (ldmatrix, ld_shared; bit w for warp w, at most 32 warps) and the first such read, or the copy that
// landed in it and the warp that issued it.
struct Touch {
  uint32_t readers = 0;
  const char* read_op = nullptr;  // the first read: instruction and site
  const char* read_file = nullptr;
  int read_line = 0;
  int landed_by = -1;  // the warp of the copy that landed here, -1 if none
  std::pair<uintptr_t, PendingCopy> landed;  // that copy (destination, copy)
};

struct BlockCopies {
  unsigned nthreads = 0;
  // Shared memory chunks (address / 16) read or landed in since the last block barrier: what the next
  // barrier orders. A cp.async into a chunk another warp read, or another warp's read of a landed chunk,
  // in the same interval is a race on a GPU, whose warps run independently; here warps advance in
  // lockstep between collectives, so the race itself never shows.
  std::unordered_map<uintptr_t, Touch> touched;
  // Every pending copy of the block by destination address; their destinations never overlap.
  std::map<uintptr_t, PendingCopy> pending;
  // Per thread (thread_rank): its pending destinations in issue order (so in group order) and how many
  // groups it has committed. Sized by the block's first cp.async (most kernels have none): commits and
  // waits before it change nothing, since only differences between group numbers matter.
  std::vector<std::vector<uintptr_t>> issued;
  std::vector<uint64_t> committed;
};
thread_local BlockCopies t_copies;

bool copies_issued() { return !t_copies.issued.empty(); }

void asan_poison(const void* p, size_t n) {
#if defined(L2V_EMU_ASAN)
  ASAN_POISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}

void asan_unpoison(const void* p, size_t n) {
#if defined(L2V_EMU_ASAN)
  ASAN_UNPOISON_MEMORY_REGION(p, n);
#else
  (void)p, (void)n;
#endif
}

using Pending = std::map<uintptr_t, PendingCopy>::value_type;  // (destination address, copy)

// The pending copy whose destination overlaps [p, p + n), or nullptr.
const Pending* pending_overlap(const void* p, size_t n) {
  const auto lo = reinterpret_cast<uintptr_t>(p);
  auto it = t_copies.pending.lower_bound(lo + n);  // the first copy starting at or after the end
  if (it == t_copies.pending.begin()) return nullptr;
  --it;  // the last copy starting before the end: the only one that can reach into [lo, lo + n)
  return it->first + it->second.bytes > lo ? &*it : nullptr;
}

std::string describe(const Pending& p) {
  const PendingCopy& c = p.second;
  return std::string(c.op) + " at " + site(c.file, c.line) + " by " + thread_name(c.thread) + " (destination " +
         hex(p.first) + ", " + std::to_string(c.bytes) + " bytes)";
}

// Fails if [p, p + n) is the destination of a pending copy: what() names the reading operation (built
// only then: these checks run for every row and copy).
template <typename What>
void check_readable(const What& what, const void* p, size_t n) {
  if (const Pending* c = pending_overlap(p, n)) {
    fail(what() + " reads " + std::to_string(n) + " bytes at " + hex(p) + " that the pending " + describe(*c) +
         " has not written yet: the issuing thread must cp_async_wait_group / cp_async_wait_all for it, "
         "then the block __syncthreads(), before anyone reads it");
  }
}

// Records a read of [p, p + n) by warp `warp` with instruction `op` at file:line, and fails if another
// warp's copy landed there since the last barrier.
void record_read(const char* op, const char* file, int line, const void* p, size_t n, unsigned warp) {
  const auto lo = reinterpret_cast<uintptr_t>(p);
  for (uintptr_t chunk = lo / 16; chunk <= (lo + n - 1) / 16; ++chunk) {
    Touch& t = t_copies.touched[chunk];
    if (t.landed_by >= 0 && t.landed_by != static_cast<int>(warp)) {
      fail(std::string(op) + " at " + site(file, line) + " (warp " + std::to_string(warp) + ") reads " + hex(p) +
           ", where the " + describe(t.landed) + " (warp " + std::to_string(t.landed_by) +
           ") landed since the last __syncthreads(): its wait makes the bytes visible to the issuing thread, "
           "other warps must meet it at a __syncthreads() first");
    }
    if (t.readers == 0) t.read_op = op, t.read_file = file, t.read_line = line;
    t.readers |= 1u << warp;
  }
}

// Writes a pending copy's bytes into its destination (the copy leaves the pending set afterwards).
void land(const Pending& p, const char* wait, const char* file, int line) {
  const PendingCopy& c = p.second;
  auto* dst = reinterpret_cast<unsigned char*>(p.first);
  asan_unpoison(dst, c.bytes);
  auto where = [&] { return std::string(wait) + " at " + site(file, line) + " lands " + describe(p); };
  for (unsigned i = 0; i < c.bytes; ++i) {
    if (dst[i] != kPoison) {
      fail(where() + ", but its destination was written while the copy was pending (byte " + std::to_string(i) +
           " is " + hex(dst[i]) + ", not the poison 0xff): a store racing with the copy");
    }
  }
  if (c.src_bytes > 0 && std::memcmp(c.src, c.data, c.src_bytes) != 0) {
    fail(where() + ", but its global source " + hex(c.src) +
         " changed while the copy was pending: a write racing with the copy");
  }
  std::memcpy(dst, c.data, c.src_bytes);  // c.data, never c.src: src_bytes may be 0 with any src
  std::memset(dst + c.src_bytes, 0, c.bytes - c.src_bytes);
  const int warp = static_cast<int>(thread_rank() / 32);
  for (uintptr_t chunk = p.first / 16; chunk <= (p.first + c.bytes - 1) / 16; ++chunk) {
    Touch& t = t_copies.touched[chunk];
    t.landed_by = warp;
    t.landed = p;
  }
}

// Lands the running thread's copies of groups < `groups` (uncommitted copies: groups = committed + 1).
void land_groups(uint64_t groups, const char* wait, const char* file, int line) {
  std::vector<uintptr_t>& issued = t_copies.issued[thread_rank()];
  size_t landed = 0;
  for (; landed < issued.size(); ++landed) {
    const auto it = t_copies.pending.find(issued[landed]);
    if (it->second.group >= groups) break;
    land(*it, wait, file, line);
    t_copies.pending.erase(it);
  }
  issued.erase(issued.begin(), issued.begin() + static_cast<std::ptrdiff_t>(landed));
}

// ---- Warp collectives: mma and ldmatrix.

// The .aligned instructions: every lane at the same site (the scheduler has already checked that the 32
// lanes of a full warp arrived, with the same instruction).
template <typename Arrival>
void check_converged(WarpArrival* const lanes[32]) {
  const auto& first = *static_cast<const Arrival*>(lanes[0]);
  for (int l = 1; l < 32; ++l) {
    const auto& a = *static_cast<const Arrival*>(lanes[l]);
    if (a.line != first.line || std::strcmp(a.file, first.file) != 0) {
      fail(std::string(first.op->name) + ": the lanes of warp " + std::to_string(first.thread / 32) +
           " are not converged (a .sync.aligned instruction must be executed by all 32 lanes at one site): lane 0 at " +
           site(first.file, first.line) + ", lane " + std::to_string(l) + " at " + site(a.file, a.line));
    }
  }
}

struct MmaArrival : WarpArrival {
  unsigned thread = 0;
  uint32_t a[4] = {}, b[2] = {};
  float c[4] = {};
  float* d = nullptr;
};

// Element e (0 = low half) of a register holding two 16-bit values.
float element(MmaInput type, uint32_t reg, int e) {
  const auto bits = static_cast<unsigned short>(reg >> (16 * e));
  if (type == MmaInput::kBf16) {
    __nv_bfloat16_raw raw;
    raw.x = bits;
    return __bfloat162float(__nv_bfloat16(raw));
  }
  __half_raw raw;
  raw.x = bits;
  return __half2float(__half(raw));
}

template <MmaInput kType>
void complete_mma(WarpArrival* const lanes[32], unsigned) {
  check_converged<MmaArrival>(lanes);
  float a[16][16], b[16][8], c[16][8];
  for (int l = 0; l < 32; ++l) {
    const auto& x = *static_cast<const MmaArrival*>(lanes[l]);
    const int group = l >> 2, tig = l % 4;
    for (int i = 0; i < 8; ++i) {  // a_i: register i / 2, half i % 2
      const int row = group + ((i & 2) ? 8 : 0), col = 2 * tig + (i & 1) + (i >= 4 ? 8 : 0);
      a[row][col] = element(kType, x.a[i / 2], i % 2);
    }
    for (int i = 0; i < 4; ++i) {  // b_i
      b[2 * tig + (i & 1) + (i >= 2 ? 8 : 0)][group] = element(kType, x.b[i / 2], i % 2);
    }
    for (int i = 0; i < 4; ++i) c[group + (i >= 2 ? 8 : 0)][2 * tig + (i & 1)] = x.c[i];
  }
  // Written after everything was gathered: a lane's d may be its c.
  for (int l = 0; l < 32; ++l) {
    const int group = l >> 2, tig = l % 4;
    for (int i = 0; i < 4; ++i) {
      const int row = group + (i >= 2 ? 8 : 0), col = 2 * tig + (i & 1);
      float s = c[row][col];
      for (int k = 0; k < 16; ++k) s += a[row][k] * b[k][col];  // exact product, one rounding per add
      static_cast<MmaArrival*>(lanes[l])->d[i] = s;
    }
  }
}

const WarpOp kMmaBf16{"mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32", &complete_mma<MmaInput::kBf16>};
const WarpOp kMmaF16{"mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32", &complete_mma<MmaInput::kF16>};

struct LdmatrixArrival : WarpArrival {
  unsigned thread = 0;
  const unsigned char* row = nullptr;
  uint32_t* r = nullptr;
};

// Wavefronts of one 8-lane phase: the most distinct 4-byte words any bank is asked for.
unsigned phase_wavefronts(const unsigned char* const rows[8]) {
  uintptr_t words[32];
  for (int j = 0; j < 8; ++j) {
    for (int w = 0; w < 4; ++w) words[4 * j + w] = reinterpret_cast<uintptr_t>(rows[j]) / 4 + w;
  }
  std::sort(words, words + 32);
  unsigned per_bank[32] = {};
  const uintptr_t* const distinct_end = std::unique(words, words + 32);
  for (const uintptr_t* w = words; w != distinct_end; ++w) ++per_bank[*w % 32];
  return *std::max_element(per_bank, per_bank + 32);
}

template <int kNum, bool kTrans>
void complete_ldmatrix(WarpArrival* const lanes[32], unsigned) {
  check_converged<LdmatrixArrival>(lanes);
  const auto& first = *static_cast<const LdmatrixArrival*>(lanes[0]);
  uint64_t wavefronts = 0;
  unsigned short m[kNum][8][8];
  for (int i = 0; i < kNum; ++i) {
    const unsigned char* rows[8];
    for (int j = 0; j < 8; ++j) {
      rows[j] = static_cast<const LdmatrixArrival*>(lanes[8 * i + j])->row;
      check_readable(
          [&] {
            return std::string(first.op->name) + " at " + site(first.file, first.line) + " (matrix " +
                   std::to_string(i) + " row " + std::to_string(j) + ", lane " + std::to_string(8 * i + j) + ")";
          },
          rows[j], 16);
      std::memcpy(m[i][j], rows[j], 16);
      record_read(first.op->name, first.file, first.line, rows[j], 16, first.thread / 32);
    }
    wavefronts += phase_wavefronts(rows);
  }
  LaunchCounters& counters = launch_counters();
  counters.ldmatrix_wavefronts += wavefronts;
  counters.ldmatrix_bank_conflicts += wavefronts - kNum;
  for (int l = 0; l < 32; ++l) {
    uint32_t* r = static_cast<LdmatrixArrival*>(lanes[l])->r;
    const int row = l / 4, col = 2 * (l % 4);
    for (int i = 0; i < kNum; ++i) {
      const unsigned short lo = kTrans ? m[i][col][row] : m[i][row][col];
      const unsigned short hi = kTrans ? m[i][col + 1][row] : m[i][row][col + 1];
      r[i] = lo | static_cast<uint32_t>(hi) << 16;
    }
  }
}

template <int kNum, bool kTrans>
const WarpOp kLdmatrix{kTrans ? (kNum == 1 ? "ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16"
                                 : kNum == 2 ? "ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16"
                                             : "ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16")
                              : (kNum == 1 ? "ldmatrix.sync.aligned.m8n8.x1.shared.b16"
                                 : kNum == 2 ? "ldmatrix.sync.aligned.m8n8.x2.shared.b16"
                                             : "ldmatrix.sync.aligned.m8n8.x4.shared.b16"),
                       &complete_ldmatrix<kNum, kTrans>};

const WarpOp& ldmatrix_op(int num, bool trans) {
  switch (num) {
    case 1: return trans ? kLdmatrix<1, true> : kLdmatrix<1, false>;
    case 2: return trans ? kLdmatrix<2, true> : kLdmatrix<2, false>;
    default: return trans ? kLdmatrix<4, true> : kLdmatrix<4, false>;
  }
}

}  // namespace

void mma_m16n8k16(MmaInput type, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
                  const char* file, int line) {
  MmaArrival x;
  x.op = type == MmaInput::kBf16 ? &kMmaBf16 : &kMmaF16;
  x.mask = 0xffffffffu;
  x.file = file;
  x.line = line;
  x.thread = thread_rank();
  std::copy(a, a + 4, x.a);
  std::copy(b, b + 2, x.b);
  std::copy(c, c + 4, x.c);
  x.d = d;
  warp_collective(x);
}

void ldmatrix(int num, bool trans, uint32_t* r, const void* row, const char* file, int line) {
  LdmatrixArrival x;
  x.op = &ldmatrix_op(num, trans);
  x.mask = 0xffffffffu;
  x.file = file;
  x.line = line;
  x.thread = thread_rank();
  x.row = static_cast<const unsigned char*>(row);
  x.r = r;
  // Only the lanes that address rows are checked: the others' addresses are ignored (sm_80 and later).
  if (lane_id() < 8u * num) {
    auto where = [&] {
      return std::string(x.op->name) + " at " + site(file, line) + ": lane " + std::to_string(lane_id()) +
             "'s row address " + hex(row);
    };
    if (reinterpret_cast<uintptr_t>(row) % 16 != 0) fail(where() + " is not 16-byte aligned (each row is 16 bytes)");
    if (!in_shared_memory(row, 16)) fail(where() + " is not 16 bytes inside the block's shared memory");
  }
  warp_collective(x);
}

void cp_async(CacheOp op, int bytes, void* dst, const void* src, int src_bytes, const char* file, int line) {
  const char* name = op == CacheOp::kCa ? "cp.async.ca.shared.global" : "cp.async.cg.shared.global";
  auto where = [&] { return std::string(name) + " at " + site(file, line) + " (" + std::to_string(bytes) + " bytes)"; };
  if (src_bytes < 0 || src_bytes > bytes) {
    fail(where() + ": src-size " + std::to_string(src_bytes) + " is outside [0, " + std::to_string(bytes) + "]");
  }
  if (reinterpret_cast<uintptr_t>(dst) % bytes != 0 || reinterpret_cast<uintptr_t>(src) % bytes != 0) {
    fail(where() + ": the destination " + hex(dst) + " and the source " + hex(src) + " must both be " +
         std::to_string(bytes) + "-byte aligned");
  }
  if (!in_shared_memory(dst, bytes)) fail(where() + ": the destination " + hex(dst) + " is not in the block's shared memory");
  if (in_shared_memory(src, 1)) fail(where() + ": the source " + hex(src) + " is in shared memory, not global memory");
  const auto dst_address = reinterpret_cast<uintptr_t>(dst);
  if (const Pending* other = pending_overlap(dst, bytes)) {
    fail(where() + ": the destination " + hex(dst) + " overlaps that of the pending " + describe(*other) +
         " (no order holds between two cp.async copies: wait for the first before reusing its destination)");
  }
  const unsigned rank = thread_rank();
  for (uintptr_t chunk = dst_address / 16; chunk <= (dst_address + bytes - 1) / 16; ++chunk) {
    const auto it = t_copies.touched.find(chunk);
    if (it != t_copies.touched.end() && (it->second.readers & ~(1u << rank / 32)) != 0) {
      fail(where() + " by warp " + std::to_string(rank / 32) + ": its destination " + hex(dst) +
           " was read since the last __syncthreads() by another warp (warps " + hex(it->second.readers) +
           ", first by " + it->second.read_op + " at " + site(it->second.read_file, it->second.read_line) +
           "): nothing orders that read before the copy's write, a __syncthreads() is missing between them");
    }
  }
  if (!copies_issued()) {
    t_copies.issued.resize(t_copies.nthreads);
    t_copies.committed.assign(t_copies.nthreads, 0);
  }
  PendingCopy c{name, file, line, threadIdx, t_copies.committed[rank], static_cast<const unsigned char*>(src),
                static_cast<unsigned>(bytes), static_cast<unsigned>(src_bytes), {}};
  if (src_bytes > 0) std::memcpy(c.data, src, src_bytes);
  std::memset(dst, kPoison, bytes);
  asan_poison(dst, bytes);
  t_copies.pending.emplace(dst_address, c);
  t_copies.issued[rank].push_back(dst_address);
}

void cp_async_commit_group(const char*, int) {
  if (copies_issued()) ++t_copies.committed[thread_rank()];
}

void cp_async_wait_group(int n, const char* file, int line) {
  if (!copies_issued()) return;
  const uint64_t committed = t_copies.committed[thread_rank()];
  const uint64_t newest = static_cast<uint64_t>(n);
  land_groups(committed > newest ? committed - newest : 0, "cp.async.wait_group", file, line);
}

void cp_async_wait_all(const char* file, int line) {
  // PTX: cp.async.commit_group; cp.async.wait_group 0.
  if (!copies_issued()) return;
  const uint64_t committed = ++t_copies.committed[thread_rank()];
  land_groups(committed, "cp.async.wait_all", file, line);
}

void check_shared_read(const void* p, size_t bytes, const char* file, int line) {
  auto where = [&] { return "ld_shared at " + site(file, line); };
  if (!in_shared_memory(p, bytes)) {
    fail(where() + ": " + std::to_string(bytes) + " bytes at " + hex(p) + " are not inside the block's shared memory");
  }
  check_readable(where, p, bytes);
  record_read("ld_shared", file, line, p, bytes, thread_rank() / 32);
}

void ptx_block_begin(unsigned nthreads) {
  t_copies.nthreads = nthreads;
  t_copies.pending.clear();
  t_copies.issued.clear();
  t_copies.committed.clear();
  t_copies.touched.clear();
}

void ptx_block_barrier() { t_copies.touched.clear(); }

void ptx_thread_returned(unsigned thread) {
  if (!copies_issued()) return;
  const std::vector<uintptr_t>& issued = t_copies.issued[thread];
  if (issued.empty()) return;
  const auto it = t_copies.pending.find(issued.front());
  fail("the kernel returned with " + std::to_string(issued.size()) + " cp.async cop" +
       (issued.size() == 1 ? "y" : "ies") + " never waited for (the first: " + describe(*it) +
       "): wait for every copy (cp_async_wait_all) before returning");
}

void ptx_block_end() {
  for (const auto& [dst, c] : t_copies.pending) asan_unpoison(reinterpret_cast<const void*>(dst), c.bytes);
  t_copies.pending.clear();
  t_copies.touched.clear();
}

}  // namespace l2v::emu
