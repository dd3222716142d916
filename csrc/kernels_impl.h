// Kernel bodies, compiled once per ISA (isa_scalar.cpp, isa_avx2.cpp, isa_avx512.cpp).
//
// Each including file defines ANYBIT_ISA_NS (the namespace) and ANYBIT_ISA_LEVEL (0 scalar,
// 1 AVX2+FMA, 2 AVX-512 F/BW/VL/DQ/VNNI) and is compiled with the matching target flags. Everything
// here is `static` or lives in that namespace, and no standard-library templates are instantiated,
// so no function compiled for one ISA can be shared by the linker with another ISA's code.
//
// The weight-only kernels are written once against a 16-lane vector type (F16: floats, U16: uint32
// codes/indices) whose three implementations are one zmm, two ymm or a plain array; the integer
// kernels (vpdpbusd vs vpmaddwd) differ enough that each ISA has its own inner loop.
#include <cstdlib>
#include <cstring>

#include "kernels.h"

#if ANYBIT_ISA_LEVEL > 0
#include <immintrin.h>
#endif

namespace anybit {
namespace ANYBIT_ISA_NS {

// ------------------------------------------------------------------------------------------------
// 16-lane vectors
// ------------------------------------------------------------------------------------------------
#if ANYBIT_ISA_LEVEL == 2
struct F16 {
  __m512 v;
};
struct U16 {
  __m512i v;
};
using Table16 = F16;  // 16-entry float table held in one register
static inline F16 f_zero() { return {_mm512_setzero_ps()}; }
static inline F16 f_set1(float s) { return {_mm512_set1_ps(s)}; }
static inline F16 f_load(const float* p) { return {_mm512_loadu_ps(p)}; }
static inline void f_store(float* p, F16 a) { _mm512_storeu_ps(p, a.v); }
static inline F16 f_add(F16 a, F16 b) { return {_mm512_add_ps(a.v, b.v)}; }
static inline F16 f_fma(F16 a, F16 b, F16 c) { return {_mm512_fmadd_ps(a.v, b.v, c.v)}; }
static inline float f_hsum(F16 a) { return _mm512_reduce_add_ps(a.v); }
static inline U16 u_load(const uint32_t* p) { return {_mm512_loadu_si512(p)}; }
static inline U16 u_load_bytes(const uint8_t* p) {  // 16 bytes -> 16 uint32 lanes
  return {_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
}
static inline U16 u_srli(U16 a, int n) { return {_mm512_srli_epi32(a.v, n)}; }
static inline Table16 t_load(const float* p) { return f_load(p); }
// value of entry (idx & 15) per lane: vpermps ignores the index bits above 3
static inline F16 t_lookup(U16 idx, Table16 t) { return {_mm512_permutexvar_ps(idx.v, t.v)}; }
static inline void build_lut4(const float* x, float* out) {
  __m512 t = _mm512_setzero_ps();
  t = _mm512_mask_add_ps(t, 0xAAAA, t, _mm512_set1_ps(x[0]));
  t = _mm512_mask_add_ps(t, 0xCCCC, t, _mm512_set1_ps(x[1]));
  t = _mm512_mask_add_ps(t, 0xF0F0, t, _mm512_set1_ps(x[2]));
  t = _mm512_mask_add_ps(t, 0xFF00, t, _mm512_set1_ps(x[3]));
  _mm512_storeu_ps(out, t);
}
#elif ANYBIT_ISA_LEVEL == 1
struct F16 {
  __m256 lo, hi;
};
struct U16 {
  __m256i lo, hi;
};
struct Table16 {
  __m256 lo, hi;
};
static inline F16 f_zero() { return {_mm256_setzero_ps(), _mm256_setzero_ps()}; }
static inline F16 f_set1(float s) { return {_mm256_set1_ps(s), _mm256_set1_ps(s)}; }
static inline F16 f_load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
static inline void f_store(float* p, F16 a) {
  _mm256_storeu_ps(p, a.lo);
  _mm256_storeu_ps(p + 8, a.hi);
}
static inline F16 f_add(F16 a, F16 b) { return {_mm256_add_ps(a.lo, b.lo), _mm256_add_ps(a.hi, b.hi)}; }
static inline F16 f_fma(F16 a, F16 b, F16 c) {
  return {_mm256_fmadd_ps(a.lo, b.lo, c.lo), _mm256_fmadd_ps(a.hi, b.hi, c.hi)};
}
static inline float f_hsum(F16 a) {
  __m256 s = _mm256_add_ps(a.lo, a.hi);
  __m128 q = _mm_add_ps(_mm256_castps256_ps128(s), _mm256_extractf128_ps(s, 1));
  q = _mm_add_ps(q, _mm_movehl_ps(q, q));
  q = _mm_add_ss(q, _mm_movehdup_ps(q));
  return _mm_cvtss_f32(q);
}
static inline U16 u_load(const uint32_t* p) {
  return {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 8))};
}
static inline U16 u_load_bytes(const uint8_t* p) {
  return {_mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p))),
          _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + 8)))};
}
static inline U16 u_srli(U16 a, int n) { return {_mm256_srli_epi32(a.lo, n), _mm256_srli_epi32(a.hi, n)}; }
static inline Table16 t_load(const float* p) { return {_mm256_loadu_ps(p), _mm256_loadu_ps(p + 8)}; }
// 16-entry lookup from two 8-entry permutes; index bit 3 (moved to the sign bit) picks the half
static inline __m256 lookup8(__m256i idx, const Table16& t) {
  const __m256 from_lo = _mm256_permutevar8x32_ps(t.lo, idx);
  const __m256 from_hi = _mm256_permutevar8x32_ps(t.hi, idx);
  return _mm256_blendv_ps(from_lo, from_hi, _mm256_castsi256_ps(_mm256_slli_epi32(idx, 28)));
}
static inline F16 t_lookup(U16 idx, const Table16& t) { return {lookup8(idx.lo, t), lookup8(idx.hi, t)}; }
#else
struct F16 {
  float v[16];
};
struct U16 {
  uint32_t v[16];
};
struct Table16 {
  const float* p;
};
static inline F16 f_zero() {
  F16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = 0.0f;
  return r;
}
static inline F16 f_set1(float s) {
  F16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = s;
  return r;
}
static inline F16 f_load(const float* p) {
  F16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = p[i];
  return r;
}
static inline void f_store(float* p, const F16& a) {
  for (int i = 0; i < 16; ++i) p[i] = a.v[i];
}
static inline F16 f_add(const F16& a, const F16& b) {
  F16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] + b.v[i];
  return r;
}
static inline F16 f_fma(const F16& a, const F16& b, const F16& c) {
  F16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = __builtin_fmaf(a.v[i], b.v[i], c.v[i]);
  return r;
}
static inline float f_hsum(const F16& a) {
  float s = 0.0f;
  for (int i = 0; i < 16; ++i) s += a.v[i];
  return s;
}
static inline U16 u_load(const uint32_t* p) {
  U16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = p[i];
  return r;
}
static inline U16 u_load_bytes(const uint8_t* p) {
  U16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = p[i];
  return r;
}
static inline U16 u_srli(const U16& a, int n) {
  U16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = a.v[i] >> n;
  return r;
}
static inline Table16 t_load(const float* p) { return {p}; }
static inline F16 t_lookup(const U16& idx, const Table16& t) {
  F16 r;
  for (int i = 0; i < 16; ++i) r.v[i] = t.p[idx.v[i] & 15u];
  return r;
}
#endif

