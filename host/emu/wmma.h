// nvcuda::wmma (warp matrix multiply-accumulate) for the emulator; included by host/emu/cuda_emu.h.
// Shapes m16n16k16, m32n8k16 and m8n32k16; matrix_a / matrix_b fragments of __nv_bfloat16 or half
// (row_major or col_major), float accumulators.
//
// Fragment layout (which lane holds which element): CUDA leaves it unspecified, and element-wise code
// on frag.x[i] must not depend on it. Here lane l holds elements l*num_elements .. l*num_elements +
// num_elements - 1 of the fragment's tile read row by row (matrix_a: M x K, matrix_b: K x N,
// accumulator: M x N), i.e. element e of lane l is (row, col) = divmod(l * num_elements + e, cols).
//
// load_matrix_sync, store_matrix_sync and mma_sync are warp collectives: all 32 lanes of the warp must
// call them with the same pointer, ldm and layout (checked), the pointer must be 32-byte aligned and
// ldm a multiple of 16 bytes (checked: CUDA requires both). The memory is read or written, and the
// product computed, when the last lane arrives. mma_sync accumulates in fp32 in k order.
#pragma once

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

namespace emu {

template <typename Use, int M, int N, int K>
struct Tile;
template <int M, int N, int K>
struct Tile<matrix_a, M, N, K> {
  static constexpr int rows = M, cols = K;
};
template <int M, int N, int K>
struct Tile<matrix_b, M, N, K> {
  static constexpr int rows = K, cols = N;
};
template <int M, int N, int K>
struct Tile<accumulator, M, N, K> {
  static constexpr int rows = M, cols = N;
};

template <typename T>
constexpr bool is_multiplicand_type = std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value;

inline float to_float(float x) { return x; }
inline float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float to_float(__half x) { return __half2float(x); }

}  // namespace emu

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
class fragment {
  static_assert((M == 16 && N == 16 && K == 16) || (M == 32 && N == 8 && K == 16) || (M == 8 && N == 32 && K == 16),
                "wmma shapes supported by the emulator: m16n16k16, m32n8k16, m8n32k16");
  static_assert(std::is_same<Use, accumulator>::value
                    ? std::is_same<T, float>::value && std::is_void<Layout>::value
                    : emu::is_multiplicand_type<T> &&
                          (std::is_same<Layout, row_major>::value || std::is_same<Layout, col_major>::value),
                "wmma fragments in the emulator: matrix_a/matrix_b of __nv_bfloat16 or half with row_major or "
                "col_major, accumulator of float (no layout)");

 public:
  using element_type = T;
  enum { num_elements = emu::Tile<Use, M, N, K>::rows * emu::Tile<Use, M, N, K>::cols / 32 };
  T x[num_elements];
};

