// Kernels compiled for the avx512 instruction set (flags in CMakeLists.txt); bodies in kernels_impl.h.
#define ANYBIT_ISA_NS isa_avx512
#if ANYBIT_X86
#define ANYBIT_ISA_LEVEL 2
#else  // not x86: portable bodies under this name; module.cpp never selects them
#define ANYBIT_ISA_LEVEL 0
#endif
#include "kernels_impl.h"