#if ANYBIT_ISA_LEVEL != 2
// T[idx] = sum of x[i] over the set bits i of idx, summed in the order x0, x1, x2, x3 (as the
// AVX-512 version's masked adds do, so every ISA builds bit-identical tables)
static inline void build_lut4(const float* x, float* out) {
  for (int idx = 0; idx < 16; ++idx) {
    float t = 0.0f;
    for (int i = 0; i < 4; ++i)
      if (idx & (1 << i)) t += x[i];
    out[idx] = t;
  }
}
#endif

static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

// Below this many multiply-adds a call runs on the calling thread only: waking the OpenMP team
// and meeting at its barrier costs more than the work (and, on a loaded machine, a barrier waits
// for a time slice of every thread).
constexpr int64_t kParallelMinMacs = int64_t{1} << 21;
static inline bool worth_threads(const GemmArgs& a) { return a.M * a.N * a.K_pad >= kParallelMinMacs; }

// Software prefetch of the weight stream: the lookup kernels spend many instructions per byte, so
// without it the hardware prefetcher alone leaves DRAM latency exposed (measured ~2.5x slower
// GEMV on weights not in cache).
constexpr int kPrefetchBytes = 2048;
static inline void prefetch(const void* p) {
#if ANYBIT_ISA_LEVEL > 0
  _mm_prefetch(static_cast<const char*>(p), _MM_HINT_T0);
#else
  __builtin_prefetch(p);
#endif
}

static void* alloc_scratch(size_t bytes) {
  void* p = std::aligned_alloc(64, round_up(static_cast<int64_t>(bytes) + 64, 64));
  return p;
}

