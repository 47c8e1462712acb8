// winnow._C.MaskedAdamWPlan: the lists of one fused MaskedAdamW step (params, moments, block
// lists, step counts), handed over once by the Python optimizer and kept while they hold. A
// step then crosses from Python once, with the hyperparameters: the grads are read from the
// params here, and masked_adamw_step is called through the dispatcher (its CPU or CUDA kernel,
// any Python mode active) on lists it does not have to convert.
// Why: at 1% density (16 tensors, random 64-element blocks) a step through the op from Python
// took 0.52-0.59 ms after a dense pass had evicted the caches, 0.13 ms of it the crossing itself
// (torch.ops parses 7 lists of 16 tensors, Python reads 16 grads and checks their layout).
#include "masked_adamw_plan.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/utils/pybind.h>

#include <optional>
#include <utility>
#include <vector>

#include "python_dict.h"

namespace winnow {
namespace {

namespace py = pybind11;

using StepSignature = void(at::TensorList, at::TensorList, at::TensorList, at::TensorList, at::TensorList,
                           at::TensorList, at::TensorList, at::IntArrayRef, double, double, double, double, double,
                           bool, bool, const std::optional<at::Tensor>&, const std::optional<at::Tensor>&);

class MaskedAdamWPlan {
 public:
  // `others`: the group's parameters left out of the step (no grad, or no active block), with
  // whether each had a grad when the plan was built; a grad appearing or going away there, as
  // in the step's own params, means the plan no longer holds.
  MaskedAdamWPlan(std::vector<at::Tensor> params, std::vector<at::Tensor> exp_avgs,
                  std::vector<at::Tensor> exp_avg_sqs, std::vector<at::Tensor> max_exp_avg_sqs,
                  std::vector<at::Tensor> active_blocks, std::vector<at::Tensor> block_steps,
                  std::vector<int64_t> block_sizes, std::vector<at::Tensor> others, std::vector<bool> others_had_grad)
      : params_(std::move(params)),
        exp_avgs_(std::move(exp_avgs)),
        exp_avg_sqs_(std::move(exp_avg_sqs)),
        max_exp_avg_sqs_(std::move(max_exp_avg_sqs)),
        active_blocks_(std::move(active_blocks)),
        block_steps_(std::move(block_steps)),
        block_sizes_(std::move(block_sizes)),
        others_(std::move(others)),
        others_had_grad_(std::move(others_had_grad)) {
    TORCH_CHECK_VALUE(others_.size() == others_had_grad_.size(),
                      "MaskedAdamWPlan: others and others_had_grad differ in length");
    grads_.reserve(params_.size());
  }

  // True when the grads are as the plan was built for: every stepped parameter has one, the
  // others have one exactly where they had. A sparse grad anywhere raises, as the optimizer does.
  bool grads_hold() const {
    for (const at::Tensor& p : params_) {
      const at::Tensor& g = p.grad();
      if (!g.defined()) return false;
      check_layout(g);
    }
    for (size_t i = 0; i < others_.size(); ++i) {
      const at::Tensor& g = others_[i].grad();
      if (g.defined() != others_had_grad_[i]) return false;
      if (g.defined()) check_layout(g);
    }
    return true;
  }

  // The fused step; false, with nothing touched, when the grads do not hold (the optimizer
  // rebuilds its lists and steps through the op).
  bool step(double lr, double beta1, double beta2, double weight_decay, double eps, bool amsgrad, bool maximize,
            const std::optional<at::Tensor>& grad_scale, const std::optional<at::Tensor>& found_inf) {
    if (!grads_hold()) return false;
    if (params_.empty()) return true;  // a group none of whose params steps: the plan only watches
    grads_.clear();
    for (const at::Tensor& p : params_) grads_.push_back(p.grad());
    static const auto op = c10::Dispatcher::singleton()
                               .findSchemaOrThrow("winnow::masked_adamw_step", "")
                               .typed<StepSignature>();
    op.call(params_, grads_, exp_avgs_, exp_avg_sqs_, max_exp_avg_sqs_, active_blocks_, block_steps_, block_sizes_,
            lr, beta1, beta2, weight_decay, eps, amsgrad, maximize, grad_scale, found_inf);
    grads_.clear();  // the plan holds no grad between steps: zero_grad(set_to_none) frees them
    return true;
  }

