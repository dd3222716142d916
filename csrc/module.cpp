// anybit._kernels: Python bindings of the packing routines and kernels (numpy buffers, no libtorch).
//
// Every kernel binding takes the ISA name first ("avx512gfni", "avx512", "avx2" or "scalar"); anybit.kernels
// chooses it (ANYBIT_ISA or the best the CPU supports). Buffers must be C-contiguous arrays of the
// exact dtype (no silent copies); sizes are checked here so that a wrong buffer is an error, never
// an out-of-bounds read. The GIL is released while a kernel runs.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstring>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels.h"

namespace py = pybind11;
using anybit::GemmArgs;
using anybit::KernelFn;

namespace {

template <typename T>
using Array = py::array_t<T, py::array::c_style>;

using ProbeFn = uint64_t (*)(const uint64_t*, int64_t);

struct IsaTable {
  const char* name;
  KernelFn intbp, cb4, w8a8, w4a8, dequant_intbp, dequant_cb4;
  ProbeFn read_probe;
};

// Best first. avx512gfni runs the avx512 code compiled with GFNI allowed (intbp uses it).
const IsaTable kIsas[] = {
    {"avx512gfni", anybit::isa_avx512gfni::gemm_intbp, anybit::isa_avx512gfni::gemm_cb4,
     anybit::isa_avx512gfni::gemm_w8a8, anybit::isa_avx512gfni::gemm_w4a8, anybit::isa_avx512gfni::dequant_intbp,
     anybit::isa_avx512gfni::dequant_cb4, anybit::isa_avx512gfni::read_probe},
    {"avx512", anybit::isa_avx512::gemm_intbp, anybit::isa_avx512::gemm_cb4, anybit::isa_avx512::gemm_w8a8,
     anybit::isa_avx512::gemm_w4a8, anybit::isa_avx512::dequant_intbp, anybit::isa_avx512::dequant_cb4,
     anybit::isa_avx512::read_probe},
    {"avx2", anybit::isa_avx2::gemm_intbp, anybit::isa_avx2::gemm_cb4, anybit::isa_avx2::gemm_w8a8,
     anybit::isa_avx2::gemm_w4a8, anybit::isa_avx2::dequant_intbp, anybit::isa_avx2::dequant_cb4,
     anybit::isa_avx2::read_probe},
    {"scalar", anybit::isa_scalar::gemm_intbp, anybit::isa_scalar::gemm_cb4, anybit::isa_scalar::gemm_w8a8,
     anybit::isa_scalar::gemm_w4a8, anybit::isa_scalar::dequant_intbp, anybit::isa_scalar::dequant_cb4,
     anybit::isa_scalar::read_probe},
};

py::dict cpu_features() {
  py::dict d;
#if ANYBIT_X86 && defined(__GNUC__)
  __builtin_cpu_init();
  d["avx2"] = static_cast<bool>(__builtin_cpu_supports("avx2"));
  d["fma"] = static_cast<bool>(__builtin_cpu_supports("fma"));
  d["avx512f"] = static_cast<bool>(__builtin_cpu_supports("avx512f"));
  d["avx512bw"] = static_cast<bool>(__builtin_cpu_supports("avx512bw"));
  d["avx512vl"] = static_cast<bool>(__builtin_cpu_supports("avx512vl"));
  d["avx512dq"] = static_cast<bool>(__builtin_cpu_supports("avx512dq"));
  d["avx512vnni"] = static_cast<bool>(__builtin_cpu_supports("avx512vnni"));
  d["avx512vbmi"] = static_cast<bool>(__builtin_cpu_supports("avx512vbmi"));
  d["avx512bf16"] = static_cast<bool>(__builtin_cpu_supports("avx512bf16"));
  d["gfni"] = static_cast<bool>(__builtin_cpu_supports("gfni"));
#endif
  return d;
}

bool isa_supported(const std::string& name) {
  if (name == "scalar") return true;
#if ANYBIT_X86 && defined(__GNUC__)
  __builtin_cpu_init();
  const bool avx2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
  if (name == "avx2") return avx2;
  const bool avx512 = avx2 && __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                      __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
                      __builtin_cpu_supports("avx512vnni");
  if (name == "avx512") return avx512;
  if (name == "avx512gfni") return avx512 && __builtin_cpu_supports("gfni");
#endif
  return false;
}

std::vector<std::string> supported_isas() {
  std::vector<std::string> out;
  for (const auto& t : kIsas)
    if (isa_supported(t.name)) out.emplace_back(t.name);
  return out;
}

const IsaTable& isa_table(const std::string& name) {
  for (const auto& t : kIsas)
    if (name == t.name) {
      if (!isa_supported(name)) throw std::invalid_argument("ISA '" + name + "' is not supported by this CPU");
      return t;
    }
  throw std::invalid_argument("unknown ISA '" + name + "'; use avx512gfni, avx512, avx2 or scalar");
}

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

template <typename T>
void require_size(const Array<T>& a, int64_t expected, const char* name) {
  if (a.size() != expected)  // the message is built only on failure: these checks run on every call
    throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(expected) + " elements, got " +
                                std::to_string(a.size()));
}

