// Kernel bodies, compiled once per ISA (isa_scalar.cpp, isa_avx2.cpp, isa_avx512.cpp).
//
// Each including file defines ANYBIT_ISA_NS (the namespace) and ANYBIT_ISA_LEVEL (0 scalar,
// 1 AVX2+FMA, 2 AVX-512 F/BW/VL/DQ/VNNI), optionally ANYBIT_GFNI (1: the AVX-512 build may use
// GFNI, isa_avx512gfni.cpp), and is compiled with the matching target flags. Everything
// here is `static` or lives in that namespace, and no standard-library templates are instantiated,
// so no function compiled for one ISA can be shared by the linker with another ISA's code.
//
// The codebook kernel is written once against a 16-lane vector type (F16: floats, U16: uint32
// codes/indices) whose three implementations are one zmm, two ymm or a plain array; the integer
// kernels (intbp, w8a8, w4a8: vpdpbusd vs vpmaddubsw/vpmaddwd) differ enough that each ISA has its
// own inner loop.
#include <cstdlib>
#include <cstring>

#include "kernels.h"

#if ANYBIT_ISA_LEVEL > 0
#include <immintrin.h>
#endif
#ifndef ANYBIT_GFNI
#define ANYBIT_GFNI 0
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
static inline U16 u_load_bytes(const uint8_t* p) {  // 16 bytes -> 16 uint32 lanes
  return {_mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)))};
}
static inline U16 u_srli(U16 a, int n) { return {_mm512_srli_epi32(a.v, n)}; }
static inline Table16 t_load(const float* p) { return f_load(p); }
// value of entry (idx & 15) per lane: vpermps ignores the index bits above 3
static inline F16 t_lookup(U16 idx, Table16 t) { return {_mm512_permutexvar_ps(idx.v, t.v)}; }
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
// intbp: weight-only GEMM/GEMV on bit-field integer codes (layout in kernels.h), integer dot
// products on 16-bit activations.
//
// For one row r and group g: sum_k w[r,k] x[k] = s[r,g] * sum_k c[r,k] x[k] + o[r,g] * X[g] with c
// the unsigned code, s the scale, o = value of code 0 (offsets, or s * offset_mul) and X[g] the sum
// of x over the group. The activations are quantized per block of 32 or 64 columns (inside one
// group) to integers q in [-32639, 32639] (scale = absmax / 32639, round half to even), and q is
// split into two signed bytes, q = 256 h + l (h in [-127, 127], l in [-128, 127]). Then
// sum_k c q = 256 sum_k c h + sum_k c l is exact in int32, and both sums are vpdpbusd: unsigned
// code bytes times signed activation bytes, 4 columns per 32-bit lane, one lane per row. X[g] is
// the sum of the quantized activations (times their scales), so y is exactly the product of the
// dequantized weight with the 16-bit-quantized activations, up to float rounding: the error is
// at most half a step, 2^-16 of the block's absmax, per activation (~2e-5 of the output range, see
// anybit/kernels/packed.py). Why not float: an exact float kernel needs a table lookup + add (or a
// conversion + FMA) per 16 weights; the fastest one measured here (fp32 bit-plane tables, one
// zmm vpermps + vaddps per plane, 16 rows and 4 columns) needs 0.29 ms of pure compute for a
// 4096x4096 int4 GEMV with the weights in cache, about the time DRAM takes to deliver them, so it
// cannot stream at memory speed. The integer form is one vpdpbusd per 32 weights plus an AND per
// 64-128 weights (0.12-0.13 ms of compute for int4 and int2 alike), so the GEMV runs at memory
// speed and its cost falls with the bit-width.
// ------------------------------------------------------------------------------------------------
constexpr int kIntPrefetchBytes = 8192;  // single weight stream: prefetch far ahead (tuned, M = 1)
constexpr int kIntScalePrefetchBytes = 1024;  // GEMV scale/offset streams (one line per 1-2 groups)
constexpr int kIntTilesPerBlock = 8;     // M > 1: tiles (16 rows each) kept in L2 while tokens loop

// Activations of one call, quantized for intbp (see above).
struct IntAct {
  const int8_t* x16;   // [M][K_pad/4][2][4]: per 4 columns, the 4 high bytes h then the 4 low bytes l
  const float* scale;  // [M][K_pad/block]
  const float* gsum;   // [M][G]: sum over the group of scale * q (the quantized activations' sum)
  int64_t block;       // columns per activation scale: 64 if it divides the group, else 32
  int64_t blocks;            // K_pad / block
  int64_t blocks_per_group;  // group_size / block
  int64_t chunks_per_block;  // block / 32
  int64_t tile_bytes;        // bytes of one tile's codes: K_pad / 32 * bits * 64
};

// Scale of one block of activations: absmax / kX16Max, NaN if the block holds inf or NaN (so that
// it shows in the outputs it touches), 0 for an all-zero block.
static inline float x16_scale(float absmax, bool finite) {
  return finite ? absmax / static_cast<float>(kX16Max) : __builtin_nanf("");
}

#if ANYBIT_ISA_LEVEL == 2
// 16 activations -> q = round(x / s) (round half to even: vcvtps2dq under the default MXCSR, as
// nearbyintf), clamped; h, l bytes interleaved per 4 columns. Returns the 16 values of q.
static inline __m512i x16_pack16(const float* x, float s, int8_t* out) {
  __m512i q = _mm512_setzero_si512();
  if (s > 0.0f) {
    q = _mm512_cvtps_epi32(_mm512_div_ps(_mm512_loadu_ps(x), _mm512_set1_ps(s)));
    q = _mm512_max_epi32(_mm512_min_epi32(q, _mm512_set1_epi32(kX16Max)), _mm512_set1_epi32(-kX16Max));
  }
  const __m512i h = _mm512_srai_epi32(_mm512_add_epi32(q, _mm512_set1_epi32(128)), 8);
  const __m512i l = _mm512_sub_epi32(q, _mm512_slli_epi32(h, 8));
  const __m128i hb = _mm512_cvtepi32_epi8(h), lb = _mm512_cvtepi32_epi8(l);
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm_unpacklo_epi32(hb, lb));
  _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 16), _mm_unpackhi_epi32(hb, lb));
  return q;
}

