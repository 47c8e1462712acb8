#pragma once
// CPU kernels built once per instruction set and chosen at run time, the way ATen builds its own
// (its DispatchStub): every source under csrc/cpu/isa/ is compiled once per set (DEFAULT, and on
// x86-64 also AVX2 and AVX512, each with its -m flags and CPU_CAPABILITY=<set>, so at::vec's
// Vectorized is that set's), each copy registers its entry points in the Stubs its header
// declares, and a call runs the copy of the best set the machine allows.
//
// The active set is ATen's own choice (the CPU's features, lowered by ATEN_CPU_CAPABILITY),
// lowered further by WINNOW_CPU_CAPABILITY=default|avx2|avx512 (the tests force the baseline).
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>

#include <string>
#include <utility>

namespace winnow::cpu {

enum Isa : int { kDefault = 0, kAvx2 = 1, kAvx512 = 2, kNumIsas = 3 };

// Decided once, at the first call; raises a ValueError for a bad WINNOW_CPU_CAPABILITY.
Isa active_isa();
const char* isa_name(Isa isa);
std::string built_isas();  // "DEFAULT AVX2 AVX512" on x86-64

// One entry point with a slot per instruction set; `get()` is the active set's, or the best
// lower one that was built (DEFAULT always is).
template <typename Fn>
struct Stub {
  Fn impl[kNumIsas] = {};

  Fn get() const {
    for (int i = active_isa(); i >= 0; --i) {
      if (impl[i] != nullptr) return impl[i];
    }
    TORCH_CHECK(false, "winnow: a CPU kernel has no DEFAULT build (csrc/cpu/isa/ was not compiled)");
  }

  template <typename... Args>
  decltype(auto) operator()(Args&&... args) const {
    return get()(std::forward<Args>(args)...);
  }
};

}  // namespace winnow::cpu

// In a csrc/cpu/isa/ source: fills this build's slot of `stub` with `fn` at load time (the
// stubs are constant-initialised, so they are ready before any registration runs).
#ifdef WINNOW_THIS_ISA
#define WINNOW_ISA_CONCAT_(a, b) a##b
#define WINNOW_ISA_CONCAT(a, b) WINNOW_ISA_CONCAT_(a, b)
#define WINNOW_REGISTER_ISA_KERNEL(stub, fn) \
  static const bool WINNOW_ISA_CONCAT(winnow_registered_, __LINE__) = ((stub).impl[WINNOW_THIS_ISA] = (fn), true)

// Runs __VA_ARGS__ with `scalar_t` bound to `dtype` (float, double, and with WITH_HALF also Half
// and BFloat16); the launcher has validated the dtype. Not AT_DISPATCH: its error path would
// instantiate c10's string helpers here too, inline code compiled with this set's flags that the
// linker may pick for every caller (see WINNOW_HD in winnow/macros.h).
#define WINNOW_ISA_CASE_(type, ...)  \
  case c10::CppTypeToScalarType<type>::value: { \
    using scalar_t = type;           \
    __VA_ARGS__();                   \
    break;                           \
  }
#define WINNOW_ISA_DISPATCH_FLOATING(dtype, ...)                \
  [&] {                                                         \
    switch (dtype) {                                            \
      WINNOW_ISA_CASE_(float, __VA_ARGS__)                      \
      WINNOW_ISA_CASE_(double, __VA_ARGS__)                     \
      default: break;                                           \
    }                                                           \
  }()
#define WINNOW_ISA_DISPATCH_FLOATING_WITH_HALF(dtype, ...)      \
  [&] {                                                         \
    switch (dtype) {                                            \
      WINNOW_ISA_CASE_(float, __VA_ARGS__)                      \
      WINNOW_ISA_CASE_(double, __VA_ARGS__)                     \
      WINNOW_ISA_CASE_(c10::Half, __VA_ARGS__)                  \
      WINNOW_ISA_CASE_(c10::BFloat16, __VA_ARGS__)              \
      default: break;                                           \
    }                                                           \
  }()
#endif