// Sum of x over each group of `group_size` columns: [M, G] (offsets multiply it).
static void group_sums(const GemmArgs& a, float* out) {
  for (int64_t m = 0; m < a.M; ++m)
    for (int64_t g = 0; g < a.n_groups; ++g) {
      const float* x = a.x + m * a.K_pad + g * a.group_size;
      float s = 0.0f;
      for (int64_t k = 0; k < a.group_size; ++k) s += x[k];
      out[m * a.n_groups + g] = s;
    }
}

// ------------------------------------------------------------------------------------------------
// intbp: weight-only GEMM on bit-plane integer codes, T-MAC style lookup over bit planes.
//
// For one row r and a group g: sum_k w[r,k] x[k] = s[r,g] * sum_k c[r,k] x[k] + o[r,g] * X[g] with
// c the unsigned code, s the scale, o = value of code 0, X[g] = sum of x over the group. The code
// sum splits over bit planes: sum_k c x = sum_b 2^b sum_k bit_b(c) x, and each plane's sum takes
// one table lookup per 4 columns: T_j[idx] = sum_{i<4} bit_i(idx) x[4j+i]. With 16 rows in 16
// lanes, a lookup is one vpermps; the work is proportional to the number of bit planes.
// ------------------------------------------------------------------------------------------------
template <int BITS>
static void intbp_tile(const GemmArgs& a, int64_t tile, const float* luts, const float* gsums) {
  const int64_t chunks = a.K_pad / kIntChunkCols;
  const int64_t chunks_per_group = a.group_size / kIntChunkCols;
  const int64_t luts_per_token = a.K_pad / kLutGroupCols * 16;
  const uint32_t* tile_words = static_cast<const uint32_t*>(a.weight) + tile * chunks * BITS * kIntTileRows;
  const float* tile_scales = a.scales + tile * a.n_groups * kIntTileRows;
  const float* tile_offsets = a.offsets ? a.offsets + tile * a.n_groups * kIntTileRows : nullptr;
  const int64_t row0 = tile * kIntTileRows;
  const int64_t rows = min64(kIntTileRows, a.N - row0);
  for (int64_t m = 0; m < a.M; ++m) {
    const float* lut = luts + m * luts_per_token;
    F16 out = f_zero();
    for (int64_t g = 0; g < a.n_groups; ++g) {
      // two accumulator sets (even / odd table index) halve the add dependency chains
      F16 acc[2][BITS];
      for (int b = 0; b < BITS; ++b) acc[0][b] = acc[1][b] = f_zero();
      for (int64_t c = g * chunks_per_group; c < (g + 1) * chunks_per_group; ++c) {
        U16 plane[BITS];
        for (int b = 0; b < BITS; ++b) {
          const uint32_t* words = tile_words + (c * BITS + b) * kIntTileRows;
          prefetch(reinterpret_cast<const char*>(words) + kPrefetchBytes);
          plane[b] = u_load(words);
        }
        const float* chunk_lut = lut + c * (kIntChunkCols / kLutGroupCols) * 16;
        for (int j = 0; j < kIntChunkCols / kLutGroupCols; ++j) {
          const Table16 table = t_load(chunk_lut + j * 16);
          for (int b = 0; b < BITS; ++b)
            acc[j & 1][b] = f_add(acc[j & 1][b], t_lookup(u_srli(plane[b], 4 * j), table));
        }
      }
      // Horner over the planes: code sum = sum_b 2^b acc[b]
      F16 code_sum = f_add(acc[0][BITS - 1], acc[1][BITS - 1]);
      for (int b = BITS - 2; b >= 0; --b) code_sum = f_fma(code_sum, f_set1(2.0f), f_add(acc[0][b], acc[1][b]));
      const F16 scale = f_load(tile_scales + g * kIntTileRows);
      const F16 xsum = f_set1(gsums[m * a.n_groups + g]);
      out = f_fma(scale, code_sum, out);
      if (tile_offsets) {
        out = f_fma(f_load(tile_offsets + g * kIntTileRows), xsum, out);
      } else {
        F16 scaled_xsum = f_zero();
        scaled_xsum = f_fma(xsum, f_set1(a.offset_mul), scaled_xsum);
        out = f_fma(scale, scaled_xsum, out);
      }
    }
    float lanes[kIntTileRows];
    f_store(lanes, out);
    float* y = a.y + m * a.N + row0;
    for (int64_t r = 0; r < rows; ++r) y[r] = lanes[r];
  }
}