static void quantize_x16(const GemmArgs& a, int64_t block, int8_t* x16, float* scale, float* gsum) {
  const int64_t blocks = a.K_pad / block, blocks_per_group = a.group_size / block;
  const __m512 sign = _mm512_set1_ps(-0.0f);
  for (int64_t m = 0; m < a.M; ++m) {
    for (int64_t g = 0; g < a.n_groups; ++g) gsum[m * a.n_groups + g] = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) {
      const float* x = a.x + m * a.K_pad + b * block;
      __m512 vmax = _mm512_setzero_ps();
      __mmask16 finite = 0xFFFF;
      for (int64_t k = 0; k < block; k += 16) {
        const __m512 v = _mm512_andnot_ps(sign, _mm512_loadu_ps(x + k));
        vmax = _mm512_max_ps(vmax, v);
        finite &= _mm512_cmp_ps_mask(v, _mm512_set1_ps(3.402823466e38f), _CMP_LE_OQ);
      }
      const float s = x16_scale(_mm512_reduce_max_ps(vmax), finite == 0xFFFF);
      __m512i qsum = _mm512_setzero_si512();
      for (int64_t k = 0; k < block; k += 16)
        qsum = _mm512_add_epi32(qsum, x16_pack16(x + k, s, x16 + (m * a.K_pad + b * block + k) * 2));
      scale[m * blocks + b] = s;
      gsum[m * a.n_groups + b / blocks_per_group] += s * static_cast<float>(_mm512_reduce_add_epi32(qsum));
    }
  }
}
#else
static void quantize_x16(const GemmArgs& a, int64_t block, int8_t* x16, float* scale, float* gsum) {
  const int64_t blocks = a.K_pad / block, blocks_per_group = a.group_size / block;
  for (int64_t m = 0; m < a.M; ++m) {
    for (int64_t g = 0; g < a.n_groups; ++g) gsum[m * a.n_groups + g] = 0.0f;
    for (int64_t b = 0; b < blocks; ++b) {
      const float* x = a.x + m * a.K_pad + b * block;
      float absmax = 0.0f;
      bool finite = true;
      for (int64_t k = 0; k < block; ++k) {
        const float v = x[k] < 0.0f ? -x[k] : x[k];
        absmax = v > absmax ? v : absmax;
        finite = finite && v <= 3.402823466e38f;  // false for inf and NaN
      }
      const float s = x16_scale(absmax, finite);
      int32_t qsum = 0;
      int8_t* out = x16 + (m * a.K_pad + b * block) * 2;
      for (int64_t k = 0; k < block; ++k) {
        float qf = s > 0.0f ? __builtin_nearbyintf(x[k] / s) : 0.0f;
        qf = qf > kX16Max ? kX16Max : (qf < -kX16Max ? -kX16Max : qf);
        const int32_t q = static_cast<int32_t>(qf);
        const int32_t h = (q + 128) >> 8;  // arithmetic shift: floor((q + 128) / 256)
        out[(k / 4) * 8 + k % 4] = static_cast<int8_t>(h);
        out[(k / 4) * 8 + 4 + k % 4] = static_cast<int8_t>(q - h * 256);
        qsum += q;
      }
      scale[m * blocks + b] = s;
      gsum[m * a.n_groups + b / blocks_per_group] += s * static_cast<float>(qsum);
    }
  }
}
#endif

// Codes of row `lane` of one chunk (bits x 64 bytes) of the bit-field layout: 32 codes.
static inline void decode_chunk(const uint8_t* chunk, int bits, int64_t lane, uint32_t* code) {
  for (int j = 0; j < kIntChunkCols; ++j) code[j] = 0;
  for (int f = 0; f < int_field_count(bits); ++f) {
    const int w = int_field_width(bits, f), off = int_field_offset(bits, f);
    const int cols_per_vector = kIntChunkCols / w;
    for (int v = 0; v < w; ++v) {
      const uint8_t* bytes = chunk + (off + v) * kIntVectorBytes + 4 * lane;
      for (int p = 0; p < 8 / w; ++p)
        for (int i = 0; i < 4; ++i)
          code[v * cols_per_vector + 4 * p + i] |= ((bytes[i] >> (w * p)) & ((1u << w) - 1u)) << off;
    }
  }
}

// The kernel bodies below are nests of small lambdas (compile-time loops over fields, vectors and
// positions); they must all be inlined, or the accumulators go through memory (3x slower).
#define ANYBIT_INLINE __attribute__((always_inline))

// Compile-time loop: f(IntC<I>{}) for I = B .. E-1 (field widths, offsets and positions must be
// immediates so that every shift and mask is one instruction).
template <int N>
struct IntC {
  static constexpr int value = N;
};
template <int B, int E>
struct StaticFor {
  template <typename F>
  static inline ANYBIT_INLINE void run(F& f) {
    f(IntC<B>{});
    StaticFor<B + 1, E>::run(f);
  }
};
template <int E>
struct StaticFor<E, E> {
  template <typename F>
  static inline void run(F&) {}
};

static inline const uint8_t* tile_chunks(const GemmArgs& a, int64_t tile) {
  return static_cast<const uint8_t*>(a.weight) + tile * (a.K_pad / kIntChunkCols) * a.bits * kIntVectorBytes;
}
static inline const uint8_t* tile_chunks(const GemmArgs& a, const IntAct& act, int64_t tile) {
  return static_cast<const uint8_t*>(a.weight) + tile * act.tile_bytes;
}
static inline const int8_t* x16_at(const IntAct& act, const GemmArgs& a, int64_t m, int64_t col) {
  return act.x16 + (m * a.K_pad + col) * 2;  // col is a multiple of 4: h at +0, l at +4
}
static inline int32_t load_i32(const void* p) {
  int32_t v;
  std::memcpy(&v, p, 4);
  return v;
}
// Scales and offsets may be stored as 16-bit floats (scale_kind 1 = float16, 2 = bfloat16) when
// that is exact, which cuts the bytes of the 2-bit GEMV by ~10%; values are widened on load.
static inline bool has_offsets(const GemmArgs& a) { return a.offsets != nullptr || a.offsets16 != nullptr; }
static inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
// float16 -> float32, exact for every value: the 15 bits below the sign, moved to the top of a
// float32's exponent/mantissa, are the value times 2^-112 (subnormals included); inf/NaN fixed up.
static inline float half_to_float(uint16_t h) {
  float f = bits_to_float(static_cast<uint32_t>(h & 0x7FFFu) << 13) * 5.192296858534828e33f;  // 2^112
  if ((h & 0x7C00u) == 0x7C00u) f = bits_to_float(0x7F800000u | (static_cast<uint32_t>(h & 0x3FFu) << 13));
  return (h & 0x8000u) ? -f : f;
}
static inline float scale16_to_float(uint16_t v, int kind) {
  return kind == 1 ? half_to_float(v) : bits_to_float(static_cast<uint32_t>(v) << 16);
}
// scale (offset = false) or offset (true) at flat index i of the [N_pad/16][G][16] layout
static inline float scale_at(const GemmArgs& a, bool offset, int64_t i) {
  if (a.scale_kind == 0) return offset ? a.offsets[i] : a.scales[i];
  return scale16_to_float(offset ? a.offsets16[i] : a.scales16[i], a.scale_kind);
}