// x [M, K_pad] float32 and y [M, N] float32; fills M, N, K_pad.
void bind_xy(GemmArgs& args, const Array<float>& x, Array<float>& y) {
  require(x.ndim() == 2 && y.ndim() == 2, "x and y must be 2-D ([M, K_pad] and [M, N])");
  require(x.shape(0) == y.shape(0), "x and y must have the same number of rows M");
  args.x = x.data();
  args.y = y.mutable_data();
  args.M = x.shape(0);
  args.K_pad = x.shape(1);
  args.K = args.K_pad;
  args.N = y.shape(1);
}

void set_groups(GemmArgs& args, int64_t group_size, int64_t multiple) {
  if (!(group_size > 0 && group_size % multiple == 0 && args.K_pad % group_size == 0))
    throw std::invalid_argument("group_size " + std::to_string(group_size) + " must be a positive multiple of " +
                                std::to_string(multiple) + " dividing K_pad " + std::to_string(args.K_pad));
  args.group_size = group_size;
  args.n_groups = args.K_pad / group_size;
}

void run(KernelFn fn, const GemmArgs& args) {
  py::gil_scoped_release release;
  fn(args);
}

// ----- weight-only kernels -----------------------------------------------------------------------
// intbp scales/offsets: float32 arrays (scale_dtype "fp32"), or uint16 arrays holding float16 /
// bfloat16 bits ("fp16" / "bf16"), which the packer uses when they hold the values exactly.
int intbp_scale_kind(const std::string& scale_dtype) {
  if (scale_dtype == "fp32") return 0;
  if (scale_dtype == "fp16") return 1;
  if (scale_dtype == "bf16") return 2;
  throw std::invalid_argument("scale_dtype must be fp32, fp16 or bf16, not '" + scale_dtype + "'");
}

template <typename T>
const T* intbp_scale_buffer(const py::array& array, int64_t expected, const char* name) {
  if (!array.dtype().is(py::dtype::of<T>()))  // message built only on failure (this runs per call)
    throw std::invalid_argument(std::string(name) + ": expected dtype " +
                                (sizeof(T) == 4 ? "float32" : "uint16 (16-bit float bits)") +
                                " for this scale_dtype, got " + std::string(py::str(array.dtype())));
  if ((array.flags() & py::array::c_style) == 0) throw std::invalid_argument(std::string(name) + " must be C-contiguous");
  if (array.size() != expected)
    throw std::invalid_argument(std::string(name) + ": expected " + std::to_string(expected) + " elements, got " +
                                std::to_string(array.size()));
  return static_cast<const T*>(array.data());
}

void gemm_intbp(const std::string& isa, const Array<float>& x, Array<float> y, const Array<uint32_t>& words,
                int bits, int64_t group_size, const py::array& scales, std::optional<py::array> offsets,
                float offset_mul, bool dequant, const std::string& scale_dtype) {
  const IsaTable& t = isa_table(isa);
  GemmArgs a;
  if (dequant) {  // y is the [N, K_pad] weight; x only carries K_pad (shape [0, K_pad])
    require(y.ndim() == 2, "dequant output must be 2-D [N, K_pad]");
    a.y = y.mutable_data();
    a.N = y.shape(0);
    a.K_pad = a.K = y.shape(1);
  } else {
    bind_xy(a, x, y);
  }
  require(bits >= 1 && bits <= 8, "bits must be 1..8");
  require(a.K_pad % anybit::kIntChunkCols == 0, "K_pad must be a multiple of 32 for bit-field codes");
  set_groups(a, group_size, anybit::kIntChunkCols);
  const int64_t n_pad = anybit::round_up(a.N, anybit::kIntTileRows);
  require_size(words, n_pad / anybit::kIntTileRows * (a.K_pad / anybit::kIntChunkCols) * bits * anybit::kIntTileRows,
               "words");
  a.scale_kind = intbp_scale_kind(scale_dtype);
  if (a.scale_kind == 0) {
    a.scales = intbp_scale_buffer<float>(scales, n_pad * a.n_groups, "scales");
    if (offsets) a.offsets = intbp_scale_buffer<float>(*offsets, n_pad * a.n_groups, "offsets");
  } else {
    a.scales16 = intbp_scale_buffer<uint16_t>(scales, n_pad * a.n_groups, "scales");
    if (offsets) a.offsets16 = intbp_scale_buffer<uint16_t>(*offsets, n_pad * a.n_groups, "offsets");
  }
  a.weight = words.data();
  a.bits = bits;
  a.offset_mul = offset_mul;
  run(dequant ? t.dequant_intbp : t.intbp, a);
}

