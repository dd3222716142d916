// Bit packing of codes into the kernels' layouts (see kernels.h and anybit/kernels/packing.py).
// Scalar on purpose: packing runs once per weight, and this file is compiled for the baseline ISA.
#include <cstring>

#include "kernels.h"

namespace anybit {

void pack_intbp(const uint8_t* codes, int64_t N, int64_t K, int bits, uint32_t* out) {
  const int64_t n_pad = round_up(N, kIntTileRows), k_pad = round_up(K, kIntChunkCols);
  const int64_t chunks = k_pad / kIntChunkCols;
  std::memset(out, 0, sizeof(uint32_t) * (n_pad / kIntTileRows) * chunks * bits * kIntTileRows);
  for (int64_t n = 0; n < N; ++n) {
    const int64_t tile = n / kIntTileRows, lane = n % kIntTileRows;
    for (int64_t k = 0; k < K; ++k) {
      const uint32_t code = codes[n * K + k];
      const int64_t chunk = k / kIntChunkCols, bit_in_word = k % kIntChunkCols;
      uint32_t* words = out + ((tile * chunks + chunk) * bits) * kIntTileRows + lane;
      for (int b = 0; b < bits; ++b) words[b * kIntTileRows] |= ((code >> b) & 1u) << bit_in_word;
    }
  }
}

void unpack_intbp(const uint32_t* words, int64_t N, int64_t K, int bits, uint8_t* codes) {
  const int64_t chunks = round_up(K, kIntChunkCols) / kIntChunkCols;
  for (int64_t n = 0; n < N; ++n) {
    const int64_t tile = n / kIntTileRows, lane = n % kIntTileRows;
    for (int64_t k = 0; k < K; ++k) {
      const int64_t chunk = k / kIntChunkCols, bit_in_word = k % kIntChunkCols;
      const uint32_t* w = words + ((tile * chunks + chunk) * bits) * kIntTileRows + lane;
      uint32_t code = 0;
      for (int b = 0; b < bits; ++b) code |= ((w[b * kIntTileRows] >> bit_in_word) & 1u) << b;
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

namespace anybit {

// Memory read bandwidth probe: every thread sums its share of the buffer with independent 64-bit
// adds (the compiler vectorizes them; reading, not adding, is the bottleneck).
uint64_t read_probe(const uint64_t* words, int64_t count) {
  uint64_t total = 0;
#pragma omp parallel for schedule(static) reduction(+ : total)
  for (int64_t i = 0; i < count; i += 8) {
    uint64_t s = 0;
    const int64_t end = i + 8 < count ? i + 8 : count;
    for (int64_t j = i; j < end; ++j) s += words[j];
    total += s;
  }
  return total;
}

}  // namespace anybit