// offsets term of group g for token m: o * X[g] (o given per row) or s * offset_mul * X[g]
static inline float offset_xsum(const GemmArgs& a, const IntAct& act, int64_t m, int64_t g) {
  const float xs = act.gsum[m * a.n_groups + g];
  return has_offsets(a) ? xs : a.offset_mul * xs;
}

#if ANYBIT_ISA_LEVEL == 2
// vpdpbusd operand of field position P: 16 rows x 4 columns, each byte = field value << OFF
template <int W, int P, int OFF>
static inline __m512i field_operand(__m512i v) {
  constexpr int shift = W * P - OFF;
  if constexpr (W == 8) {
    return v;
  } else {
    const __m512i mask = _mm512_set1_epi8(static_cast<char>(((1 << W) - 1) << OFF));
#if ANYBIT_GFNI
    // one vgf2p8affineqb moves bits [W*P, W*P+W) of every byte to [OFF, OFF+W) and clears the rest
    // (instead of a shift + AND): output bit i of a byte is the parity of (row 7-i of the matrix AND
    // the input byte), and row 7-i selects input bit i + shift.
    if constexpr (shift != 0) {
      uint64_t matrix = 0;
      for (int i = OFF; i < OFF + W; ++i) matrix |= static_cast<uint64_t>(1u << (i + shift)) << (8 * (7 - i));
      return _mm512_gf2p8affine_epi64_epi8(v, _mm512_set1_epi64(static_cast<long long>(matrix)), 0);
    }
#endif
    if constexpr (shift > 0) return _mm512_and_si512(_mm512_srli_epi16(v, shift), mask);
    if constexpr (shift < 0) return _mm512_and_si512(_mm512_slli_epi16(v, -shift), mask);
    return _mm512_and_si512(v, mask);
  }
}

// 16 scales (offset = false) or offsets (true) from flat index i, widened to float32
static inline __m512 load_scales(const GemmArgs& a, bool offset, int64_t i) {
  if (a.scale_kind == 0) return _mm512_loadu_ps((offset ? a.offsets : a.scales) + i);
  const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>((offset ? a.offsets16 : a.scales16) + i));
  if (a.scale_kind == 1) return _mm512_cvtph_ps(raw);
  return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
}

