// winnow._C.StateWatch: whether a MaskedAdamW group's state still holds the very objects its
// kept step lists were built from (python/winnow/optim/masked_adamw.py, _StepPlan), checked by
// identity in one call. Why in C++: a step follows a dense pass that has evicted the caches and
// the TLB, and there each distinct piece of interpreter code costs. The same checks written in
// Python (container, params, 4 state tensors per param, 16 params) took 49-58 us of a 0.44 ms
// step at 1% density (Xeon, AVX-512, after torch's fused AdamW step); the step's kernel took 0.29 ms.
// A False here only sends the optimizer to its Python check, which also patches what changed.
#include "state_watch.h"

#include <c10/util/Exception.h>
#include <pybind11/stl.h>

#include <string>
#include <utility>
#include <vector>

namespace winnow {
namespace {

namespace py = pybind11;

class StateWatch {
 public:
  // container: the optimizer's state (a dict); all_states: its values in order; params: the
  // group's params; amsgrad: the group's flag; states: per param its state dict or None; keys:
  // the watched keys of a state; watched: per param and key, the object held then (None: absent).
  StateWatch(py::object container, std::vector<py::object> all_states, std::vector<py::object> params,
             py::object amsgrad, std::vector<py::object> states, std::vector<py::str> keys,
             std::vector<py::object> watched)
      : container_(std::move(container)),
        all_states_(std::move(all_states)),
        params_(std::move(params)),
        amsgrad_(std::move(amsgrad)),
        states_(std::move(states)),
        keys_(std::move(keys)),
        watched_(std::move(watched)) {
    TORCH_CHECK_VALUE(watched_.size() == states_.size() * keys_.size(),
                      "StateWatch: watched must hold one object per state and key");
  }

  // True when `container` and `group` hold exactly what they held at construction.
  bool holds(const py::handle& container, const py::handle& group) const {
    PyObject* c = container.ptr();
    if (c != container_.ptr() || !PyDict_Check(c) || PyDict_GET_SIZE(c) != static_cast<Py_ssize_t>(all_states_.size())) {
      return false;
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    for (size_t i = 0; PyDict_Next(c, &pos, &key, &value); ++i) {
      if (value != all_states_[i].ptr()) return false;
    }
    if (!PyDict_Check(group.ptr())) return false;
    PyObject* amsgrad = item(group.ptr(), amsgrad_key());
    if (amsgrad == nullptr) return false;
    const int same = PyObject_RichCompareBool(amsgrad, amsgrad_.ptr(), Py_EQ);
    if (same < 0) throw py::error_already_set();
    if (same == 0) return false;
    PyObject* params = item(group.ptr(), params_key());
    if (params == nullptr || !PyList_Check(params) || PyList_GET_SIZE(params) != static_cast<Py_ssize_t>(params_.size())) {
      return false;
    }
    for (size_t i = 0; i < params_.size(); ++i) {
      if (PyList_GET_ITEM(params, i) != params_[i].ptr()) return false;
    }
    const size_t w = keys_.size();
    for (size_t i = 0; i < states_.size(); ++i) {
      PyObject* state = states_[i].ptr();
      if (state == Py_None) continue;  // no state then; a state added since shows in the container
      if (!PyDict_Check(state)) return false;
      for (size_t k = 0; k < w; ++k) {
        PyObject* now = item(state, keys_[k].ptr());
        if ((now == nullptr ? Py_None : now) != watched_[i * w + k].ptr()) return false;
      }
    }
    return true;
  }

 private:
  // d[key] (borrowed), or nullptr when absent; a key's __eq__ raising propagates.
  static PyObject* item(PyObject* d, PyObject* key) {
    PyObject* v = PyDict_GetItemWithError(d, key);
    if (v == nullptr && PyErr_Occurred()) throw py::error_already_set();
    return v;
  }
  static PyObject* amsgrad_key() {
    static PyObject* key = PyUnicode_InternFromString("amsgrad");
    return key;
  }
  static PyObject* params_key() {
    static PyObject* key = PyUnicode_InternFromString("params");
    return key;
  }

  py::object container_;
  std::vector<py::object> all_states_, params_;
  py::object amsgrad_;
  std::vector<py::object> states_;
  std::vector<py::str> keys_;
  std::vector<py::object> watched_;
};

}  // namespace

void bind_state_watch(pybind11::module_& m) {
  py::class_<StateWatch>(m, "StateWatch")
      .def(py::init<py::object, std::vector<py::object>, std::vector<py::object>, py::object,
                    std::vector<py::object>, std::vector<py::str>, std::vector<py::object>>(),
           py::arg("container"), py::arg("all_states"), py::arg("params"), py::arg("amsgrad"), py::arg("states"),
           py::arg("keys"), py::arg("watched"))
      .def("holds", &StateWatch::holds, py::arg("container"), py::arg("group"));
}

}  // namespace winnow