void gemm_intbp(const GemmArgs& a) {
  const int64_t lut_floats = a.M * (a.K_pad / kLutGroupCols) * 16;
  float* luts = static_cast<float*>(alloc_scratch(sizeof(float) * lut_floats));
  float* gsums = static_cast<float*>(alloc_scratch(sizeof(float) * a.M * a.n_groups));
  const int64_t quads = a.K_pad / kLutGroupCols;
#pragma omp parallel for schedule(static) if (worth_threads(a))
  for (int64_t i = 0; i < a.M * quads; ++i) {
    const int64_t m = i / quads, j = i % quads;
    build_lut4(a.x + m * a.K_pad + j * kLutGroupCols, luts + i * 16);
  }
  group_sums(a, gsums);
  const int64_t tiles = round_up(a.N, kIntTileRows) / kIntTileRows;
#pragma omp parallel for schedule(static) if (worth_threads(a))
  for (int64_t t = 0; t < tiles; ++t) {
    switch (a.bits) {
      case 1: intbp_tile<1>(a, t, luts, gsums); break;
      case 2: intbp_tile<2>(a, t, luts, gsums); break;
      case 3: intbp_tile<3>(a, t, luts, gsums); break;
      case 4: intbp_tile<4>(a, t, luts, gsums); break;
      case 5: intbp_tile<5>(a, t, luts, gsums); break;
      case 6: intbp_tile<6>(a, t, luts, gsums); break;
      case 7: intbp_tile<7>(a, t, luts, gsums); break;
      default: intbp_tile<8>(a, t, luts, gsums); break;
    }
  }
  std::free(luts);
  std::free(gsums);
}

// Dequantize rows [0, N) of bit-plane codes to float32 [N, K_pad] (for large-M GEMM via BLAS).
void dequant_intbp(const GemmArgs& a) {
  const int64_t chunks = a.K_pad / kIntChunkCols;
  const int64_t chunks_per_group = a.group_size / kIntChunkCols;
#pragma omp parallel for schedule(static) if (worth_threads(a))
  for (int64_t n = 0; n < a.N; ++n) {
    const int64_t tile = n / kIntTileRows, lane = n % kIntTileRows;
    const uint32_t* tile_words = static_cast<const uint32_t*>(a.weight) + tile * chunks * a.bits * kIntTileRows;
    float* out = a.y + n * a.K_pad;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t g = c / chunks_per_group;
      const float s = a.scales[(tile * a.n_groups + g) * kIntTileRows + lane];
      const float o = a.offsets ? a.offsets[(tile * a.n_groups + g) * kIntTileRows + lane] : s * a.offset_mul;
      uint32_t code[kIntChunkCols];
      for (int j = 0; j < kIntChunkCols; ++j) code[j] = 0;
      for (int b = 0; b < a.bits; ++b) {
        const uint32_t word = tile_words[(c * a.bits + b) * kIntTileRows + lane];
        for (int j = 0; j < kIntChunkCols; ++j) code[j] |= ((word >> j) & 1u) << b;
      }
      for (int j = 0; j < kIntChunkCols; ++j) out[c * kIntChunkCols + j] = s * static_cast<float>(code[j]) + o;
    }
  }
}

// ------------------------------------------------------------------------------------------------
// cb4: codebook lookup of <= 4-bit codes (FP4, NF4, dINT, BitMoD, ...). Lanes run along K: 16
// codes index the group's 16-entry table (one vpermps), the values multiply 16 activations. A
// format family (BitMoD) picks the table per group from type_ids. The scale multiplies the group's
// partial sum once (dequantize after the per-group partial sum); a float offset adds o * X[g].
// ------------------------------------------------------------------------------------------------
template <int TB>
static void cb4_row(const GemmArgs& a, int64_t n, int64_t m0, const float* gsums) {
  const int64_t chunks = a.K_pad / kCbChunkCols;
  const int64_t halves_per_group = a.group_size / kCbHalfCols;
  const uint8_t* codes = static_cast<const uint8_t*>(a.weight) + n * chunks * kCbHalfCols;
  F16 total[TB];
  float offset_sum[TB];
  for (int t = 0; t < TB; ++t) {
    total[t] = f_zero();
    offset_sum[t] = 0.0f;
  }
  for (int64_t g = 0; g < a.n_groups; ++g) {
    const int type = a.type_ids ? a.type_ids[n * a.n_groups + g] : 0;
    const Table16 table = t_load(a.tables + type * 16);
    // one accumulator per nibble half: two independent FMA chains per token
    F16 dot[TB][2];
    for (int t = 0; t < TB; ++t) dot[t][0] = dot[t][1] = f_zero();
    for (int64_t h = g * halves_per_group; h < (g + 1) * halves_per_group; ++h) {
      if ((h & 7) == 0) prefetch(codes + (h >> 1) * kCbHalfCols + kPrefetchBytes);
      U16 idx = u_load_bytes(codes + (h >> 1) * kCbHalfCols);
      if (h & 1) idx = u_srli(idx, 4);
      const F16 w = t_lookup(idx, table);
      for (int t = 0; t < TB; ++t)
        dot[t][h & 1] = f_fma(w, f_load(a.x + (m0 + t) * a.K_pad + h * kCbHalfCols), dot[t][h & 1]);
    }
    const F16 scale = f_set1(a.scales[n * a.n_groups + g]);
    for (int t = 0; t < TB; ++t) total[t] = f_fma(scale, f_add(dot[t][0], dot[t][1]), total[t]);
    if (a.offsets) {
      const float o = a.offsets[n * a.n_groups + g];
      for (int t = 0; t < TB; ++t) offset_sum[t] += o * gsums[(m0 + t) * a.n_groups + g];
    }
  }
  for (int t = 0; t < TB; ++t) a.y[(m0 + t) * a.N + n] = f_hsum(total[t]) + offset_sum[t];
}

