// anybit CPU kernels: one argument struct, one signature, one entry point per op, format and ISA.
//
// Naming: <op>_<format>_<isa>, e.g. gemm_intbp_avx512 (weight-only GEMM/GEMV on bit-field packed
// integer codes), gemm_cb4_avx2 (codebook lookup of <= 4-bit codes), gemm_w8a8_scalar. Every op
// has a portable scalar version (the reference of the C++ side; the tests hold all three ISAs to
// the pure-torch reference).
//
// Packed layouts (documented in full in anybit/kernels/packing.py, which builds them):
//   intbp  bit fields: uint32 words [N_pad/16][K_pad/32][bits][16], i.e. per tile of 16 rows and
//          chunk of 32 columns, `bits` vectors of 64 bytes (byte 4r+i of a vector belongs to row r).
//          A b-bit code splits into fields of 1, 2, 4 or 8 bits, low bits first (int_field_width:
//          3 = 2+1, 5 = 4+1, 6 = 4+2, 7 = 4+2+1); vector j of the chunk belongs to the field holding
//          code bit j. For a field of width w at bit offset o, vector o+v holds, in bits
//          [w*p, w*p+w) of byte 4r+i (p < 8/w), the field of the code of row 16t+r at column
//          32c + v*(32/w) + 4p + i. One AND (and a shift) gives a vpdpbusd operand: 16 rows x 4
//          consecutive columns, times 4 broadcast activation bytes.
//   cb4    nibbles: uint8 [N][K_pad/32][16]; byte i holds code k0+i (low nibble) and code
//          k0+16+i (high nibble) of the 32-column chunk starting at k0.
//   q8     VNNI blocks: uint8 [N_pad/4][K_pad/16][4 rows][16 columns] (8-bit codes as stored).
//   q4     VNNI nibble blocks: uint8 [N_pad/4][K_pad/32][4 rows][16]; low nibbles are columns
//          k0..k0+15 of the 32-column chunk, high nibbles k0+16..k0+31.
//
// All dot products are y[m, n] = sum_k x[m, k] * w[n, k]; x is [M, K_pad] float32 with zeros in the
// padding columns (the Python layer pads), y is [M, N] float32 (only real rows are written).
#pragma once

#include <cstddef>
#include <cstdint>

namespace anybit {

constexpr int kIntTileRows = 16;    // intbp: rows per tile (one 32-bit lane per row)
constexpr int kIntChunkCols = 32;   // intbp: columns per chunk (bits x 64 bytes)
constexpr int kIntVectorBytes = 64; // intbp: bytes per vector (16 rows x 4 bytes)
constexpr int kX16Max = 32639;      // intbp: activations become integers in [-kX16Max, kX16Max]
constexpr int kCbChunkCols = 32;    // cb4: columns per 16-byte chunk
constexpr int kCbHalfCols = 16;     // cb4: columns per nibble half (smallest scale group)
constexpr int kQ8QuadRows = 4;      // q8/q4: rows per block (one 128-bit lane per row)
constexpr int kQ8StepCols = 16;     // q8: columns per block
constexpr int kQ4ChunkCols = 32;    // q4: columns per nibble block
constexpr int kQ8Bias = 128;        // q8/q4: weights enter vpdpbusd as unsigned code = value + 128

// Arguments of every kernel. Fields that an op does not use are ignored (documented per op).
struct GemmArgs {
  // activations and output
  const float* x = nullptr;  // [M, K_pad] float32, zero padded
  float* y = nullptr;        // [M, N] float32
  int64_t M = 0, N = 0, K = 0, K_pad = 0;

  // weights
  const void* weight = nullptr;  // packed codes (layout per op, above)
  int bits = 0;                  // intbp: bits per code (1..8)
  int64_t group_size = 0;        // columns per scale group (divides K_pad)
  int64_t n_groups = 0;          // K_pad / group_size

  // weight-only ops (intbp, cb4): dequantized weight = scale * value(code) + offset, per group
  const float* scales = nullptr;   // intbp: [N_pad/16][G][16] (scale_kind 0); cb4: [N][G]
  const float* offsets = nullptr;  // same layout as scales, or null: offset = scale * offset_mul
  float offset_mul = 0.0f;         // intbp: level of code 0 (int min level) when offsets is null
  int scale_kind = 0;  // intbp: 0 = scales/offsets float32; 1 = float16, 2 = bfloat16 (bits in *16 below)
  const uint16_t* scales16 = nullptr;   // intbp, scale_kind 1/2: same layout as scales
  const uint16_t* offsets16 = nullptr;  // intbp, scale_kind 1/2: same layout as offsets, or null
  const float* tables = nullptr;   // cb4: [n_types][16] value of each code at unit scale
  const uint8_t* type_ids = nullptr;  // cb4: [N][G] member of a format family per group, or null

