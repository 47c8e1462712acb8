// Which instruction set the csrc/cpu/isa/ kernels run with (see isa.h).
#include "isa.h"

#include <ATen/Version.h>

#include <algorithm>
#include <cctype>
#include <cstdlib>

#ifndef WINNOW_BUILT_ISAS
#error "WINNOW_BUILT_ISAS must be defined by the build"
#endif

namespace winnow::cpu {
namespace {

// ATen's choice: "AVX512", "AVX2", or "NO AVX"/"DEFAULT" (and other names off x86-64).
Isa aten_isa() {
  const std::string aten = at::get_cpu_capability();
  if (aten == "AVX512") return kAvx512;
  if (aten == "AVX2") return kAvx2;
  return kDefault;
}

Isa decide() {
  Isa isa = aten_isa();
  const char* env = std::getenv("WINNOW_CPU_CAPABILITY");
  if (env != nullptr && *env != '\0') {
    std::string want(env);
    std::transform(want.begin(), want.end(), want.begin(), [](unsigned char c) { return std::tolower(c); });
    Isa asked;
    if (want == "default") {
      asked = kDefault;
    } else if (want == "avx2") {
      asked = kAvx2;
    } else if (want == "avx512") {
      asked = kAvx512;
    } else {
      TORCH_CHECK_VALUE(false, "WINNOW_CPU_CAPABILITY must be one of default, avx2, avx512, got '", env, "'");
    }
    isa = std::min(isa, asked);  // it can only lower: a higher set might not run on this CPU
  }
  return isa;
}

}  // namespace

Isa active_isa() {
  static const Isa isa = decide();
  return isa;
}

const char* isa_name(Isa isa) {
  switch (isa) {
    case kAvx512: return "AVX512";
    case kAvx2: return "AVX2";
    default: return "DEFAULT";
  }
}

std::string built_isas() { return WINNOW_BUILT_ISAS; }

}  // namespace winnow::cpu
