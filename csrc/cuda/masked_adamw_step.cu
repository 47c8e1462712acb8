// CUDA launcher of masked_adamw_step (math in winnow/masked_adamw_step.h).
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "multi_tensor.cuh"
#include "winnow/masked_adamw_step.h"

namespace winnow::adamw {
namespace {

inline void* ptr(const at::Tensor& t) { return const_cast<void*>(t.const_data_ptr()); }

// Slots: 0 param, 1 grad, 2 exp_avg, 3 exp_avg_sq, 4 max_exp_avg_sq (or null), 5 active_blocks,
// 6 block_steps. aux[0] = block size, aux[1] = the parameter's numel.
using StepMeta = cuda::TensorListMeta<7, 2, 32>;
static_assert(sizeof(StepMeta) < 4000, "kernel argument too large");

__device__ __forceinline__ bool skip_step(const float* found_inf) { return found_inf != nullptr && *found_inf != 0.f; }

// Pass 1: every active block's step count += 1 (a separate pass because a block's elements may
// be spread over several thread blocks, which all read the new count in pass 2).
__global__ void increment_steps_kernel(const cuda::TensorListMeta<1> meta, const float* found_inf) {
  if (skip_step(found_inf)) return;
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  auto* steps = static_cast<int32_t*>(meta.ptr[0][t]);
  cuda::for_chunk(meta, t, [&](auto width, int64_t i) {
    for (int k = 0; k < decltype(width)::value; ++k) steps[i + k] += 1;
  });
}

// Pass 2: one thread per compact state element; consecutive threads touch consecutive elements
// of a block, in the state and in the parameter alike.
template <bool kAmsgrad, bool kMaximize, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(cuda::kBlockThreads)
    update_kernel(const StepMeta meta, Hyper<acc_t> h, const float* grad_scale, const float* found_inf) {
  if (skip_step(found_inf)) return;
  if (grad_scale != nullptr) {
    h.grad_scale = static_cast<acc_t>(*grad_scale);
    h.unscale = true;
  }
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  auto* p = static_cast<scalar_t*>(meta.ptr[0][t]);
  const auto* g = static_cast<const scalar_t*>(meta.ptr[1][t]);
  auto* m = static_cast<acc_t*>(meta.ptr[2][t]);
  auto* v = static_cast<acc_t*>(meta.ptr[3][t]);
  auto* vmax = static_cast<acc_t*>(meta.ptr[4][t]);
  const auto* blocks = static_cast<const int64_t*>(meta.ptr[5][t]);
  const auto* steps = static_cast<const int32_t*>(meta.ptr[6][t]);
  const int64_t bs = meta.aux[0][t], numel = meta.aux[1][t];
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) - meta.first_block[t]) * cuda::kChunkElements;
  const int64_t end = min(begin + cuda::kChunkElements, meta.numel[t]);
  for (int64_t pos = begin + threadIdx.x; pos < end; pos += blockDim.x) {
    const int64_t j = pos / bs;
    const int64_t e = blocks[j] * bs + (pos - j * bs);
    if (blocks[j] < 0 || e >= numel) continue;  // partial last block (or a corrupt index: never write outside)
    const BlockCoeffs<acc_t> c = block_coeffs(h, steps[j]);
    acc_t pe = static_cast<acc_t>(p[e]);
    acc_t unused = 0;
    update<kAmsgrad, kMaximize>(pe, static_cast<acc_t>(g[e]), m[pos], v[pos], kAmsgrad ? vmax[pos] : unused, h, c);
    p[e] = static_cast<scalar_t>(pe);
  }
}

void masked_adamw_step_cuda(at::TensorList params, at::TensorList grads, at::TensorList exp_avgs,
                            at::TensorList exp_avg_sqs, at::TensorList max_exp_avg_sqs, at::TensorList active_blocks,
                            at::TensorList block_steps, at::IntArrayRef block_sizes, double lr, double beta1,
                            double beta2, double weight_decay, double eps, bool amsgrad, bool maximize,
                            const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
  const StepInputs in = check_step(params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, active_blocks, block_steps,
                                   block_sizes, lr, beta1, beta2, weight_decay, eps, amsgrad, grad_scale, found_inf);
  const c10::cuda::CUDAGuard guard(params[0].device());
  const auto stream = c10::cuda::getCurrentCUDAStream();
  const float* scale_ptr = grad_scale.has_value() ? grad_scale->const_data_ptr<float>() : nullptr;
  const float* inf_ptr = found_inf.has_value() ? found_inf->const_data_ptr<float>() : nullptr;
  const size_t n = params.size();

  std::vector<std::array<void*, 1>> step_ptrs;
  std::vector<int64_t> step_counts;
  for (size_t i = 0; i < n; ++i) {
    step_ptrs.push_back({ptr(block_steps[i])});
    step_counts.push_back(block_steps[i].numel());
  }
  cuda::launch_over<cuda::TensorListMeta<1>>(step_ptrs, step_counts, {4},
                                             [&](const cuda::TensorListMeta<1>& meta, int64_t blocks) {
    increment_steps_kernel<<<blocks, cuda::kBlockThreads, 0, stream>>>(meta, inf_ptr);
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });

  for (auto dtype : {at::kFloat, at::kBFloat16, at::kHalf, at::kDouble}) {
    std::vector<std::array<void*, 7>> ptrs;
    std::vector<int64_t> work;
    std::vector<std::vector<int64_t>> aux(2);
    for (size_t i = 0; i < n; ++i) {
      if (params[i].scalar_type() != dtype) continue;
      ptrs.push_back({params[i].data_ptr(), ptr(in.grads[i]), exp_avgs[i].data_ptr(), exp_avg_sqs[i].data_ptr(),
                      amsgrad ? max_exp_avg_sqs[i].data_ptr() : nullptr, ptr(active_blocks[i]),
                      ptr(block_steps[i])});
      work.push_back(active_blocks[i].numel() * block_sizes[i]);
      aux[0].push_back(block_sizes[i]);
      aux[1].push_back(params[i].numel());
    }
    if (ptrs.empty()) continue;
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "masked_adamw_step", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto h = hyper<acc_t>(lr, beta1, beta2, weight_decay, eps, 1.0);
      dispatch_flags(amsgrad, maximize, [&](auto ams, auto maxi) {
        cuda::launch_over<StepMeta>(
            ptrs, work, {0, 0, 0, 0, 0, 0, 0},
            [&](const StepMeta& meta, int64_t blocks) {
              update_kernel<decltype(ams)::value, decltype(maxi)::value, scalar_t, acc_t>
                  <<<blocks, cuda::kBlockThreads, 0, stream>>>(meta, h, scale_ptr, inf_ptr);
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            },
            aux);
      });
    });
  }
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) { m.impl("masked_adamw_step", &masked_adamw_step_cuda); }

}  // namespace winnow::adamw
