// qmm_kernel instances for 4-bit weights.
#define JANG_BITS 4
#include "cuda/qmm_instances.cuh"