  // The step with the hyperparameters read from the param group (a dict: lr, betas,
  // weight_decay, eps, amsgrad, maximize, as MaskedAdamW._hyper reads them), so that the step
  // crosses from Python in one call: 5-8% less of a 0.42-0.53 ms step at 1% density, 64-element
  // blocks, after a dense pass (Xeon, AVX-512; same-process A/B, three optimizers each, two
  // runs). False, with nothing touched, when this path does not apply and the caller steps the
  // general way: GradScaler's grad_scale or found_inf set in `attributes` (the optimizer's
  // instance dict), a key missing or of another form (the general way raises there), or grads
  // that do not hold.
  bool step_group(const py::dict& group, const py::dict& attributes) {
    using python_dict::interned, python_dict::item;
    static PyObject* const keys[] = {interned("grad_scale"), interned("found_inf"),    interned("lr"),
                                     interned("betas"),      interned("weight_decay"), interned("eps"),
                                     interned("amsgrad"),    interned("maximize")};
    for (PyObject* amp : {keys[0], keys[1]}) {
      PyObject* t = item(attributes.ptr(), amp);
      if (t != nullptr && t != Py_None) return false;
    }
    double lr, beta1, beta2, weight_decay, eps;
    bool amsgrad, maximize;
    PyObject* betas = item(group.ptr(), keys[3]);
    if (betas == nullptr || !PyTuple_Check(betas) || PyTuple_GET_SIZE(betas) != 2 ||
        !as_double(item(group.ptr(), keys[2]), lr) || !as_double(PyTuple_GET_ITEM(betas, 0), beta1) ||
        !as_double(PyTuple_GET_ITEM(betas, 1), beta2) || !as_double(item(group.ptr(), keys[4]), weight_decay) ||
        !as_double(item(group.ptr(), keys[5]), eps) || !as_bool(item(group.ptr(), keys[6]), amsgrad) ||
        !as_bool(item(group.ptr(), keys[7]), maximize)) {
      return false;
    }
    py::gil_scoped_release released;
    return step(lr, beta1, beta2, weight_decay, eps, amsgrad, maximize, std::nullopt, std::nullopt);
  }

 private:
  // float(value) and bool(value) as Python takes them (a tensor lr, a string, included); false
  // when the value is absent (nullptr); a conversion that raises propagates.
  static bool as_double(PyObject* value, double& out) {
    if (value == nullptr) return false;
    if (PyFloat_CheckExact(value)) {
      out = PyFloat_AS_DOUBLE(value);
      return true;
    }
    PyObject* converted = PyNumber_Float(value);
    if (converted == nullptr) throw py::error_already_set();
    out = PyFloat_AS_DOUBLE(converted);
    Py_DECREF(converted);
    return true;
  }
  static bool as_bool(PyObject* value, bool& out) {
    if (value == nullptr) return false;
    const int truth = PyObject_IsTrue(value);
    if (truth < 0) throw py::error_already_set();
    out = truth != 0;
    return true;
  }

  static void check_layout(const at::Tensor& g) {
    TORCH_CHECK(g.layout() == at::kStrided, "MaskedAdamW does not support sparse gradients");
  }

  std::vector<at::Tensor> params_, exp_avgs_, exp_avg_sqs_, max_exp_avg_sqs_, active_blocks_, block_steps_;
  std::vector<int64_t> block_sizes_;
  std::vector<at::Tensor> others_;
  std::vector<bool> others_had_grad_;
  std::vector<at::Tensor> grads_;  // this step's, the list the op takes
};

}  // namespace

void bind_masked_adamw_plan(pybind11::module_& m) {
  py::class_<MaskedAdamWPlan>(m, "MaskedAdamWPlan")
      .def(py::init<std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                    std::vector<at::Tensor>, std::vector<at::Tensor>, std::vector<at::Tensor>,
                    std::vector<int64_t>, std::vector<at::Tensor>, std::vector<bool>>(),
           py::arg("params"), py::arg("exp_avgs"), py::arg("exp_avg_sqs"), py::arg("max_exp_avg_sqs"),
           py::arg("active_blocks"), py::arg("block_steps"), py::arg("block_sizes"), py::arg("others"),
           py::arg("others_had_grad"))
      .def("grads_hold", &MaskedAdamWPlan::grads_hold, py::call_guard<py::gil_scoped_release>())
      .def("step", &MaskedAdamWPlan::step, py::arg("lr"), py::arg("beta1"), py::arg("beta2"),
           py::arg("weight_decay"), py::arg("eps"), py::arg("amsgrad"), py::arg("maximize"), py::arg("grad_scale"),
           py::arg("found_inf"), py::call_guard<py::gil_scoped_release>())
      .def("step_group", &MaskedAdamWPlan::step_group, py::arg("group"), py::arg("attributes"));
}

}  // namespace winnow
