// qmm_kernel instances for 8-bit weights.
#define JANG_BITS 8
#include "cuda/qmm_instances.cuh"
