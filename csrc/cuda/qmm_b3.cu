// qmm_kernel instances for 3-bit weights.
#define JANG_BITS 3
#include "cuda/qmm_instances.cuh"