void gemm_cb4(const std::string& isa, const Array<float>& x, Array<float> y, const Array<uint8_t>& packed,
              int64_t group_size, const Array<float>& scales, std::optional<Array<float>> offsets,
              const Array<float>& tables, std::optional<Array<uint8_t>> type_ids, bool dequant) {
  const IsaTable& t = isa_table(isa);
  GemmArgs a;
  if (dequant) {
    require(y.ndim() == 2, "dequant output must be 2-D [N, K_pad]");
    a.y = y.mutable_data();
    a.N = y.shape(0);
    a.K_pad = a.K = y.shape(1);
  } else {
    bind_xy(a, x, y);
  }
  require(a.K_pad % anybit::kCbChunkCols == 0, "K_pad must be a multiple of 32 for nibble codes");
  set_groups(a, group_size, anybit::kCbHalfCols);
  require_size(packed, a.N * a.K_pad / 2, "packed");
  require_size(scales, a.N * a.n_groups, "scales");
  if (offsets) require_size(*offsets, a.N * a.n_groups, "offsets");
  require(tables.ndim() == 2 && tables.shape(1) == 16, "tables must be [n_types, 16]");
  if (type_ids) {
    require_size(*type_ids, a.N * a.n_groups, "type_ids");
    const uint8_t* ids = type_ids->data();
    for (int64_t i = 0; i < type_ids->size(); ++i)
      if (ids[i] >= tables.shape(0))
        throw std::invalid_argument("type_ids: id " + std::to_string(ids[i]) + " has no table");
  } else {
    require(tables.shape(0) == 1, "without type_ids, tables must have one row");
  }
  a.weight = packed.data();
  a.scales = scales.data();
  a.offsets = offsets ? offsets->data() : nullptr;
  a.tables = tables.data();
  a.type_ids = type_ids ? type_ids->data() : nullptr;
  run(dequant ? t.dequant_cb4 : t.cb4, a);
}

// ----- integer-activation kernels ----------------------------------------------------------------
void gemm_int8(bool dual, const std::string& isa, const Array<float>& x, Array<float> y, const Array<uint8_t>& packed,
               int64_t acc_group_size, const Array<float>& acc_scales, const Array<float>& acc_zeros,
               int64_t group_size, std::optional<Array<uint8_t>> s2, std::optional<Array<uint8_t>> base) {
  const IsaTable& t = isa_table(isa);
  GemmArgs a;
  bind_xy(a, x, y);
  require(a.K_pad % anybit::kQ4ChunkCols == 0, "K_pad must be a multiple of 32 for int8 kernels");
  require(acc_group_size > 0 && acc_group_size % anybit::kQ4ChunkCols == 0 && a.K_pad % acc_group_size == 0,
          "acc_group_size must be a multiple of 32 dividing K_pad");
  a.acc_group_size = acc_group_size;
  a.acc_n_groups = a.K_pad / acc_group_size;
  const int64_t n_pad = anybit::round_up(a.N, anybit::kQ8QuadRows);
  require_size(acc_scales, n_pad * a.acc_n_groups, "acc_scales");
  require_size(acc_zeros, n_pad * a.acc_n_groups, "acc_zeros");
  if (dual) {
    set_groups(a, group_size, anybit::kQ4ChunkCols);
    require(s2.has_value() && base.has_value(), "w4a8 needs s2 and base");
    require_size(*s2, n_pad * a.n_groups, "s2");
    require_size(*base, n_pad * a.n_groups, "base");
    require_size(packed, n_pad * a.K_pad / 2, "packed");
    a.dual_s2 = s2->data();
    a.dual_base = base->data();
  } else {
    require_size(packed, n_pad * a.K_pad, "packed");
  }
  a.weight = packed.data();
  a.acc_scales = acc_scales.data();
  a.acc_zeros = acc_zeros.data();
  std::vector<int8_t> xq(static_cast<size_t>(a.M * a.K_pad));
  std::vector<float> x_scale(static_cast<size_t>(a.M));
  std::vector<int32_t> x_gsum(static_cast<size_t>(a.M * a.acc_n_groups));
  a.xq = xq.data();
  a.x_scale = x_scale.data();
  a.x_gsum = x_gsum.data();
  py::gil_scoped_release release;
  anybit::quantize_activations_int8(a.x, a.M, a.K_pad, a.acc_group_size, xq.data(), x_scale.data(), x_gsum.data());
  (dual ? t.w4a8 : t.w8a8)(a);
}