// RB tiles (16 rows each) x TB tokens, over all of K. vpdpbusd has a 4-cycle latency and issues 2
// per cycle, so a block's 16-32 dependent multiply-adds per accumulator would be latency-bound: with
// one tile and one token the operands rotate over NS accumulator sets (summed at the block end; more
// sets cost more adds, so NS grows with the number of fields).
// CPB: chunks per activation block (2 for 64-column blocks, 1 for 32), unrolled so that the
// accumulators live only inside a block (GCC otherwise copies them at the loop back-edge: -13% time
// for the GEMV); 0 = a run-time loop over the block's chunks (many tiles x tokens: unrolling would
// spill registers).
template <int BITS, int RB, int TB, int CPB>
static inline __attribute__((always_inline)) void intbp_block_cpb(const GemmArgs& a, const IntAct& act,
                                                                  int64_t tile0, int64_t m0) {
  const int64_t blocks_per_group = act.blocks_per_group;
  const int64_t blocks = act.blocks;
  // operands per block = 8 per field and chunk; NS sets keep each chain at <= 8 per 64 columns
  constexpr int kFields = int_field_count(BITS);
  constexpr int NS = RB * TB >= 2 ? 1 : (kFields * (CPB == 1 ? 1 : 2) < 4 ? kFields * (CPB == 1 ? 1 : 2) : 4);
  const uint8_t* tiles[RB];
  for (int r = 0; r < RB; ++r) tiles[r] = tile_chunks(a, act, tile0 + r);
  __m512 out[TB][RB];
  for (int t = 0; t < TB; ++t)
    for (int r = 0; r < RB; ++r) out[t][r] = _mm512_setzero_ps();
  for (int64_t g = 0; g < a.n_groups; ++g) {
    for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      __m512i acc_h[NS][TB][RB], acc_l[NS][TB][RB];
      for (int q = 0; q < NS; ++q)
        for (int t = 0; t < TB; ++t)
          for (int r = 0; r < RB; ++r) acc_h[q][t][r] = acc_l[q][t][r] = _mm512_setzero_si512();
      auto chunk = [&](int64_t c) ANYBIT_INLINE {
        auto field = [&](auto f) ANYBIT_INLINE {
          constexpr int W = int_field_width(BITS, decltype(f)::value);
          constexpr int OFF = int_field_offset(BITS, decltype(f)::value);
          auto vector = [&](auto vc) ANYBIT_INLINE {
            constexpr int V = decltype(vc)::value;
            __m512i vec[RB];
            for (int r = 0; r < RB; ++r) {
              const uint8_t* p = tiles[r] + (c * BITS + OFF + V) * kIntVectorBytes;
              _mm_prefetch(reinterpret_cast<const char*>(p) + kIntPrefetchBytes, _MM_HINT_T0);
              vec[r] = _mm512_loadu_si512(p);
            }
            auto position = [&](auto pc) ANYBIT_INLINE {
              constexpr int P = decltype(pc)::value;
              constexpr int S = (V * (8 / W) + P) % NS;
              const int64_t col = c * kIntChunkCols + V * (kIntChunkCols / W) + 4 * P;
              __m512i op[RB];
              for (int r = 0; r < RB; ++r) op[r] = field_operand<W, P, OFF>(vec[r]);
              for (int t = 0; t < TB; ++t) {
                const int8_t* xp = x16_at(act, a, m0 + t, col);
                const __m512i h = _mm512_set1_epi32(load_i32(xp)), l = _mm512_set1_epi32(load_i32(xp + 4));
                for (int r = 0; r < RB; ++r) {
                  acc_h[S][t][r] = _mm512_dpbusd_epi32(acc_h[S][t][r], op[r], h);
                  acc_l[S][t][r] = _mm512_dpbusd_epi32(acc_l[S][t][r], op[r], l);
                }
              }
            };
            StaticFor<0, 8 / W>::run(position);
          };
          StaticFor<0, W>::run(vector);
        };
        StaticFor<0, int_field_count(BITS)>::run(field);
      };
      if constexpr (CPB == 0) {
        for (int64_t c = b * act.chunks_per_block; c < (b + 1) * act.chunks_per_block; ++c) chunk(c);
      } else {
        auto unrolled = [&](auto cc) ANYBIT_INLINE { chunk(b * CPB + decltype(cc)::value); };
        StaticFor<0, CPB>::run(unrolled);
      }
      // block end: out += s * sx * (256 acc_h + acc_l); |256 acc_h + acc_l| < 2^30 for 64 columns
      for (int t = 0; t < TB; ++t) {
        const __m512 sx = _mm512_set1_ps(act.scale[(m0 + t) * blocks + b]);
        for (int r = 0; r < RB; ++r) {
          __m512i sum_h = acc_h[0][t][r], sum_l = acc_l[0][t][r];
          for (int q = 1; q < NS; ++q) {
            sum_h = _mm512_add_epi32(sum_h, acc_h[q][t][r]);
            sum_l = _mm512_add_epi32(sum_l, acc_l[q][t][r]);
          }
          const __m512i dot = _mm512_add_epi32(_mm512_slli_epi32(sum_h, 8), sum_l);
          const __m512 s = _mm512_mul_ps(load_scales(a, false, ((tile0 + r) * a.n_groups + g) * kIntTileRows), sx);
          out[t][r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, out[t][r]);
        }
      }
    }
    __m512 offsets[RB];  // o per row, or s (times offset_mul * X[g] below)
    for (int r = 0; r < RB; ++r) offsets[r] = load_scales(a, has_offsets(a), ((tile0 + r) * a.n_groups + g) * kIntTileRows);
    for (int t = 0; t < TB; ++t) {
      const __m512 xs = _mm512_set1_ps(offset_xsum(a, act, m0 + t, g));
      for (int r = 0; r < RB; ++r) out[t][r] = _mm512_fmadd_ps(offsets[r], xs, out[t][r]);
    }
  }
  for (int r = 0; r < RB; ++r) {
    const int64_t row0 = (tile0 + r) * kIntTileRows;
    const int64_t rows = min64(kIntTileRows, a.N - row0);
    const __mmask16 keep = static_cast<__mmask16>((1u << rows) - 1u);
    for (int t = 0; t < TB; ++t) _mm512_mask_storeu_ps(a.y + (m0 + t) * a.N + row0, keep, out[t][r]);
  }
}
template <int BITS, int RB, int TB>
static inline __attribute__((always_inline)) void intbp_block(const GemmArgs& a, const IntAct& act, int64_t tile0,
                                                              int64_t m0) {
  if constexpr (RB * TB > 2) {
    intbp_block_cpb<BITS, RB, TB, 0>(a, act, tile0, m0);
  } else if (act.chunks_per_block == 2) {
    intbp_block_cpb<BITS, RB, TB, 2>(a, act, tile0, m0);
  } else {
    intbp_block_cpb<BITS, RB, TB, 1>(a, act, tile0, m0);
  }
}
// GEMV of one tile for the single-field widths (1, 2, 4 and 8 bits), the hot loop of the decode
// step. Differs from intbp_block<BITS, 1, 1> in how each operand is made: the field at position P
// of a byte is not moved down to bit 0 (no shift or GFNI affine, one AND), so the operand bytes
// are the code times 2^(W*P) (<= 255: the field's bits stay where they are) and each position P
// has its own accumulators, which also gives 2 * 8/W independent vpdpbusd chains. At the block
// end, with d_P = 256 h_P + l_P = 2^(W*P) times the true partial dot of position P,
// T = sum_P d_P 2^(W*(NP-1-P)) (Horner: T = (T << W) + d_P) is exactly 2^(8-W) times the block's dot
// and an arithmetic shift by 8 - W recovers it; |T| < 2^8 * 32639 * 64 * (2^W - 1) / 2^W < 2^29.
// The result is the same integer as intbp_block's, so the outputs are bit-identical.
// Per 64 weights (16 rows x 4 columns): 1 AND + 2 vpdpbusd + 2 broadcast loads (intbp_block: a
// GFNI affine, which on Zen 5 competes with vpdpbusd for its two pipes, or a shift + AND). The
// scales (and offsets) are software-prefetched like the codes (they were left to the hardware
// prefetcher). Measured on the 2-core Zen 5 of bench/kernels.md (weights in L2, 1 thread, cycles at
// 4.3 GHz per 1024 weights): 2-bit 25.5-26.5 vs 27.5-28.5 for intbp_block, 4-bit 34-36 for both;
// there the loop is bound by the 2 vector loads per cycle (32 broadcasts + 4 code loads + prefetches
// per 1024 2-bit weights) and the 4 vector pipes (32 vpdpbusd + 16 AND + ~20 block-end ops) alike.
// Tried and slower: broadcasts from one 128-bit load + vpshufd (ALU-bound: 35 cycles), vpdpbusd with
// an embedded {1to16} broadcast via inline asm (47 cycles: GCC then spills), two tiles per
// broadcast (24 cycles in L2, but two interleaved code streams made it ~65% slower from DRAM).
template <int BITS, int CPB, int SK>
static inline ANYBIT_INLINE void intbp_gemv_tile_pos(const GemmArgs& a, const IntAct& act, int64_t tile) {
  static_assert(BITS == 1 || BITS == 2 || BITS == 4 || BITS == 8, "single-field widths only");
  constexpr int W = BITS, NP = 8 / W;
  constexpr int NS = NP >= 4 ? 1 : 4 / NP;  // sets per position: >= 4 accumulator pairs (4-cycle latency)
  const uint8_t* codes = tile_chunks(a, act, tile);
  const int64_t blocks_per_group = act.blocks_per_group;
  const bool offsets = has_offsets(a);
  const char* scale_bytes = SK == 0 ? reinterpret_cast<const char*>(a.scales) : reinterpret_cast<const char*>(a.scales16);
  const char* offset_bytes = !offsets ? scale_bytes
                             : SK == 0 ? reinterpret_cast<const char*>(a.offsets)
                                       : reinterpret_cast<const char*>(a.offsets16);
  auto scales_of = [&](bool offset, int64_t g) ANYBIT_INLINE {
    const int64_t i = (tile * a.n_groups + g) * kIntTileRows;
    if constexpr (SK == 0) return _mm512_loadu_ps((offset ? a.offsets : a.scales) + i);
    const __m256i raw = _mm256_loadu_si256(reinterpret_cast<const __m256i*>((offset ? a.offsets16 : a.scales16) + i));
    if constexpr (SK == 1) return _mm512_cvtph_ps(raw);
    return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(raw), 16));
  };
  __m512 out = _mm512_setzero_ps();
  for (int64_t g = 0; g < a.n_groups; ++g) {
    // widened once per group: used by every block and, without offsets, by the offset term too
    // (16-bit scales: one vcvtph2ps per group instead of two, -4 cycles per 1024 2-bit weights)
    const __m512 group_scales = scales_of(false, g);
    for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      __m512i acc_h[NP][NS], acc_l[NP][NS];
      for (int p = 0; p < NP; ++p)
        for (int s = 0; s < NS; ++s) acc_h[p][s] = acc_l[p][s] = _mm512_setzero_si512();
      auto chunk = [&](auto cc) ANYBIT_INLINE {
        constexpr int CC = decltype(cc)::value;
        const int64_t c = b * CPB + CC;
        auto vector = [&](auto vc) ANYBIT_INLINE {
          constexpr int V = decltype(vc)::value;
          constexpr int S = (CC * W + V) % NS;
          const uint8_t* p = codes + (c * BITS + V) * kIntVectorBytes;
          _mm_prefetch(reinterpret_cast<const char*>(p) + kIntPrefetchBytes, _MM_HINT_T0);
          if constexpr (CC == 0 && V == 0) {  // the scales and offsets: second and third streams
            const int64_t at = (tile * a.n_groups + g) * kIntTileRows * (SK == 0 ? 4 : 2) + kIntScalePrefetchBytes;
            _mm_prefetch(scale_bytes + at, _MM_HINT_T0);
            _mm_prefetch(offset_bytes + at, _MM_HINT_T0);  // the scales again if there are no offsets
          }
          const __m512i vec = _mm512_loadu_si512(p);
          const int8_t* xp = act.x16 + (c * kIntChunkCols + V * (kIntChunkCols / W)) * 2;
          auto position = [&](auto pc) ANYBIT_INLINE {
            constexpr int P = decltype(pc)::value;
            __m512i op = vec;
            if constexpr (W < 8) op = _mm512_and_si512(op, _mm512_set1_epi8(static_cast<char>(((1 << W) - 1) << (W * P))));
            const __m512i h = _mm512_set1_epi32(load_i32(xp + 8 * P)), l = _mm512_set1_epi32(load_i32(xp + 8 * P + 4));
            acc_h[P][S] = _mm512_dpbusd_epi32(acc_h[P][S], op, h);
            acc_l[P][S] = _mm512_dpbusd_epi32(acc_l[P][S], op, l);
          };
          StaticFor<0, NP>::run(position);
        };
        StaticFor<0, W>::run(vector);
      };
      StaticFor<0, CPB>::run(chunk);
      __m512i t = _mm512_setzero_si512();  // Horner over the positions (see above)
      for (int p = 0; p < NP; ++p) {
        __m512i h = acc_h[p][0], l = acc_l[p][0];
        for (int s = 1; s < NS; ++s) {
          h = _mm512_add_epi32(h, acc_h[p][s]);
          l = _mm512_add_epi32(l, acc_l[p][s]);
        }
        const __m512i d = _mm512_add_epi32(_mm512_slli_epi32(h, 8), l);
        t = p == 0 ? d : _mm512_add_epi32(_mm512_slli_epi32(t, W), d);
      }
      const __m512i dot = _mm512_srai_epi32(t, 8 - W);
      const __m512 s = _mm512_mul_ps(group_scales, _mm512_set1_ps(act.scale[b]));
      out = _mm512_fmadd_ps(_mm512_cvtepi32_ps(dot), s, out);
    }
    out = _mm512_fmadd_ps(offsets ? scales_of(true, g) : group_scales, _mm512_set1_ps(offset_xsum(a, act, 0, g)), out);
  }
  const int64_t row0 = tile * kIntTileRows;
  const int64_t rows = min64(kIntTileRows, a.N - row0);
  _mm512_mask_storeu_ps(a.y + row0, static_cast<__mmask16>((1u << rows) - 1u), out);
}
constexpr int kIntRowTiles = 2;  // M > 1: 2 tiles x 4 tokens = 16 int32 + 8 float accumulators
constexpr int kIntTokens = 4;