  // integer-activation ops (w8a8, w4a8): y = s_a[m] * sum_g (acc_scale * dot_g - acc_zero * asum_g)
  const float* acc_scales = nullptr;  // [N_pad/4][G_acc][4] scale per accumulation group
  const float* acc_zeros = nullptr;   // [N_pad/4][G_acc][4] scale * unsigned zero code
  int64_t acc_group_size = 0;         // columns per accumulation group (multiple of 16)
  int64_t acc_n_groups = 0;
  const uint8_t* dual_s2 = nullptr;    // w4a8: [N_pad/4][G][4] integer group scales S2 (1..127)
  const uint8_t* dual_base = nullptr;  // w4a8: [N_pad/4][G][4] (128 - S2 * zero code) mod 256

  // scratch: activations quantized by the caller of the integer ops (module.cpp)
  const int8_t* xq = nullptr;       // [M, K_pad] int8
  const float* x_scale = nullptr;   // [M]
  const int32_t* x_gsum = nullptr;  // [M, G_acc] sum of the int8 activations of each group
};

using KernelFn = void (*)(const GemmArgs&);

// intbp fields (static: internal linkage in every translation unit, so a copy compiled with one
// ISA's flags is never shared with another's). A b-bit code is split, low bits first, into fields whose widths divide 8 (greedy,
// widest first: 3 = 2+1, 5 = 4+1, 6 = 4+2, 7 = 4+2+1), so that every field packs a whole number
// of codes per byte. The kernels' work is one vpdpbusd pair per field, 16 rows and 4 columns; the
// bytes read are b/8 per code.
static constexpr int int_field_count(int bits) {
  int n = 0;
  for (int rest = bits; rest > 0; ++n) rest -= rest >= 8 ? 8 : rest >= 4 ? 4 : rest >= 2 ? 2 : 1;
  return n;
}
static constexpr int int_field_width(int bits, int field) {
  int rest = bits;
  for (int f = 0;; ++f) {
    const int w = rest >= 8 ? 8 : rest >= 4 ? 4 : rest >= 2 ? 2 : 1;
    if (f == field) return w;
    rest -= w;
  }
}
static constexpr int int_field_offset(int bits, int field) {
  int offset = 0;
  for (int f = 0; f < field; ++f) offset += int_field_width(bits, f);
  return offset;
}

// One namespace per ISA; each declares the same set of entry points.
#define ANYBIT_DECLARE_ISA(ns)                          \
  namespace ns {                                        \
  void gemm_intbp(const GemmArgs& args);                \
  void gemm_cb4(const GemmArgs& args);                  \
  void gemm_w8a8(const GemmArgs& args);                 \
  void gemm_w4a8(const GemmArgs& args);                 \
  void dequant_intbp(const GemmArgs& args);             \
  void dequant_cb4(const GemmArgs& args);               \
  uint64_t read_probe(const uint64_t* words, int64_t count); \
  }

ANYBIT_DECLARE_ISA(isa_scalar)
ANYBIT_DECLARE_ISA(isa_avx2)
ANYBIT_DECLARE_ISA(isa_avx512)
ANYBIT_DECLARE_ISA(isa_avx512gfni)

// Activation quantization for the integer ops (per-token symmetric INT8, absmax / 127, round half
// to even, the same arithmetic as anybit.kernels.reference.quantize_activations_int8).
void quantize_activations_int8(const float* x, int64_t M, int64_t K_pad, int64_t group_size,
                               int8_t* xq, float* x_scale, int32_t* x_gsum);

// Packing (packing.cpp, scalar: runs once per weight).
void pack_intbp(const uint8_t* codes, int64_t N, int64_t K, int bits, uint32_t* out);
void unpack_intbp(const uint32_t* words, int64_t N, int64_t K, int bits, uint8_t* codes);
void pack_cb4(const uint8_t* codes, int64_t N, int64_t K, uint8_t* out);
void unpack_cb4(const uint8_t* packed, int64_t N, int64_t K, uint8_t* codes);
void pack_q8(const uint8_t* codes, int64_t N, int64_t K, uint8_t* out);
void unpack_q8(const uint8_t* packed, int64_t N, int64_t K, uint8_t* codes);
void pack_q4(const uint8_t* codes, int64_t N, int64_t K, uint8_t* out);
void unpack_q4(const uint8_t* packed, int64_t N, int64_t K, uint8_t* codes);


static inline int64_t round_up(int64_t value, int64_t multiple) { return (value + multiple - 1) / multiple * multiple; }

}  // namespace anybit
