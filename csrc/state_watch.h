// winnow._C.StateWatch (state_watch.cpp): which state tensors of a MaskedAdamW group were replaced.
#pragma once

#include <pybind11/pybind11.h>

namespace winnow {
void bind_state_watch(pybind11::module_& m);
}  // namespace winnow
