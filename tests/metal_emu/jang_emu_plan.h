// The host's launch plan (csrc/metal/plan.h), exported to the emulation driver so
// that tests run each kernel over exactly the grid eval_gpu uses.
#pragma once

#include "plan.h"

extern "C" {

__attribute__((visibility("default"))) void jang_emu_plan_dequantize(
    int bits,
    int out,
    long rows,
    long packs_per_row,
    jang::metal_plan::Dispatch* d) {
  *d = jang::metal_plan::dequantize(
      bits, static_cast<jang::metal_plan::Dtype>(out), rows, packs_per_row);
}

__attribute__((visibility("default"))) void jang_emu_plan_qmatmul(
    int bits,
    int x_type,
    int s_type,
    long m,
    long n,
    jang::metal_plan::Dispatch* d) {
  *d = jang::metal_plan::qmatmul(
      bits,
      static_cast<jang::metal_plan::Dtype>(x_type),
      static_cast<jang::metal_plan::Dtype>(s_type),
      m,
      n);
}

__attribute__((visibility("default"))) void jang_emu_plan_moe_gate_up(
    int gate_bits,
    int up_bits,
    int x_type,
    long token_slots,
    long hidden,
    long experts,
    jang::metal_plan::Dispatch* d) {
  *d = jang::metal_plan::moe_gate_up(
      gate_bits,
      up_bits,
      static_cast<jang::metal_plan::Dtype>(x_type),
      token_slots,
      hidden,
      experts);
}

__attribute__((visibility("default"))) void jang_emu_plan_gather_qmm(
    int bits,
    int x_type,
    int s_type,
    long entries,
    long m,
    long n,
    long experts,
    jang::metal_plan::Dispatch* d) {
  *d = jang::metal_plan::gather_qmm(
      bits,
      static_cast<jang::metal_plan::Dtype>(x_type),
      static_cast<jang::metal_plan::Dtype>(s_type),
      entries,
      m,
      n,
      experts);
}

__attribute__((visibility("default"))) void
jang_emu_plan_moe_route(long experts, jang::metal_plan::Dispatch* d) {
  *d = jang::metal_plan::moe_route(experts);
}

__attribute__((visibility("default"))) int
jang_emu_plan_use_sorted(long rows, long experts) {
  return jang::metal_plan::use_sorted(rows, experts);
}
}