py::tuple quantize_activations(const Array<float>& x, int64_t group_size) {
  require(x.ndim() == 2 && group_size > 0 && x.shape(1) % group_size == 0, "x must be [M, K] with K % group_size == 0");
  const int64_t M = x.shape(0), K = x.shape(1);
  Array<int8_t> xq({M, K});
  Array<float> scale({M});
  Array<int32_t> gsum({M, K / group_size});
  anybit::quantize_activations_int8(x.data(), M, K, group_size, xq.mutable_data(), scale.mutable_data(),
                                    gsum.mutable_data());
  return py::make_tuple(xq, scale, gsum);
}

// ----- packing -----------------------------------------------------------------------------------
void require_codes(const Array<uint8_t>& codes, int max_bits) {
  require(codes.ndim() == 2, "codes must be 2-D [N, K]");
  const uint8_t* c = codes.data();
  const uint32_t limit = 1u << max_bits;
  for (int64_t i = 0; i < codes.size(); ++i)
    require(c[i] < limit, "codes: value " + std::to_string(c[i]) + " does not fit in " + std::to_string(max_bits) +
                              " bits");
}

Array<uint32_t> pack_intbp(const Array<uint8_t>& codes, int bits) {
  require(bits >= 1 && bits <= 8, "bits must be 1..8");
  require_codes(codes, bits);
  const int64_t N = codes.shape(0), K = codes.shape(1);
  const int64_t tiles = anybit::round_up(N, anybit::kIntTileRows) / anybit::kIntTileRows;
  const int64_t chunks = anybit::round_up(K, anybit::kIntChunkCols) / anybit::kIntChunkCols;
  Array<uint32_t> out({tiles, chunks, static_cast<int64_t>(bits), static_cast<int64_t>(anybit::kIntTileRows)});
  anybit::pack_intbp(codes.data(), N, K, bits, out.mutable_data());
  return out;
}

Array<uint8_t> unpack_intbp(const Array<uint32_t>& words, int64_t N, int64_t K, int bits) {
  require(bits >= 1 && bits <= 8, "bits must be 1..8");
  require_size(words, anybit::round_up(N, 16) / 16 * (anybit::round_up(K, 32) / 32) * bits * 16, "words");
  Array<uint8_t> out({N, K});
  anybit::unpack_intbp(words.data(), N, K, bits, out.mutable_data());
  return out;
}

Array<uint8_t> pack_nibbles(const Array<uint8_t>& codes, bool vnni) {
  require_codes(codes, 4);
  const int64_t N = codes.shape(0), K = codes.shape(1);
  const int64_t k_pad = anybit::round_up(K, 32);
  const int64_t n_pad = vnni ? anybit::round_up(N, anybit::kQ8QuadRows) : N;
  Array<uint8_t> out({n_pad, k_pad / 2});
  (vnni ? anybit::pack_q4 : anybit::pack_cb4)(codes.data(), N, K, out.mutable_data());
  return out;
}

Array<uint8_t> unpack_nibbles(const Array<uint8_t>& packed, int64_t N, int64_t K, bool vnni) {
  const int64_t n_pad = vnni ? anybit::round_up(N, anybit::kQ8QuadRows) : N;
  require_size(packed, n_pad * anybit::round_up(K, 32) / 2, "packed");
  Array<uint8_t> out({N, K});
  (vnni ? anybit::unpack_q4 : anybit::unpack_cb4)(packed.data(), N, K, out.mutable_data());
  return out;
}

Array<uint8_t> pack_q8(const Array<uint8_t>& codes, int64_t k_multiple) {
  require(codes.ndim() == 2, "codes must be 2-D [N, K]");
  require(k_multiple > 0 && k_multiple % anybit::kQ8StepCols == 0, "k_multiple must be a multiple of 16");
  const int64_t N = codes.shape(0), K = codes.shape(1);
  // pack at the caller's K padding (zero codes beyond K meet zero activations)
  const int64_t k_pad = anybit::round_up(K, k_multiple);
  std::vector<uint8_t> padded(static_cast<size_t>(N * k_pad), 0);
  for (int64_t n = 0; n < N; ++n) std::memcpy(&padded[n * k_pad], codes.data() + n * K, K);
  Array<uint8_t> out({anybit::round_up(N, anybit::kQ8QuadRows), k_pad});
  anybit::pack_q8(padded.data(), N, k_pad, out.mutable_data());
  return out;
}

