// winnow._C.MaskedAdamWPlan (masked_adamw_plan.cpp): a MaskedAdamW step's lists kept in C++.
#pragma once

#include <pybind11/pybind11.h>

namespace winnow {
void bind_masked_adamw_plan(pybind11::module_& m);
}  // namespace winnow
