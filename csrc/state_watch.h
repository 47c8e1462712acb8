// winnow._C.StateWatch (state_watch.cpp): an identity check of a MaskedAdamW group's state in C++.
#pragma once

#include <pybind11/pybind11.h>

namespace winnow {
void bind_state_watch(pybind11::module_& m);
}  // namespace winnow
