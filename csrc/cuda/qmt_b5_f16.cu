// qmt_kernel instances for 5-bit weights and f16 activations.
#define JANG_BITS 5
#define JANG_BF16 0
#define JANG_TILED 1
#define JANG_SUFFIX _f16
#include "cuda/qmm_instances.cuh"
