// Kernels compiled for AVX-512 + GFNI (flags in CMakeLists.txt); bodies in kernels_impl.h. The same
// code as isa_avx512.cpp except that intbp extracts bit fields with one vgf2p8affineqb instead of a
// shift and an AND (the GEMV of 1/2/4/8-bit codes, intbp_gemv_tile_pos, needs neither). A separate
// translation unit, so that no GFNI instruction can reach the code run on AVX-512 CPUs without GFNI.
#define ANYBIT_ISA_NS isa_avx512gfni
#if ANYBIT_X86
#define ANYBIT_ISA_LEVEL 2
#define ANYBIT_GFNI 1
#else  // not x86: portable bodies under this name; module.cpp never selects them
#define ANYBIT_ISA_LEVEL 0
#endif
#include "kernels_impl.h"
