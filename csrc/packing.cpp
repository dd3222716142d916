// Bit packing of codes into the kernels' layouts (see kernels.h and anybit/kernels/packing.py).
// Scalar on purpose: packing runs once per weight, and this file is compiled for the baseline ISA.
#include <cstring>

#include "kernels.h"

namespace anybit {

// Byte of the bit-field layout (kernels.h) that holds the field `f` of code (n, k), and its shift.
static inline int64_t bitfield_byte(int64_t n, int64_t k, int64_t chunks, int bits, int f, int* shift) {
  const int w = int_field_width(bits, f), off = int_field_offset(bits, f);
  const int64_t tile = n / kIntTileRows, lane = n % kIntTileRows;
  const int64_t chunk = k / kIntChunkCols, j = k % kIntChunkCols;
  const int cols_per_vector = kIntChunkCols / w;
  const int64_t vector = off + j / cols_per_vector;
  const int64_t within = j % cols_per_vector;  // = 4 * position + byte
  *shift = w * static_cast<int>(within / 4);
  return ((tile * chunks + chunk) * bits + vector) * kIntVectorBytes + 4 * lane + within % 4;
}

void pack_intbp(const uint8_t* codes, int64_t N, int64_t K, int bits, uint32_t* out) {
  const int64_t n_pad = round_up(N, kIntTileRows), k_pad = round_up(K, kIntChunkCols);
  const int64_t chunks = k_pad / kIntChunkCols;
  uint8_t* bytes = reinterpret_cast<uint8_t*>(out);  // little-endian words: byte i of word = byte 4r+i
  std::memset(out, 0, sizeof(uint32_t) * (n_pad / kIntTileRows) * chunks * bits * kIntTileRows);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const uint32_t code = codes[n * K + k];
      for (int f = 0; f < int_field_count(bits); ++f) {
        int shift;
        const int64_t at = bitfield_byte(n, k, chunks, bits, f, &shift);
        const uint32_t field = (code >> int_field_offset(bits, f)) & ((1u << int_field_width(bits, f)) - 1u);
        bytes[at] = static_cast<uint8_t>(bytes[at] | (field << shift));
      }
    }
  }
}

void unpack_intbp(const uint32_t* words, int64_t N, int64_t K, int bits, uint8_t* codes) {
  const int64_t chunks = round_up(K, kIntChunkCols) / kIntChunkCols;
  const uint8_t* bytes = reinterpret_cast<const uint8_t*>(words);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      uint32_t code = 0;
      for (int f = 0; f < int_field_count(bits); ++f) {
        int shift;
        const int64_t at = bitfield_byte(n, k, chunks, bits, f, &shift);
        const uint32_t field = (bytes[at] >> shift) & ((1u << int_field_width(bits, f)) - 1u);
        code |= field << int_field_offset(bits, f);
      }
      codes[n * K + k] = static_cast<uint8_t>(code);
    }
  }
}

// Byte i of a 32-column chunk holds code k0+i (low nibble) and k0+16+i (high nibble).
static inline void nibble_position(int64_t k, int64_t* chunk, int64_t* byte, int* shift) {
  *chunk = k / kCbChunkCols;
  const int64_t within = k % kCbChunkCols;
  *byte = within % kCbHalfCols;
  *shift = within < kCbHalfCols ? 0 : 4;
}

void pack_cb4(const uint8_t* codes, int64_t N, int64_t K, uint8_t* out) {
  const int64_t chunks = round_up(K, kCbChunkCols) / kCbChunkCols;
  std::memset(out, 0, N * chunks * kCbHalfCols);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      int64_t chunk, byte;
      int shift;
      nibble_position(k, &chunk, &byte, &shift);
      out[(n * chunks + chunk) * kCbHalfCols + byte] |= static_cast<uint8_t>((codes[n * K + k] & 15u) << shift);
    }
  }
}

