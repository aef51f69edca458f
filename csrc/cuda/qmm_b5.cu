// qmm_kernel instances for 5-bit weights.
#define JANG_BITS 5
#include "cuda/qmm_instances.cuh"