#elif ANYBIT_ISA_LEVEL == 1
// AVX2 has no vpdpbusd: vpmaddubsw sums byte-product pairs into int16 (exact while operand bytes
// are <= 127: 2 * 127 * 128 < 2^15) and vpmaddwd adds the pairs into int32. 8-bit fields (bytes up
// to 255) go in two halves, the low 7 bits and the top bit (2 * 128 * 128 = 2^15 only for l = -128
// twice, which is -2^15 and still fits).
template <int W, int P, int OFF>
static inline __m256i field_operand(__m256i v) {
  constexpr int shift = W * P - OFF;
  const __m256i mask = _mm256_set1_epi8(static_cast<char>(((1 << W) - 1) << OFF));
  if constexpr (shift > 0) return _mm256_and_si256(_mm256_srli_epi16(v, shift), mask);
  if constexpr (shift < 0) return _mm256_and_si256(_mm256_slli_epi16(v, -shift), mask);
  return _mm256_and_si256(v, mask);
}
static inline __m256i dot_bytes(__m256i acc, __m256i u, __m256i s) {
  return _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(u, s), _mm256_set1_epi16(1)));
}
template <int W>
static inline __m256i dot_field(__m256i acc, __m256i u, __m256i s) {
  if constexpr (W == 8) {
    acc = dot_bytes(acc, _mm256_and_si256(u, _mm256_set1_epi8(0x7F)), s);
    return dot_bytes(acc, _mm256_and_si256(u, _mm256_set1_epi8(static_cast<char>(0x80))), s);
  } else {
    return dot_bytes(acc, u, s);
  }
}