void unpack_cb4(const uint8_t* packed, int64_t N, int64_t K, uint8_t* codes) {
  const int64_t chunks = round_up(K, kCbChunkCols) / kCbChunkCols;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      int64_t chunk, byte;
      int shift;
      nibble_position(k, &chunk, &byte, &shift);
      codes[n * K + k] = (packed[(n * chunks + chunk) * kCbHalfCols + byte] >> shift) & 15u;
    }
  }
}

void pack_q8(const uint8_t* codes, int64_t N, int64_t K, uint8_t* out) {
  const int64_t n_pad = round_up(N, kQ8QuadRows), k_pad = round_up(K, kQ8StepCols);
  const int64_t steps = k_pad / kQ8StepCols;
  std::memset(out, 0, n_pad * k_pad);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t quad = n / kQ8QuadRows, row = n % kQ8QuadRows;
      const int64_t step = k / kQ8StepCols, col = k % kQ8StepCols;
      out[((quad * steps + step) * kQ8QuadRows + row) * kQ8StepCols + col] = codes[n * K + k];
    }
  }
}

void unpack_q8(const uint8_t* packed, int64_t N, int64_t K, uint8_t* codes) {
  const int64_t steps = round_up(K, kQ8StepCols) / kQ8StepCols;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t quad = n / kQ8QuadRows, row = n % kQ8QuadRows;
      const int64_t step = k / kQ8StepCols, col = k % kQ8StepCols;
      codes[n * K + k] = packed[((quad * steps + step) * kQ8QuadRows + row) * kQ8StepCols + col];
    }
  }
}

void pack_q4(const uint8_t* codes, int64_t N, int64_t K, uint8_t* out) {
  const int64_t n_pad = round_up(N, kQ8QuadRows), k_pad = round_up(K, kQ4ChunkCols);
  const int64_t chunks = k_pad / kQ4ChunkCols;
  std::memset(out, 0, n_pad * k_pad / 2);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t quad = n / kQ8QuadRows, row = n % kQ8QuadRows;
      int64_t chunk, byte;
      int shift;
      nibble_position(k, &chunk, &byte, &shift);
      out[((quad * chunks + chunk) * kQ8QuadRows + row) * kCbHalfCols + byte] |=
          static_cast<uint8_t>((codes[n * K + k] & 15u) << shift);
    }
  }
}

void unpack_q4(const uint8_t* packed, int64_t N, int64_t K, uint8_t* codes) {
  const int64_t chunks = round_up(K, kQ4ChunkCols) / kQ4ChunkCols;
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t k = 0; k < K; ++k) {
      const int64_t quad = n / kQ8QuadRows, row = n % kQ8QuadRows;
      int64_t chunk, byte;
      int shift;
      nibble_position(k, &chunk, &byte, &shift);
      codes[n * K + k] = (packed[((quad * chunks + chunk) * kQ8QuadRows + row) * kCbHalfCols + byte] >> shift) & 15u;
    }
  }
}

void quantize_activations_int8(const float* x, int64_t M, int64_t K_pad, int64_t group_size,
                               int8_t* xq, float* x_scale, int32_t* x_gsum) {
  const int64_t groups = K_pad / group_size;
  for (int64_t m = 0; m < M; ++m) {
    const float* row = x + m * K_pad;
    float absmax = 0.0f;
    for (int64_t k = 0; k < K_pad; ++k) {
      const float a = row[k] < 0 ? -row[k] : row[k];
      absmax = a > absmax ? a : absmax;
    }
    const float scale = absmax > 0.0f ? absmax / 127.0f : 1.0f;
    x_scale[m] = scale;
    for (int64_t g = 0; g < groups; ++g) {
      int32_t sum = 0;
      for (int64_t k = g * group_size; k < (g + 1) * group_size; ++k) {
        float q = __builtin_nearbyintf(row[k] / scale);  // default rounding mode: half to even
        q = q > 127.0f ? 127.0f : (q < -127.0f ? -127.0f : q);
        xq[m * K_pad + k] = static_cast<int8_t>(q);
        sum += static_cast<int32_t>(q);
      }
      x_gsum[m * groups + g] = sum;
    }
  }
}

}  // namespace anybit