void gemm_cb4(const GemmArgs& a) {
  constexpr int kTokens = 4;
  float* gsums = static_cast<float*>(alloc_scratch(sizeof(float) * a.M * a.n_groups));
  group_sums(a, gsums);
#pragma omp parallel for schedule(static) if (worth_threads(a))
  for (int64_t n = 0; n < a.N; ++n) {
    int64_t m0 = 0;
    for (; m0 + kTokens <= a.M; m0 += kTokens) cb4_row<kTokens>(a, n, m0, gsums);
    switch (a.M - m0) {
      case 3: cb4_row<3>(a, n, m0, gsums); break;
      case 2: cb4_row<2>(a, n, m0, gsums); break;
      case 1: cb4_row<1>(a, n, m0, gsums); break;
      default: break;
    }
  }
  std::free(gsums);
}

void dequant_cb4(const GemmArgs& a) {
  const int64_t chunks = a.K_pad / kCbChunkCols;
  const int64_t halves_per_group = a.group_size / kCbHalfCols;
#pragma omp parallel for schedule(static) if (worth_threads(a))
  for (int64_t n = 0; n < a.N; ++n) {
    const uint8_t* codes = static_cast<const uint8_t*>(a.weight) + n * chunks * kCbHalfCols;
    for (int64_t h = 0; h < 2 * chunks; ++h) {
      const int64_t g = h / halves_per_group;
      const int type = a.type_ids ? a.type_ids[n * a.n_groups + g] : 0;
      U16 idx = u_load_bytes(codes + (h >> 1) * kCbHalfCols);
      if (h & 1) idx = u_srli(idx, 4);
      const F16 w = t_lookup(idx, t_load(a.tables + type * 16));
      const float o = a.offsets ? a.offsets[n * a.n_groups + g] : 0.0f;
      f_store(a.y + n * a.K_pad + h * kCbHalfCols,
              f_fma(w, f_set1(a.scales[n * a.n_groups + g]), f_set1(o)));
    }
  }
}

// ------------------------------------------------------------------------------------------------
// Integer GEMM (W8A8, W4A8). Weights enter as unsigned bytes u = value + zero-free bias, activations
// as int8 q (per-token scale s_a). Per accumulation group g and row r:
//   sum_k w q = dot_g(u, q) - z[r,g] * sum_k q,   y = s_a * sum_g (s[r,g] dot_g - s[r,g] z[r,g] Q_g)
// acc_scales holds s, acc_zeros holds s * z. W8A8: u is the stored 8-bit code (offset binary, z its
// zero code, 128 for symmetric int8). W4A8 (DGQ): u = S2 * (c - zc) + 128 is built on the fly from
// the 4-bit code c by a per-row, per-group 16-entry byte table; one accumulation group per row.
// ------------------------------------------------------------------------------------------------
#if ANYBIT_ISA_LEVEL == 2
static inline __m512i mul_bytes(__m512i a, __m512i b) {  // a * b mod 256 per byte
  const __m512i even = _mm512_mullo_epi16(a, b);
  const __m512i odd = _mm512_mullo_epi16(_mm512_srli_epi16(a, 8), _mm512_srli_epi16(b, 8));
  return _mm512_mask_blend_epi8(0xAAAAAAAAAAAAAAAAull, even, _mm512_slli_epi16(odd, 8));
}

