#pragma once
// Input validation shared by every backend of every op (host only). Errors name the op and
// the argument; TORCH_CHECK_VALUE / TORCH_CHECK_TYPE surface in Python as ValueError / TypeError.
#include <ATen/core/Tensor.h>
#include <ATen/OpMathType.h>
#include <c10/util/Exception.h>

#include <initializer_list>
#include <utility>

namespace winnow::checks {

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16;
}

// Statistics of a half/bfloat16/float tensor are float32; of a double tensor, float64.
inline at::ScalarType stat_dtype(at::ScalarType t) {
  return t == at::kDouble ? at::kDouble : at::kFloat;
}

inline void nonempty(const char* op, const char* name, size_t n) {
  TORCH_CHECK_VALUE(n > 0, op, ": ", name, " is an empty list");
}

inline void same_length(const char* op, const char* name, size_t n, const char* ref, size_t n_ref) {
  TORCH_CHECK_VALUE(n == n_ref, op, ": ", name, " has ", n, " tensors but ", ref, " has ", n_ref);
}

// A floating-point input tensor (read only).
inline void float_input(const char* op, const char* name, size_t i, const at::Tensor& t) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, "[", i, "] is undefined (None)");
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, op, ": ", name, "[", i, "] must be a dense tensor, got layout ",
                   t.layout());
  TORCH_CHECK_TYPE(is_float_dtype(t.scalar_type()), op, ": ", name, "[", i,
                   "] must be float16, bfloat16, float32 or float64, got ", t.scalar_type());
}

// `t` must match `ref` (list `ref_name`) in shape and device.
inline void matches(const char* op, const char* name, size_t i, const at::Tensor& t, const char* ref_name,
                    const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), op, ": ", name, "[", i, "] is on ", t.device(), " but ",
                    ref_name, "[", i, "] is on ", ref.device());
  TORCH_CHECK_VALUE(t.sizes() == ref.sizes(), op, ": ", name, "[", i, "] has shape ", t.sizes(), " but ",
                    ref_name, "[", i, "] has shape ", ref.sizes());
}

// A state tensor written in place: contiguous, with the statistics dtype of `ref`.
inline void state_of(const char* op, const char* name, size_t i, const at::Tensor& t, const char* ref_name,
                     const at::Tensor& ref) {
  TORCH_CHECK_VALUE(t.defined(), op, ": ", name, "[", i, "] is undefined (None)");
  TORCH_CHECK_TYPE(t.layout() == at::kStrided, op, ": ", name, "[", i, "] must be a dense tensor");
  matches(op, name, i, t, ref_name, ref);
  TORCH_CHECK_TYPE(t.scalar_type() == stat_dtype(ref.scalar_type()), op, ": ", name, "[", i, "] must be ",
                   stat_dtype(ref.scalar_type()), " for ", ref_name, "[", i, "] of dtype ", ref.scalar_type(),
                   ", got ", t.scalar_type());
  TORCH_CHECK_VALUE(t.is_contiguous(), op, ": ", name, "[", i, "] must be contiguous (it is written in place)");
}

// Every tensor of a multi-tensor call lives on the device of the first one.
inline void same_device(const char* op, const char* name, size_t i, const at::Tensor& t, const at::Device& d) {
  TORCH_CHECK_VALUE(t.device() == d, op, ": ", name, "[", i, "] is on ", t.device(),
                    " but the other tensors are on ", d, " (one device per call)");
}

// The per-tensor int64 counter of skipped non-finite elements.
inline void counter(const char* op, const char* name, const at::Tensor& t, size_t n, const at::Device& d) {
  TORCH_CHECK_TYPE(t.defined() && t.scalar_type() == at::kLong, op, ": ", name, " must be an int64 tensor");
  TORCH_CHECK_VALUE(t.dim() == 1 && static_cast<size_t>(t.numel()) == n && t.is_contiguous(), op, ": ", name,
                    " must be a contiguous 1-D tensor with one entry per tensor (", n, "), got shape ",
                    t.sizes());
  TORCH_CHECK_VALUE(t.device() == d, op, ": ", name, " is on ", t.device(), " but the tensors are on ", d);
}

// Optional per-tensor bool masks (`name`: empty, or one per tensor of `refs`, same shape and
// device, contiguous).
inline void optional_masks(const char* op, const char* name, at::TensorList masks, const char* ref_name,
                           at::TensorList refs) {
  if (masks.empty()) return;
  same_length(op, name, masks.size(), ref_name, refs.size());
  for (size_t i = 0; i < masks.size(); ++i) {
    TORCH_CHECK_TYPE(masks[i].defined() && masks[i].scalar_type() == at::kBool, op, ": ", name, "[", i,
                     "] must be a bool tensor");
    matches(op, name, i, masks[i], ref_name, refs[i]);
    TORCH_CHECK_VALUE(masks[i].is_contiguous(), op, ": ", name, "[", i, "] must be contiguous");
  }
}

inline void beta(const char* op, const char* name, double b) {
  TORCH_CHECK_VALUE(b >= 0.0 && b < 1.0, op, ": ", name, " must be in [0, 1), got ", b);
}

// Named tensors of one elementwise op: each defined, dense and floating, with the shape, dtype
// and device of the first one (named in the errors).
using NamedTensors = std::initializer_list<std::pair<const char*, const at::Tensor*>>;

inline void like_first(const char* op, NamedTensors ts) {
  const auto& [first_name, first_ptr] = *ts.begin();
  const at::Tensor& first = *first_ptr;
  for (const auto& [name, t] : ts) {
    TORCH_CHECK_VALUE(t->defined(), op, ": ", name, " is undefined (None)");
    TORCH_CHECK_TYPE(t->layout() == at::kStrided, op, ": ", name, " must be a dense tensor, got layout ",
                     t->layout());
    TORCH_CHECK_TYPE(is_float_dtype(t->scalar_type()), op, ": ", name,
                     " must be float16, bfloat16, float32 or float64, got ", t->scalar_type());
    TORCH_CHECK_TYPE(t->scalar_type() == first.scalar_type(), op, ": ", name, " is ", t->scalar_type(), " but ",
                     first_name, " is ", first.scalar_type());
    TORCH_CHECK_VALUE(t->device() == first.device(), op, ": ", name, " is on ", t->device(), " but ", first_name,
                      " is on ", first.device());
    TORCH_CHECK_VALUE(t->sizes() == first.sizes(), op, ": ", name, " has shape ", t->sizes(), " but ", first_name,
                      " has shape ", first.sizes());
  }
}

}  // namespace winnow::checks
