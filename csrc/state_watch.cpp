// winnow._C.StateWatch: which of a MaskedAdamW group's params had a state tensor replaced since
// its kept step lists were built (python/winnow/optim/masked_adamw.py, _StepPlan), found by
// identity in one call, or that the group or the state container changed shape. Why in C++: a
// step follows a dense pass that has evicted the caches and the TLB, and there each distinct
// piece of interpreter code costs: the same checks in Python took 49-58 us of a 0.44 ms step at
// 1% density (16 params, Xeon, AVX-512, after torch's fused AdamW step; the kernel 0.29 ms), and
// ID3's check (finding and patching the 33-41 of its 103 params that grow each step) went from
// 0.40 to 0.25 ms of its 12 ms step.
#include "state_watch.h"

#include <c10/util/Exception.h>
#include <pybind11/stl.h>

#include <utility>
#include <vector>

#include "python_dict.h"

namespace winnow {
namespace {

namespace py = pybind11;
using python_dict::item;

class StateWatch {
 public:
  // container: the optimizer's state (a dict); all_states: its values in order; params: the
  // group's params; amsgrad: the group's flag; states: per param its state dict or None; keys:
  // the watched keys of a state, whose objects are read now.
  StateWatch(py::object container, std::vector<py::object> all_states, std::vector<py::object> params,
             py::object amsgrad, std::vector<py::object> states, std::vector<py::str> keys)
      : container_(std::move(container)),
        all_states_(std::move(all_states)),
        params_(std::move(params)),
        amsgrad_(std::move(amsgrad)),
        states_(std::move(states)),
        keys_(std::move(keys)),
        watched_(states_.size() * keys_.size()) {
    for (size_t i = 0; i < states_.size(); ++i) read(i);
  }

  // None when `container` or `group` no longer hold what they held (another container, a state
  // added, removed or replaced, other params, amsgrad switched); else the params (ascending
  // indices) one of whose watched objects was replaced since it was read: empty when none was.
  py::object changed(const py::handle& container, const py::handle& group) const {
    PyObject* c = container.ptr();
    if (c != container_.ptr() || !PyDict_Check(c) || PyDict_GET_SIZE(c) != static_cast<Py_ssize_t>(all_states_.size())) {
      return py::none();
    }
    Py_ssize_t pos = 0;
    PyObject *key, *value;
    for (size_t i = 0; PyDict_Next(c, &pos, &key, &value); ++i) {
      if (value != all_states_[i].ptr()) return py::none();
    }
    if (!PyDict_Check(group.ptr())) return py::none();
    PyObject* amsgrad = item(group.ptr(), amsgrad_key());
    if (amsgrad == nullptr) return py::none();
    const int same = PyObject_RichCompareBool(amsgrad, amsgrad_.ptr(), Py_EQ);
    if (same < 0) throw py::error_already_set();
    if (same == 0) return py::none();
    PyObject* params = item(group.ptr(), params_key());
    if (params == nullptr || !PyList_Check(params) || PyList_GET_SIZE(params) != static_cast<Py_ssize_t>(params_.size())) {
      return py::none();
    }
    for (size_t i = 0; i < params_.size(); ++i) {
      if (PyList_GET_ITEM(params, i) != params_[i].ptr()) return py::none();
    }
    py::list out;
    const size_t w = keys_.size();
    for (size_t i = 0; i < states_.size(); ++i) {
      PyObject* state = states_[i].ptr();
      if (state == Py_None) continue;  // no state then; a state added since shows in the container
      for (size_t k = 0; k < w; ++k) {
        PyObject* now = item(state, keys_[k].ptr());
        if ((now == nullptr ? Py_None : now) != watched_[i * w + k].ptr()) {
          out.append(i);
          break;
        }
      }
    }
    return std::move(out);
  }

  // Reads the watched objects of these params again (once the caller has taken their changes in).
  void refresh(const std::vector<size_t>& indices) {
    for (const size_t i : indices) {
      TORCH_CHECK_INDEX(i < states_.size(), "StateWatch.refresh: no param ", i);
      read(i);
    }
  }

 private:
  void read(size_t i) {
    PyObject* state = states_[i].ptr();
    TORCH_CHECK_TYPE(state == Py_None || PyDict_Check(state), "StateWatch: a state must be a dict or None");
    for (size_t k = 0; k < keys_.size(); ++k) {
      PyObject* now = state == Py_None ? nullptr : item(state, keys_[k].ptr());
      watched_[i * keys_.size() + k] = py::reinterpret_borrow<py::object>(now == nullptr ? Py_None : now);
    }
  }

  static PyObject* amsgrad_key() {
    static PyObject* key = python_dict::interned("amsgrad");
    return key;
  }
  static PyObject* params_key() {
    static PyObject* key = python_dict::interned("params");
    return key;
  }

  py::object container_;
  std::vector<py::object> all_states_, params_;
  py::object amsgrad_;
  std::vector<py::object> states_;
  std::vector<py::str> keys_;
  std::vector<py::object> watched_;  // per param and key: the object read (None: absent)
};

}  // namespace

void bind_state_watch(pybind11::module_& m) {
  py::class_<StateWatch>(m, "StateWatch")
      .def(py::init<py::object, std::vector<py::object>, std::vector<py::object>, py::object,
                    std::vector<py::object>, std::vector<py::str>>(),
           py::arg("container"), py::arg("all_states"), py::arg("params"), py::arg("amsgrad"), py::arg("states"),
           py::arg("keys"))
      .def("changed", &StateWatch::changed, py::arg("container"), py::arg("group"))
      .def("refresh", &StateWatch::refresh, py::arg("indices"));
}

}  // namespace winnow