// 8 scales (offset = false) or offsets (true) from flat index i, widened to float32 (float16 by the
// exact bit trick of half_to_float: no F16C needed)
static inline __m256 load_scales8(const GemmArgs& a, bool offset, int64_t i) {
  if (a.scale_kind == 0) return _mm256_loadu_ps((offset ? a.offsets : a.scales) + i);
  const __m256i v = _mm256_cvtepu16_epi32(
      _mm_loadu_si128(reinterpret_cast<const __m128i*>((offset ? a.offsets16 : a.scales16) + i)));
  if (a.scale_kind == 2) return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
  const __m256i magnitude = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x7FFF)), 13);
  __m256 f = _mm256_mul_ps(_mm256_castsi256_ps(magnitude), _mm256_set1_ps(5.192296858534828e33f));
  const __m256i special = _mm256_cmpeq_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x7C00)), _mm256_set1_epi32(0x7C00));
  const __m256i inf_nan = _mm256_or_si256(_mm256_set1_epi32(0x7F800000), _mm256_and_si256(magnitude, _mm256_set1_epi32(0x7FE000)));
  f = _mm256_blendv_ps(f, _mm256_castsi256_ps(inf_nan), _mm256_castsi256_ps(special));
  const __m256i sign = _mm256_slli_epi32(_mm256_and_si256(v, _mm256_set1_epi32(0x8000)), 16);
  return _mm256_or_ps(f, _mm256_castsi256_ps(sign));
}

// One tile (two halves of 8 rows) x TB tokens.
template <int BITS, int RB, int TB>
static inline __attribute__((always_inline)) void intbp_block(const GemmArgs& a, const IntAct& act, int64_t tile0,
                                                              int64_t m0) {
  static_assert(RB == 1, "AVX2 intbp runs one tile at a time");
  const int64_t chunks_per_block = act.chunks_per_block, blocks_per_group = act.blocks_per_group;
  const int64_t blocks = act.blocks;
  const uint8_t* tile = tile_chunks(a, act, tile0);
  __m256 out[TB][2];
  for (int t = 0; t < TB; ++t) out[t][0] = out[t][1] = _mm256_setzero_ps();
  for (int64_t g = 0; g < a.n_groups; ++g) {
    for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
      __m256i acc_h[TB][2], acc_l[TB][2];
      for (int t = 0; t < TB; ++t)
        for (int half = 0; half < 2; ++half) acc_h[t][half] = acc_l[t][half] = _mm256_setzero_si256();
      for (int64_t c = b * chunks_per_block; c < (b + 1) * chunks_per_block; ++c) {
        auto field = [&](auto f) ANYBIT_INLINE {
          constexpr int W = int_field_width(BITS, decltype(f)::value);
          constexpr int OFF = int_field_offset(BITS, decltype(f)::value);
          auto vector = [&](auto vc) ANYBIT_INLINE {
            constexpr int V = decltype(vc)::value;
            const uint8_t* p = tile + (c * BITS + OFF + V) * kIntVectorBytes;
            _mm_prefetch(reinterpret_cast<const char*>(p) + kIntPrefetchBytes, _MM_HINT_T0);
            const __m256i vec[2] = {_mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)),
                                    _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + 32))};
            auto position = [&](auto pc) ANYBIT_INLINE {
              constexpr int P = decltype(pc)::value;
              const int64_t col = c * kIntChunkCols + V * (kIntChunkCols / W) + 4 * P;
              const __m256i op[2] = {W == 8 ? vec[0] : field_operand<W, P, OFF>(vec[0]),
                                     W == 8 ? vec[1] : field_operand<W, P, OFF>(vec[1])};
              for (int t = 0; t < TB; ++t) {
                const int8_t* xp = x16_at(act, a, m0 + t, col);
                const __m256i h = _mm256_set1_epi32(load_i32(xp)), l = _mm256_set1_epi32(load_i32(xp + 4));
                for (int half = 0; half < 2; ++half) {
                  acc_h[t][half] = dot_field<W>(acc_h[t][half], op[half], h);
                  acc_l[t][half] = dot_field<W>(acc_l[t][half], op[half], l);
                }
              }
            };
            StaticFor<0, 8 / W>::run(position);
          };
          StaticFor<0, W>::run(vector);
        };
        StaticFor<0, int_field_count(BITS)>::run(field);
      }
      for (int t = 0; t < TB; ++t) {
        const __m256 sx = _mm256_set1_ps(act.scale[(m0 + t) * blocks + b]);
        for (int half = 0; half < 2; ++half) {
          const __m256i dot = _mm256_add_epi32(_mm256_slli_epi32(acc_h[t][half], 8), acc_l[t][half]);
          const __m256 s = _mm256_mul_ps(load_scales8(a, false, (tile0 * a.n_groups + g) * kIntTileRows + 8 * half), sx);
          out[t][half] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(dot), s, out[t][half]);
        }
      }
    }
    const __m256 offsets[2] = {load_scales8(a, has_offsets(a), (tile0 * a.n_groups + g) * kIntTileRows),
                               load_scales8(a, has_offsets(a), (tile0 * a.n_groups + g) * kIntTileRows + 8)};
    for (int t = 0; t < TB; ++t) {
      const __m256 xs = _mm256_set1_ps(offset_xsum(a, act, m0 + t, g));
      for (int half = 0; half < 2; ++half) out[t][half] = _mm256_fmadd_ps(offsets[half], xs, out[t][half]);
    }
  }
  const int64_t row0 = tile0 * kIntTileRows;
  const int64_t rows = min64(kIntTileRows, a.N - row0);
  for (int t = 0; t < TB; ++t) {
    float lanes[kIntTileRows];
    _mm256_storeu_ps(lanes, out[t][0]);
    _mm256_storeu_ps(lanes + 8, out[t][1]);
    for (int64_t r = 0; r < rows; ++r) a.y[(m0 + t) * a.N + row0 + r] = lanes[r];
  }
}
constexpr int kIntRowTiles = 1;
constexpr int kIntTokens = 2;