Array<uint8_t> unpack_q8(const Array<uint8_t>& packed, int64_t N, int64_t K) {
  require(packed.ndim() == 2 && packed.shape(1) % anybit::kQ8StepCols == 0, "packed must be [N_pad, K_pad]");
  const int64_t k_pad = packed.shape(1);
  require(K <= k_pad && packed.shape(0) == anybit::round_up(N, anybit::kQ8QuadRows), "packed does not match N, K");
  std::vector<uint8_t> full(static_cast<size_t>(N * k_pad));
  anybit::unpack_q8(packed.data(), N, k_pad, full.data());
  Array<uint8_t> out({N, K});
  for (int64_t n = 0; n < N; ++n) std::memcpy(out.mutable_data() + n * K, &full[n * k_pad], K);
  return out;
}

uint64_t read_probe(const Array<uint64_t>& buffer, const std::string& isa) {
  const IsaTable& t = isa_table(isa);
  py::gil_scoped_release release;
  return t.read_probe(buffer.data(), buffer.size());
}

}  // namespace

PYBIND11_MODULE(_kernels, m) {
  m.doc() = "anybit packing and CPU kernels (see anybit.kernels for the documented Python API)";
  m.def("cpu_features", &cpu_features, "CPU feature flags that the kernel dispatch looks at");
  m.def("supported_isas", &supported_isas, "ISAs this CPU can run, best first");
  m.def("pack_intbp", &pack_intbp, py::arg("codes").noconvert(), py::arg("bits"));
  m.def("unpack_intbp", &unpack_intbp, py::arg("words").noconvert(), py::arg("n"), py::arg("k"), py::arg("bits"));
  m.def("pack_nibbles", &pack_nibbles, py::arg("codes").noconvert(), py::arg("vnni"));
  m.def("unpack_nibbles", &unpack_nibbles, py::arg("packed").noconvert(), py::arg("n"), py::arg("k"), py::arg("vnni"));
  m.def("pack_q8", &pack_q8, py::arg("codes").noconvert(), py::arg("k_multiple"));
  m.def("unpack_q8", &unpack_q8, py::arg("packed").noconvert(), py::arg("n"), py::arg("k"));
  m.def("gemm_intbp", &gemm_intbp, py::arg("isa"), py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("words").noconvert(), py::arg("bits"),
        py::arg("group_size"), py::arg("scales"), py::arg("offsets"), py::arg("offset_mul"), py::arg("dequant") = false,
        py::arg("scale_dtype") = "fp32");
  m.def("gemm_cb4", &gemm_cb4, py::arg("isa"), py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("packed").noconvert(), py::arg("group_size"),
        py::arg("scales").noconvert(), py::arg("offsets").noconvert(), py::arg("tables").noconvert(), py::arg("type_ids").noconvert(), py::arg("dequant") = false);
  m.def(
      "gemm_w8a8",
      [](const std::string& isa, const Array<float>& x, Array<float> y, const Array<uint8_t>& packed,
         int64_t acc_group_size, const Array<float>& acc_scales, const Array<float>& acc_zeros) {
        gemm_int8(false, isa, x, y, packed, acc_group_size, acc_scales, acc_zeros, 0, std::nullopt, std::nullopt);
      },
      py::arg("isa"), py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("packed").noconvert(), py::arg("acc_group_size"), py::arg("acc_scales").noconvert(),
      py::arg("acc_zeros").noconvert());
  m.def(
      "gemm_w4a8",
      [](const std::string& isa, const Array<float>& x, Array<float> y, const Array<uint8_t>& packed,
         int64_t group_size, const Array<uint8_t>& s2, const Array<uint8_t>& base, const Array<float>& acc_scales,
         const Array<float>& acc_zeros) {
        gemm_int8(true, isa, x, y, packed, x.shape(1), acc_scales, acc_zeros, group_size, s2, base);
      },
      py::arg("isa"), py::arg("x").noconvert(), py::arg("y").noconvert(), py::arg("packed").noconvert(), py::arg("group_size"), py::arg("s2").noconvert(),
      py::arg("base").noconvert(), py::arg("acc_scales").noconvert(), py::arg("acc_zeros").noconvert());
  m.def("read_probe", &read_probe, py::arg("buffer").noconvert(), py::arg("isa") = "scalar",
        "Sum of a uint64 buffer read by all threads with the ISA's widest loads: time it to measure memory read "
        "bandwidth");
  m.def("quantize_activations_int8", &quantize_activations, py::arg("x").noconvert(), py::arg("group_size"));
}
