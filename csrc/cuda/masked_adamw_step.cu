// CUDA launcher of masked_adamw_step (math in winnow/masked_adamw_step.h). Three passes, none of
// which syncs with the host:
//   1. every active block index is checked against its parameter's block count; a bad one is
//      printed with the CPU's message, raises a device-side assert and sets an error flag, so that
//      nothing at all is written even where device asserts are compiled out;
//   2. per parameter dtype, every active block's step count += 1 and its bias-correction
//      coefficients are computed once (two fp64 pow, a divide, a sqrt per block, not per element);
//   3. the update, one thread per compact state element, with no division in the loop.
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/macros/Macros.h>
#include <torch/library.h>

#include <cstdio>

#include "multi_tensor.cuh"
#include "winnow/masked_adamw_step.h"

namespace winnow::adamw {
namespace {

using cuda::ptr;

__device__ __forceinline__ bool skip_step(const float* found_inf, const int* error) {
  return *error != 0 || (found_inf != nullptr && *found_inf != 0.f);
}

// Pass 1. Slots: active_blocks. aux: 0 the parameter's block count, 1 its block size, 2 its
// position in the op's lists (for the message).
__global__ void check_blocks_kernel(const cuda::TensorListMeta<1, 3> meta, int* error) {
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  const auto* blocks = static_cast<const int64_t*>(meta.ptr[0][t]);
  const int64_t num_blocks = meta.aux[0][t];
  cuda::for_chunk(meta, t, [&](auto width, int64_t i) {
    for (int k = 0; k < decltype(width)::value; ++k) {
      const int64_t b = blocks[i + k];
      if (!block_in_range(b, num_blocks)) {
        printf(WINNOW_BLOCK_RANGE_FORMAT "\n", static_cast<long long>(meta.aux[2][t]), static_cast<long long>(b),
               static_cast<long long>(meta.aux[2][t]), static_cast<long long>(num_blocks),
               static_cast<long long>(meta.aux[1][t]));
        atomicExch(error, 1);
        CUDA_KERNEL_ASSERT(block_in_range(b, num_blocks));
      }
    }
  });
}

// Pass 2. Slots: block_steps (int32), the blocks' coefficients (BlockCoeffs<acc_t>, written).
template <typename acc_t>
__global__ void block_steps_kernel(const cuda::TensorListMeta<2> meta, const Hyper<acc_t> h, const float* found_inf,
                                   const int* error) {
  if (skip_step(found_inf, error)) return;
  const int t = cuda::tensor_of_block(meta, blockIdx.x);
  auto* steps = static_cast<int32_t*>(meta.ptr[0][t]);
  auto* coeffs = static_cast<BlockCoeffs<acc_t>*>(meta.ptr[1][t]);
  cuda::for_chunk(meta, t, [&](auto width, int64_t i) {
    for (int k = 0; k < decltype(width)::value; ++k) {
      const int32_t step = steps[i + k] + 1;
      steps[i + k] = step;
      coeffs[i + k] = block_coeffs(h, step);
    }
  });
}

// Pass 3. Slots: 0 param, 1 grad, 2 exp_avg, 3 exp_avg_sq, 4 max_exp_avg_sq (or null),
// 5 active_blocks, 6 the blocks' coefficients. aux: 0 block size, 1 the parameter's numel, 2 and 3
// kBlockThreads / block size and kBlockThreads % block size (how a thread's block and offset move
// from one element to its next).
using UpdateMeta = cuda::TensorListMeta<7, 4, 28>;
static_assert(sizeof(UpdateMeta) < 4000, "kernel argument too large");

template <bool kAmsgrad, bool kMaximize, typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(cuda::kBlockThreads)
    update_kernel(const UpdateMeta meta, Hyper<acc_t> h, const float* grad_scale, const float* found_inf,
                  const int* error) {
  if (skip_step(found_inf, error)) return;
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
  const auto* coeffs = static_cast<const BlockCoeffs<acc_t>*>(meta.ptr[6][t]);
  const int64_t bs = meta.aux[0][t], numel = meta.aux[1][t], step_blocks = meta.aux[2][t], step_rest = meta.aux[3][t];
  const int64_t begin = (static_cast<int64_t>(blockIdx.x) - meta.first_block[t]) * cuda::kChunkElements;
  const int64_t end = min(begin + cuda::kChunkElements, meta.numel[t]);
  int64_t pos = begin + threadIdx.x;
  int64_t j = pos / bs;       // the one division: compact slot pos is element r of active block j
  int64_t r = pos - j * bs;
  for (; pos < end; pos += cuda::kBlockThreads) {
    const int64_t e = blocks[j] * bs + r;  // blocks[j] < num_blocks (pass 1), so no overflow
    if (e < numel) {                       // the last block may be partial
      acc_t pe = static_cast<acc_t>(p[e]);
      acc_t unused = 0;
      update<kAmsgrad, kMaximize>(pe, static_cast<acc_t>(g[e]), m[pos], v[pos], kAmsgrad ? vmax[pos] : unused, h,
                                  coeffs[j]);
      p[e] = static_cast<scalar_t>(pe);
    }
    j += step_blocks;
    r += step_rest;
    if (r >= bs) {
      r -= bs;
      ++j;
    }
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

  at::Tensor error = at::zeros({1}, params[0].options().dtype(at::kInt));
  {
    std::vector<std::array<void*, 1>> block_ptrs;
    std::vector<int64_t> counts;
    std::vector<std::vector<int64_t>> aux(3);
    for (size_t i = 0; i < n; ++i) {
      block_ptrs.push_back({ptr(active_blocks[i])});
      counts.push_back(active_blocks[i].numel());
      aux[0].push_back(num_blocks(params[i].numel(), block_sizes[i]));
      aux[1].push_back(block_sizes[i]);
      aux[2].push_back(static_cast<int64_t>(i));
    }
    cuda::launch_over<cuda::TensorListMeta<1, 3>>(block_ptrs, counts, {8},
                                                  [&](const cuda::TensorListMeta<1, 3>& meta, int64_t blocks) {
      check_blocks_kernel<<<blocks, cuda::kBlockThreads, 0, stream>>>(meta, error.data_ptr<int>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    }, aux);
  }

  cuda::per_dtype(params, [&](at::ScalarType dtype, const std::vector<size_t>& idx) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "masked_adamw_step", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      const auto h = hyper<acc_t>(lr, beta1, beta2, weight_decay, eps, 1.0);
      // The coefficients of every active block of this dtype's parameters, one slice per parameter.
      int64_t active = 0;
      for (size_t i : idx) active += active_blocks[i].numel();
      at::Tensor coeff_store = at::empty({2 * active}, params[0].options().dtype(c10::CppTypeToScalarType<acc_t>::value));
      auto* coeffs = reinterpret_cast<BlockCoeffs<acc_t>*>(coeff_store.data_ptr<acc_t>());

      std::vector<std::array<void*, 2>> step_ptrs;
      std::vector<int64_t> step_counts;
      std::vector<std::array<void*, 7>> ptrs;
      std::vector<int64_t> work;
      std::vector<std::vector<int64_t>> aux(4);
      int64_t offset = 0;
      for (size_t i : idx) {
        const int64_t a = active_blocks[i].numel(), bs = block_sizes[i];
        step_ptrs.push_back({ptr(block_steps[i]), coeffs + offset});
        step_counts.push_back(a);
        ptrs.push_back({params[i].data_ptr(), ptr(in.grads[i]), exp_avgs[i].data_ptr(), exp_avg_sqs[i].data_ptr(),
                        amsgrad ? max_exp_avg_sqs[i].data_ptr() : nullptr, ptr(active_blocks[i]), coeffs + offset});
        work.push_back(a * bs);
        aux[0].push_back(bs);
        aux[1].push_back(params[i].numel());
        aux[2].push_back(cuda::kBlockThreads / bs);
        aux[3].push_back(cuda::kBlockThreads % bs);
        offset += a;
      }
      cuda::launch_over<cuda::TensorListMeta<2>>(step_ptrs, step_counts, {4, 0},
                                                 [&](const cuda::TensorListMeta<2>& meta, int64_t blocks) {
        block_steps_kernel<acc_t><<<blocks, cuda::kBlockThreads, 0, stream>>>(meta, h, inf_ptr, error.data_ptr<int>());
        C10_CUDA_KERNEL_LAUNCH_CHECK();
      });
      dispatch_flags(amsgrad, maximize, [&](auto ams, auto maxi) {
        cuda::launch_over<UpdateMeta>(
            ptrs, work, {0, 0, 0, 0, 0, 0, 0},
            [&](const UpdateMeta& meta, int64_t blocks) {
              update_kernel<decltype(ams)::value, decltype(maxi)::value, scalar_t, acc_t>
                  <<<blocks, cuda::kBlockThreads, 0, stream>>>(meta, h, scale_ptr, inf_ptr, error.data_ptr<int>());
              C10_CUDA_KERNEL_LAUNCH_CHECK();
            },
            aux);
      });
    });
  });
}

}  // namespace

TORCH_LIBRARY_IMPL(winnow, CUDA, m) { m.impl("masked_adamw_step", &masked_adamw_step_cuda); }

}  // namespace winnow::adamw