namespace emu {

// A lane's part of a load or store: the memory operand (identical in every lane) and its fragment.
struct TileArrival : l2v::emu::WarpArrival {
  void* mem = nullptr;
  unsigned ldm = 0;
  bool col_major = false;
  void* elements = nullptr;
};

template <typename Frag, typename Use, int M, int N, int K, typename T, bool Store>
void complete_tile(l2v::emu::WarpArrival* const lanes[32], unsigned) {
  const auto& first = *static_cast<TileArrival*>(lanes[0]);
  for (int l = 1; l < 32; ++l) {
    const auto& a = *static_cast<TileArrival*>(lanes[l]);
    if (a.mem != first.mem || a.ldm != first.ldm || a.col_major != first.col_major) {
      l2v::emu::fail(std::string(first.op->name) + ": the lanes of a warp pass different operands (lane 0: ptr " +
                     l2v::emu::hex(first.mem) + " ldm " + std::to_string(first.ldm) +
                     ", lane " + std::to_string(l) + ": ptr " + l2v::emu::hex(a.mem) + " ldm " + std::to_string(a.ldm) + ")");
    }
  }
  constexpr int cols = Tile<Use, M, N, K>::cols;
  constexpr int per_lane = Frag::num_elements;
  T* mem = static_cast<T*>(first.mem);
  for (int l = 0; l < 32; ++l) {
    T* x = static_cast<T*>(static_cast<TileArrival*>(lanes[l])->elements);
    for (int e = 0; e < per_lane; ++e) {
      const int i = l * per_lane + e, r = i / cols, c = i % cols;
      T& m = mem[first.col_major ? static_cast<size_t>(c) * first.ldm + r : static_cast<size_t>(r) * first.ldm + c];
      if (Store) {
        m = x[e];
      } else {
        x[e] = m;
      }
    }
  }
}

template <typename Frag, typename Use, int M, int N, int K, typename T, bool Store>
inline constexpr l2v::emu::WarpOp kTileOp{Store ? "wmma::store_matrix_sync" : "wmma::load_matrix_sync",
                                          &complete_tile<Frag, Use, M, N, K, T, Store>};

template <typename Frag, typename Use, int M, int N, int K, typename T, bool Store>
void tile_sync(T* elements, const T* mem, unsigned ldm, bool col_major, const char* file, int line) {
  const char* name = kTileOp<Frag, Use, M, N, K, T, Store>.name;
  if (reinterpret_cast<uintptr_t>(mem) % 32 != 0) {
    l2v::emu::fail(std::string(name) + " at " + file + ":" + std::to_string(line) + ": the pointer " +
                   l2v::emu::hex(mem) + " is not 32-byte aligned (CUDA requires 256 bits)");
  }
  if (ldm % (16 / sizeof(T)) != 0) {
    l2v::emu::fail(std::string(name) + " at " + file + ":" + std::to_string(line) + ": ldm " + std::to_string(ldm) +
                   " is not a multiple of 16 bytes (" + std::to_string(16 / sizeof(T)) + " elements)");
  }
  TileArrival a;
  a.op = &kTileOp<Frag, Use, M, N, K, T, Store>;
  a.mask = 0xffffffffu;
  a.file = file;
  a.line = line;
  a.mem = const_cast<T*>(mem);
  a.ldm = ldm;
  a.col_major = col_major;
  a.elements = elements;
  l2v::emu::warp_collective(a);
}

struct MmaArrival : l2v::emu::WarpArrival {
  const void* a = nullptr;
  const void* b = nullptr;
  const void* c = nullptr;
  void* d = nullptr;
};

template <typename FragA, typename FragB, int M, int N, int K>
void complete_mma(l2v::emu::WarpArrival* const lanes[32], unsigned) {
  float a[M * K], b[K * N], acc[M * N];
  for (int l = 0; l < 32; ++l) {
    const auto& arrival = *static_cast<MmaArrival*>(lanes[l]);
    const auto& fa = *static_cast<const FragA*>(arrival.a);
    const auto& fb = *static_cast<const FragB*>(arrival.b);
    const float* fc = static_cast<const float*>(arrival.c);
    for (int e = 0; e < FragA::num_elements; ++e) a[l * FragA::num_elements + e] = to_float(fa.x[e]);
    for (int e = 0; e < FragB::num_elements; ++e) b[l * FragB::num_elements + e] = to_float(fb.x[e]);
    for (int e = 0; e < M * N / 32; ++e) acc[l * (M * N / 32) + e] = fc[e];
  }
  for (int i = 0; i < M; ++i) {
    for (int j = 0; j < N; ++j) {
      float s = acc[i * N + j];
      for (int k = 0; k < K; ++k) s += a[i * K + k] * b[k * N + j];
      acc[i * N + j] = s;
    }
  }
  // Written after everything was gathered: d may be c.
  for (int l = 0; l < 32; ++l) {
    float* fd = static_cast<float*>(static_cast<MmaArrival*>(lanes[l])->d);
    for (int e = 0; e < M * N / 32; ++e) fd[e] = acc[l * (M * N / 32) + e];
  }
}

template <typename FragA, typename FragB, int M, int N, int K>
inline constexpr l2v::emu::WarpOp kMmaOp{"wmma::mma_sync", &complete_mma<FragA, FragB, M, N, K>};

}  // namespace emu

template <typename Use, int M, int N, int K, typename T, typename Layout>
void load_matrix_sync(fragment<Use, M, N, K, T, Layout>& a, const T* mptr, unsigned ldm,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  static_assert(!std::is_same<Use, accumulator>::value,
                "accumulator fragments load with a memory layout: load_matrix_sync(frag, ptr, ldm, mem_row_major)");
  emu::tile_sync<fragment<Use, M, N, K, T, Layout>, Use, M, N, K, T, false>(
      a.x, mptr, ldm, std::is_same<Layout, col_major>::value, file, line);
}

template <int M, int N, int K>
void load_matrix_sync(fragment<accumulator, M, N, K, float>& a, const float* mptr, unsigned ldm, layout_t layout,
                      const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emu::tile_sync<fragment<accumulator, M, N, K, float>, accumulator, M, N, K, float, false>(
      a.x, mptr, ldm, layout == mem_col_major, file, line);
}

template <int M, int N, int K>
void store_matrix_sync(float* mptr, const fragment<accumulator, M, N, K, float>& a, unsigned ldm, layout_t layout,
                       const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  // The fragment is only read: the store writes mptr.
  emu::tile_sync<fragment<accumulator, M, N, K, float>, accumulator, M, N, K, float, true>(
      const_cast<float*>(a.x), mptr, ldm, layout == mem_col_major, file, line);
}

template <typename Use, int M, int N, int K, typename T, typename Layout>
void fill_fragment(fragment<Use, M, N, K, T, Layout>& a,
                   const typename fragment<Use, M, N, K, T, Layout>::element_type& v) {
  for (int e = 0; e < fragment<Use, M, N, K, T, Layout>::num_elements; ++e) a.x[e] = v;
}

template <int M, int N, int K, typename T, typename LayoutA, typename LayoutB>
void mma_sync(fragment<accumulator, M, N, K, float>& d, const fragment<matrix_a, M, N, K, T, LayoutA>& a,
              const fragment<matrix_b, M, N, K, T, LayoutB>& b, const fragment<accumulator, M, N, K, float>& c,
              const char* file = __builtin_FILE(), int line = __builtin_LINE()) {
  emu::MmaArrival arrival;
  arrival.op = &emu::kMmaOp<fragment<matrix_a, M, N, K, T, LayoutA>, fragment<matrix_b, M, N, K, T, LayoutB>, M, N, K>;
  arrival.mask = 0xffffffffu;
  arrival.file = file;
  arrival.line = line;
  arrival.a = &a;
  arrival.b = &b;
  arrival.c = c.x;
  arrival.d = d.x;
  l2v::emu::warp_collective(arrival);
}

}  // namespace wmma
}  // namespace nvcuda
