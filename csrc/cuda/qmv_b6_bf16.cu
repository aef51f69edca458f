// qmv_kernel instances for 6-bit weights and bf16 activations.
#define JANG_BITS 6
#define JANG_BF16 1
#define JANG_TILED 0
#define JANG_SUFFIX _bf16
#include "cuda/qmm_instances.cuh"
