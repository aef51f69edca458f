// qmm_kernel instances for 2-bit weights.
#define JANG_BITS 2
#include "cuda/qmm_instances.cuh"