#else
// Portable reference: the same integer sums and the same float operations in the same order as
// the vector kernels, so all ISAs give bit-identical outputs.
template <int BITS, int RB, int TB>
static inline __attribute__((always_inline)) void intbp_block(const GemmArgs& a, const IntAct& act, int64_t tile0,
                                                              int64_t m0) {
  static_assert(RB == 1 && TB == 1, "the scalar intbp runs one tile and one token at a time");
  const int64_t chunks_per_block = act.chunks_per_block, blocks_per_group = act.blocks_per_group;
  const int64_t blocks = act.blocks;
  const uint8_t* tile = tile_chunks(a, act, tile0);
  const int64_t row0 = tile0 * kIntTileRows;
  const int64_t rows = min64(kIntTileRows, a.N - row0);
  for (int64_t r = 0; r < rows; ++r) {
    float out = 0.0f;
    for (int64_t g = 0; g < a.n_groups; ++g) {
      const float s = scale_at(a, false, (tile0 * a.n_groups + g) * kIntTileRows + r);
      for (int64_t b = g * blocks_per_group; b < (g + 1) * blocks_per_group; ++b) {
        int32_t dot_h = 0, dot_l = 0;
        for (int64_t c = b * chunks_per_block; c < (b + 1) * chunks_per_block; ++c) {
          uint32_t code[kIntChunkCols];
          decode_chunk(tile + c * BITS * kIntVectorBytes, BITS, r, code);
          const int8_t* xp = x16_at(act, a, m0, c * kIntChunkCols);
          for (int j = 0; j < kIntChunkCols; ++j) {
            dot_h += static_cast<int32_t>(code[j]) * xp[(j / 4) * 8 + j % 4];
            dot_l += static_cast<int32_t>(code[j]) * xp[(j / 4) * 8 + 4 + j % 4];
          }
        }
        const float sx = act.scale[m0 * blocks + b];
        out = __builtin_fmaf(static_cast<float>(dot_h * 256 + dot_l), s * sx, out);
      }
      const float o = has_offsets(a) ? scale_at(a, true, (tile0 * a.n_groups + g) * kIntTileRows + r) : s;
      out = __builtin_fmaf(o, offset_xsum(a, act, m0, g), out);
    }
    a.y[m0 * a.N + row0 + r] = out;
  }
}
constexpr int kIntRowTiles = 1;
constexpr int kIntTokens = 1;
#endif

// GEMV: tiles [begin, end) in memory order, one sequential weight stream; the block is inlined so
// its setup is hoisted out of the tile loop.
template <int BITS>
static void intbp_gemv_tiles(const GemmArgs& a, const IntAct& act, int64_t begin, int64_t end) {
#if ANYBIT_ISA_LEVEL == 2
  if constexpr (BITS == 1 || BITS == 2 || BITS == 4 || BITS == 8) {
    auto run = [&](auto cpb, auto sk) ANYBIT_INLINE {
      constexpr int CPB = decltype(cpb)::value, SK = decltype(sk)::value;
      for (int64_t t = begin; t < end; ++t) intbp_gemv_tile_pos<BITS, CPB, SK>(a, act, t);
    };
    if (act.chunks_per_block == 2) {
      if (a.scale_kind == 0) return run(IntC<2>{}, IntC<0>{});
      if (a.scale_kind == 1) return run(IntC<2>{}, IntC<1>{});
      return run(IntC<2>{}, IntC<2>{});
    }
    if (a.scale_kind == 0) return run(IntC<1>{}, IntC<0>{});
    if (a.scale_kind == 1) return run(IntC<1>{}, IntC<1>{});
    return run(IntC<1>{}, IntC<2>{});
  }
#endif
  for (int64_t t = begin; t < end; ++t) intbp_block<BITS, 1, 1>(a, act, t, 0);
}

template <int BITS, int RB>
static void intbp_tokens(const GemmArgs& a, const IntAct& act, int64_t tile0, int64_t m0, int64_t tokens) {
  if (tokens >= kIntTokens) {
    intbp_block<BITS, RB, kIntTokens>(a, act, tile0, m0);
  } else if constexpr (kIntTokens > 1) {
    if (tokens == 1) intbp_block<BITS, RB, 1>(a, act, tile0, m0);
    if constexpr (kIntTokens > 2) {
      if (tokens == 2) intbp_block<BITS, RB, 2>(a, act, tile0, m0);
      if constexpr (kIntTokens > 3)
        if (tokens == 3) intbp_block<BITS, RB, 3>(a, act, tile0, m0);
    }
  }
}

template <int BITS>
static void intbp_run(const GemmArgs& a, const IntAct& act) {
  const int64_t tiles = round_up(a.N, kIntTileRows) / kIntTileRows;
  if (a.M == 1) {  // GEMV: runs of 16 tiles; threads take contiguous runs
    constexpr int64_t kRun = 16;
    const int64_t runs = (tiles + kRun - 1) / kRun;
#pragma omp parallel for schedule(static) if (worth_threads(a))
    for (int64_t run = 0; run < runs; ++run) intbp_gemv_tiles<BITS>(a, act, run * kRun, min64(tiles, (run + 1) * kRun));
    return;
  }
  // several tokens: a block of tiles stays in cache while the tokens pass over it
  const int64_t tile_blocks = (tiles + kIntTilesPerBlock - 1) / kIntTilesPerBlock;
#pragma omp parallel for schedule(static) if (worth_threads(a))
  for (int64_t tb = 0; tb < tile_blocks; ++tb) {
    const int64_t t_end = min64(tiles, (tb + 1) * kIntTilesPerBlock);
    for (int64_t m0 = 0; m0 < a.M; m0 += kIntTokens) {
      const int64_t tokens = min64(kIntTokens, a.M - m0);
      int64_t t = tb * kIntTilesPerBlock;
      for (; t + kIntRowTiles <= t_end; t += kIntRowTiles) intbp_tokens<BITS, kIntRowTiles>(a, act, t, m0, tokens);
      if constexpr (kIntRowTiles > 1)
        for (; t < t_end; ++t) intbp_tokens<BITS, 1>(a, act, t, m0, tokens);
    }
  }
}