// 4 rows' tables of one decode group: lane r holds bytes (S2_r * c + base_r) mod 256, c = 0..15
static inline __m512i dual_tables(const uint8_t* s2, const uint8_t* base) {
  const __m512i lane_of_byte = _mm512_set_epi8(3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3, 3,  //
                                               2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2, 2,  //
                                               1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1,  //
                                               0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0);
  const __m512i iota = _mm512_broadcast_i32x4(_mm_setr_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15));
  uint32_t s2_word, base_word;
  std::memcpy(&s2_word, s2, 4);
  std::memcpy(&base_word, base, 4);
  const __m512i s2_bytes = _mm512_shuffle_epi8(_mm512_set1_epi32(static_cast<int>(s2_word)), lane_of_byte);
  const __m512i base_bytes = _mm512_shuffle_epi8(_mm512_set1_epi32(static_cast<int>(base_word)), lane_of_byte);
  return _mm512_add_epi8(mul_bytes(iota, s2_bytes), base_bytes);
}

// Sum of the 4 int32 lanes of each 128-bit lane, as floats (one per row of the quad)
static inline void row_sums(__m512 v, float* out4) {
  float lanes[16];
  _mm512_storeu_ps(lanes, v);
  for (int r = 0; r < 4; ++r) out4[r] = (lanes[4 * r] + lanes[4 * r + 1]) + (lanes[4 * r + 2] + lanes[4 * r + 3]);
}

