// qmm_kernel instances for 6-bit weights.
#define JANG_BITS 6
#include "cuda/qmm_instances.cuh"