void gemm_intbp(const GemmArgs& a) {
  const int64_t block = a.group_size % 64 == 0 ? 64 : 32;
  const int64_t blocks = a.K_pad / block;
  // one scratch allocation: [scales | group sums | 16-bit activations]
  const int64_t floats = round_up(a.M * blocks + a.M * a.n_groups, 16);
  float* scratch = static_cast<float*>(alloc_scratch(sizeof(float) * floats + static_cast<size_t>(a.M * a.K_pad * 2)));
  float* scale = scratch;
  float* gsum = scratch + a.M * blocks;
  int8_t* x16 = reinterpret_cast<int8_t*>(scratch + floats);
  if (a.M == 1) {  // GEMV: start the weight streams while the activations are being quantized
    const char* codes = static_cast<const char*>(a.weight);
    const int64_t code_bytes = round_up(a.N, kIntTileRows) / kIntTileRows * (a.K_pad / kIntChunkCols) * a.bits * kIntVectorBytes;
    for (int64_t i = 0; i < min64(kIntPrefetchBytes, code_bytes); i += 64) prefetch(codes + i);
    const char* scales = a.scale_kind == 0 ? reinterpret_cast<const char*>(a.scales) : reinterpret_cast<const char*>(a.scales16);
    const int64_t scale_bytes = round_up(a.N, kIntTileRows) * a.n_groups * (a.scale_kind == 0 ? 4 : 2);
    for (int64_t i = 0; i < min64(kIntScalePrefetchBytes, scale_bytes); i += 64) prefetch(scales + i);
  }
  quantize_x16(a, block, x16, scale, gsum);
  const IntAct act{x16, scale, gsum, block, blocks, a.group_size / block, block / kIntChunkCols,
                   a.K_pad / kIntChunkCols * a.bits * kIntVectorBytes};
  switch (a.bits) {
    case 1: intbp_run<1>(a, act); break;
    case 2: intbp_run<2>(a, act); break;
    case 3: intbp_run<3>(a, act); break;
    case 4: intbp_run<4>(a, act); break;
    case 5: intbp_run<5>(a, act); break;
    case 6: intbp_run<6>(a, act); break;
    case 7: intbp_run<7>(a, act); break;
    default: intbp_run<8>(a, act); break;
  }
  std::free(scratch);
}

// Dequantize rows [0, N) of bit-field codes to float32 [N, K_pad] (for PackedLinearWeight.dequantize).
void dequant_intbp(const GemmArgs& a) {
  const int64_t chunks = a.K_pad / kIntChunkCols;
  const int64_t chunks_per_group = a.group_size / kIntChunkCols;
#pragma omp parallel for schedule(static) if (worth_threads(a))
  for (int64_t n = 0; n < a.N; ++n) {
    const int64_t tile = n / kIntTileRows, lane = n % kIntTileRows;
    const uint8_t* chunk_bytes = tile_chunks(a, tile);
    float* out = a.y + n * a.K_pad;
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t g = c / chunks_per_group;
      const float s = scale_at(a, false, (tile * a.n_groups + g) * kIntTileRows + lane);
      const float o = has_offsets(a) ? scale_at(a, true, (tile * a.n_groups + g) * kIntTileRows + lane) : s * a.offset_mul;
      uint32_t code[kIntChunkCols];
      decode_chunk(chunk_bytes + c * a.bits * kIntVectorBytes, a.bits, lane, code);
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

// ------------------------------------------------------------------------------------------------
// Memory read bandwidth probe: the sum of `count` 64-bit words, read by all threads with the widest
// loads of this ISA and independent adds (reading, not adding, is the bottleneck), so that it
// measures what a streaming kernel of this ISA can read.
// ------------------------------------------------------------------------------------------------
uint64_t read_probe(const uint64_t* words, int64_t count) {
  uint64_t total = 0;
  const int64_t blocks = count / 32;  // 256 bytes per iteration
#if ANYBIT_ISA_LEVEL == 2
  // Read like the kernels read their weights: one sequential stream per thread with software
  // prefetch kIntPrefetchBytes ahead and a register accumulator (without the prefetch, two threads
  // read ~35 GB/s while the int4 GEMV streamed 45 GB/s, so the probe under-stated the limit).
#pragma omp parallel reduction(+ : total)
  {
    __m512i acc = _mm512_setzero_si512();
#pragma omp for schedule(static)
    for (int64_t i = 0; i < blocks; ++i) {
      const uint64_t* p = words + i * 32;
      _mm_prefetch(reinterpret_cast<const char*>(p) + kIntPrefetchBytes, _MM_HINT_T0);
      _mm_prefetch(reinterpret_cast<const char*>(p) + kIntPrefetchBytes + 128, _MM_HINT_T0);
      acc = _mm512_add_epi64(acc, _mm512_add_epi64(_mm512_add_epi64(_mm512_loadu_si512(p), _mm512_loadu_si512(p + 8)),
                                                   _mm512_add_epi64(_mm512_loadu_si512(p + 16), _mm512_loadu_si512(p + 24))));
    }
    total += static_cast<uint64_t>(_mm512_reduce_add_epi64(acc));
  }
#else
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < blocks; ++i) {
    const uint64_t* p = words + i * 32;
#if ANYBIT_ISA_LEVEL == 1
    __m256i s = _mm256_setzero_si256();
    for (int j = 0; j < 32; j += 4) s = _mm256_add_epi64(s, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + j)));
    uint64_t lanes[4];
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(lanes), s);
    total += lanes[0] + lanes[1] + lanes[2] + lanes[3];
#else
    uint64_t s = 0;
    for (int j = 0; j < 32; ++j) s += p[j];
    total += s;
#endif
  }
#endif
  for (int64_t j = blocks * 32; j < count; ++j) total += words[j];
  return total;
}

}  // namespace ANYBIT_ISA_NS
}  // namespace anybit