// One block of RB row quads (4 rows each) x TB tokens; DUAL selects W4A8 weight decoding.
template <int RB, int TB, bool DUAL>
static void int8_block(const GemmArgs& a, int64_t quad0, int64_t m0) {
  const int64_t steps = a.K_pad / kQ8StepCols;
  const int64_t steps_per_acc = a.acc_group_size / kQ8StepCols;
  const int64_t steps_per_decode = DUAL ? a.group_size / kQ8StepCols : 1;
  const uint8_t* weight = static_cast<const uint8_t*>(a.weight);
  const __m512i low_nibbles = _mm512_set1_epi8(0x0F);
  const __m512i lane_pairs = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
  __m512 accf[TB][RB];
  for (int t = 0; t < TB; ++t)
    for (int q = 0; q < RB; ++q) accf[t][q] = _mm512_setzero_ps();
  __m512i table[RB];
  __m512i nibbles[RB];
  for (int q = 0; q < RB; ++q) table[q] = nibbles[q] = _mm512_setzero_si512();
  for (int64_t g = 0; g < a.acc_n_groups; ++g) {
    __m512i acc[TB][RB];
    for (int t = 0; t < TB; ++t)
      for (int q = 0; q < RB; ++q) acc[t][q] = _mm512_setzero_si512();
    for (int64_t s = g * steps_per_acc; s < (g + 1) * steps_per_acc; ++s) {
      __m512i w[RB];
      for (int q = 0; q < RB; ++q) {
        const int64_t quad = quad0 + q;
        if constexpr (DUAL) {
          if (s % steps_per_decode == 0) {
            const int64_t dg = s / steps_per_decode;
            const int64_t at = (quad * (a.K_pad / a.group_size) + dg) * kQ8QuadRows;
            table[q] = dual_tables(a.dual_s2 + at, a.dual_base + at);
          }
          if ((s & 1) == 0) {
            prefetch(weight + (quad * (steps / 2) + s / 2) * 64 + kPrefetchBytes);
            nibbles[q] = _mm512_loadu_si512(weight + (quad * (steps / 2) + s / 2) * 64);
            w[q] = _mm512_shuffle_epi8(table[q], _mm512_and_si512(nibbles[q], low_nibbles));
          } else {
            w[q] = _mm512_shuffle_epi8(table[q], _mm512_and_si512(_mm512_srli_epi16(nibbles[q], 4), low_nibbles));
          }
        } else {
          prefetch(weight + (quad * steps + s) * 64 + kPrefetchBytes);
          w[q] = _mm512_loadu_si512(weight + (quad * steps + s) * 64);
        }
      }
      for (int t = 0; t < TB; ++t) {
        const __m512i act = _mm512_broadcast_i32x4(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.xq + (m0 + t) * a.K_pad + s * kQ8StepCols)));
        for (int q = 0; q < RB; ++q) acc[t][q] = _mm512_dpbusd_epi32(acc[t][q], w[q], act);
      }
    }
    // group end: accf += s * dot - (s * z) * Q_g; s, s*z replicated over each row's 4 lanes, the
    // zero term only in the row's first lane so the final 4-lane row sum counts it once
    for (int q = 0; q < RB; ++q) {
      const int64_t at = ((quad0 + q) * a.acc_n_groups + g) * kQ8QuadRows;
      const __m512 scale = _mm512_permutexvar_ps(lane_pairs, _mm512_castps128_ps512(_mm_loadu_ps(a.acc_scales + at)));
      const __m512 zero = _mm512_maskz_permutexvar_ps(0x1111, lane_pairs,
                                                      _mm512_castps128_ps512(_mm_loadu_ps(a.acc_zeros + at)));
      for (int t = 0; t < TB; ++t) {
        const __m512 qsum = _mm512_set1_ps(static_cast<float>(a.x_gsum[(m0 + t) * a.acc_n_groups + g]));
        accf[t][q] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(acc[t][q]), scale, accf[t][q]);
        accf[t][q] = _mm512_fnmadd_ps(zero, qsum, accf[t][q]);
      }
    }
  }
  for (int t = 0; t < TB; ++t) {
    const float sa = a.x_scale[m0 + t];
    for (int q = 0; q < RB; ++q) {
      float rows[4];
      row_sums(accf[t][q], rows);
      for (int r = 0; r < 4; ++r) {
        const int64_t n = (quad0 + q) * kQ8QuadRows + r;
        if (n < a.N) a.y[(m0 + t) * a.N + n] = sa * rows[r];
      }
    }
  }
}
#elif ANYBIT_ISA_LEVEL == 1
// AVX2 has no vpdpbusd; bytes widen to 16 bits and vpmaddwd sums pairs exactly into int32.
template <int RB, int TB, bool DUAL>
static void int8_block(const GemmArgs& a, int64_t quad0, int64_t m0) {
  constexpr int kRows = RB * kQ8QuadRows;
  const int64_t steps = a.K_pad / kQ8StepCols;
  const int64_t steps_per_acc = a.acc_group_size / kQ8StepCols;
  const int64_t steps_per_decode = DUAL ? a.group_size / kQ8StepCols : 1;
  const uint8_t* weight = static_cast<const uint8_t*>(a.weight);
  float result[TB][kRows];
  for (int t = 0; t < TB; ++t)
    for (int r = 0; r < kRows; ++r) result[t][r] = 0.0f;
  alignas(16) uint8_t tables[kRows][16];
  for (int64_t g = 0; g < a.acc_n_groups; ++g) {
    __m256i acc[TB][kRows];
    for (int t = 0; t < TB; ++t)
      for (int r = 0; r < kRows; ++r) acc[t][r] = _mm256_setzero_si256();
    for (int64_t s = g * steps_per_acc; s < (g + 1) * steps_per_acc; ++s) {
      __m256i act[TB];
      for (int t = 0; t < TB; ++t)
        act[t] = _mm256_cvtepi8_epi16(
            _mm_loadu_si128(reinterpret_cast<const __m128i*>(a.xq + (m0 + t) * a.K_pad + s * kQ8StepCols)));
      for (int r = 0; r < kRows; ++r) {
        const int64_t quad = quad0 + r / kQ8QuadRows, row = r % kQ8QuadRows;
        __m128i bytes;
        if constexpr (DUAL) {
          if (s % steps_per_decode == 0) {
            const int64_t at = (quad * (a.K_pad / a.group_size) + s / steps_per_decode) * kQ8QuadRows + row;
            for (int c = 0; c < 16; ++c) tables[r][c] = static_cast<uint8_t>(a.dual_s2[at] * c + a.dual_base[at]);
          }
          __m128i nib = _mm_loadu_si128(
              reinterpret_cast<const __m128i*>(weight + ((quad * (steps / 2) + s / 2) * kQ8QuadRows + row) * 16));
          if (s & 1) nib = _mm_srli_epi16(nib, 4);
          nib = _mm_and_si128(nib, _mm_set1_epi8(0x0F));
          bytes = _mm_shuffle_epi8(_mm_load_si128(reinterpret_cast<const __m128i*>(tables[r])), nib);
        } else {
          bytes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(weight + ((quad * steps + s) * kQ8QuadRows + row) * 16));
        }
        const __m256i w = _mm256_cvtepu8_epi16(bytes);
        for (int t = 0; t < TB; ++t) acc[t][r] = _mm256_add_epi32(acc[t][r], _mm256_madd_epi16(w, act[t]));
      }
    }
    for (int r = 0; r < kRows; ++r) {
      const int64_t at = ((quad0 + r / kQ8QuadRows) * a.acc_n_groups + g) * kQ8QuadRows + r % kQ8QuadRows;
      for (int t = 0; t < TB; ++t) {
        __m128i v = _mm_add_epi32(_mm256_castsi256_si128(acc[t][r]), _mm256_extracti128_si256(acc[t][r], 1));
        v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4E));
        v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xB1));
        const float dot = static_cast<float>(_mm_cvtsi128_si32(v));
        const float qsum = static_cast<float>(a.x_gsum[(m0 + t) * a.acc_n_groups + g]);
        result[t][r] += a.acc_scales[at] * dot - a.acc_zeros[at] * qsum;
      }
    }
  }
  for (int t = 0; t < TB; ++t)
    for (int r = 0; r < kRows; ++r) {
      const int64_t n = quad0 * kQ8QuadRows + r;
      if (n < a.N) a.y[(m0 + t) * a.N + n] = a.x_scale[m0 + t] * result[t][r];
    }
}
#else
template <int RB, int TB, bool DUAL>
static void int8_block(const GemmArgs& a, int64_t quad0, int64_t m0) {
  const int64_t steps = a.K_pad / kQ8StepCols;
  const uint8_t* weight = static_cast<const uint8_t*>(a.weight);
  for (int q = 0; q < RB; ++q) {
    const int64_t quad = quad0 + q;
    for (int row = 0; row < kQ8QuadRows; ++row) {
      const int64_t n = quad * kQ8QuadRows + row;
      if (n >= a.N) continue;
      for (int t = 0; t < TB; ++t) {
        const int8_t* xq = a.xq + (m0 + t) * a.K_pad;
        float result = 0.0f;
        for (int64_t g = 0; g < a.acc_n_groups; ++g) {
          int32_t dot = 0;
          for (int64_t k = g * a.acc_group_size; k < (g + 1) * a.acc_group_size; ++k) {
            const int64_t s = k / kQ8StepCols, col = k % kQ8StepCols;
            uint32_t u;
            if (DUAL) {
              const uint8_t byte = weight[((quad * (steps / 2) + s / 2) * kQ8QuadRows + row) * 16 + col];
              const uint32_t code = (s & 1) ? (byte >> 4) : (byte & 15u);
              const int64_t at = (quad * (a.K_pad / a.group_size) + k / a.group_size) * kQ8QuadRows + row;
              u = (a.dual_s2[at] * code + a.dual_base[at]) & 255u;
            } else {
              u = weight[((quad * steps + s) * kQ8QuadRows + row) * kQ8StepCols + col];
            }
            dot += static_cast<int32_t>(u) * xq[k];
          }
          const int64_t at = (quad * a.acc_n_groups + g) * kQ8QuadRows + row;
          const float qsum = static_cast<float>(a.x_gsum[(m0 + t) * a.acc_n_groups + g]);
          result += a.acc_scales[at] * static_cast<float>(dot) - a.acc_zeros[at] * qsum;
        }
        a.y[(m0 + t) * a.N + n] = a.x_scale[m0 + t] * result;
      }
    }
  }
}
#endif

