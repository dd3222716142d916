// Kernels compiled for the scalar instruction set (flags in CMakeLists.txt); bodies in kernels_impl.h.
#define ANYBIT_ISA_NS isa_scalar
#define ANYBIT_ISA_LEVEL 0
#include "kernels_impl.h"
