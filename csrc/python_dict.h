// Reading a Python dict from C++ without a Python frame, shared by winnow._C.StateWatch
// (state_watch.cpp) and winnow._C.MaskedAdamWPlan (masked_adamw_plan.cpp). The GIL must be held.
#pragma once

#include <pybind11/pybind11.h>

namespace winnow::python_dict {

// d[key] (borrowed), or nullptr when absent; a key's __eq__ raising propagates.
inline PyObject* item(PyObject* d, PyObject* key) {
  PyObject* v = PyDict_GetItemWithError(d, key);
  if (v == nullptr && PyErr_Occurred()) throw pybind11::error_already_set();
  return v;
}

// An interned str for a key, to be made once (held in a function-local static) and looked up by
// identity-first hashing: no str is built per lookup.
inline PyObject* interned(const char* key) { return PyUnicode_InternFromString(key); }

}  // namespace winnow::python_dict