// Register blocking: AVX-512 keeps 4 quads x 4 tokens = 16 zmm accumulators; AVX2 (16 ymm
// registers) 1 quad x 2 tokens = 8 accumulators of one row each.
constexpr int kBlockQuads = ANYBIT_ISA_LEVEL == 2 ? 4 : 1;
constexpr int kBlockTokens = ANYBIT_ISA_LEVEL == 2 ? 4 : 2;

template <int RB, bool DUAL>
static void int8_rows(const GemmArgs& a, int64_t quad0) {
  int64_t m0 = 0;
  for (; m0 + kBlockTokens <= a.M; m0 += kBlockTokens) int8_block<RB, kBlockTokens, DUAL>(a, quad0, m0);
  switch (a.M - m0) {
    case 3: int8_block<RB, 3, DUAL>(a, quad0, m0); break;
    case 2: int8_block<RB, 2, DUAL>(a, quad0, m0); break;
    case 1: int8_block<RB, 1, DUAL>(a, quad0, m0); break;
    default: break;
  }
}

template <bool DUAL>
static void int8_gemm(const GemmArgs& a) {
  const int64_t quads = round_up(a.N, kQ8QuadRows) / kQ8QuadRows;
  const int64_t blocks = (quads + kBlockQuads - 1) / kBlockQuads;
#pragma omp parallel for schedule(static) if (worth_threads(a))
  for (int64_t b = 0; b < blocks; ++b) {
    const int64_t quad0 = b * kBlockQuads;
    if (quad0 + kBlockQuads <= quads) {
      int8_rows<kBlockQuads, DUAL>(a, quad0);
    } else {
      for (int64_t q = quad0; q < quads; ++q) int8_rows<1, DUAL>(a, q);
    }
  }
}

void gemm_w8a8(const GemmArgs& a) { int8_gemm<false>(a); }
void gemm_w4a8(const GemmArgs& a) { int8_gemm<true>(a); }

}  // namespace ANYBIT_ISA_NS
}  // namespace anybit
