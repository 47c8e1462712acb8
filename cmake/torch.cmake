# Torch discovery without find_package(Torch): TorchConfig.cmake drags in cuBLAS/cuDNN
# targets that a pip-installed torch does not ship headers for. We only need headers,
# the core libraries and the ABI flag, which the installed torch reports itself.
function(winnow_find_torch)
  execute_process(
    COMMAND "${Python_EXECUTABLE}" -c
      "import torch, torch.utils.cpp_extension as c; print(','.join(c.include_paths())); print(c.library_paths()[0]); print(int(torch._C._GLIBCXX_USE_CXX11_ABI)); print(torch.__version__); print(torch.version.cuda or '')"
    OUTPUT_VARIABLE _out
    RESULT_VARIABLE _rc
    OUTPUT_STRIP_TRAILING_WHITESPACE)
  if(NOT _rc EQUAL 0)
    message(FATAL_ERROR "winnow: could not import torch with ${Python_EXECUTABLE}; install torch first")
  endif()
  string(REPLACE "\n" ";" _lines "${_out}")
  list(LENGTH _lines _n)
  math(EXPR _last "${_n} - 1")
  # Warnings printed by torch on import come first; the five answers are the last lines.
  math(EXPR _i0 "${_last} - 4")
  list(SUBLIST _lines ${_i0} 5 _ans)
  list(GET _ans 0 _inc)
  string(REPLACE "," ";" _inc "${_inc}")
  list(GET _ans 1 _libdir)
  list(GET _ans 2 _abi)
  list(GET _ans 3 _ver)
  list(GET _ans 4 _cuda)
  set(TORCH_INCLUDE_DIRS "${_inc}" PARENT_SCOPE)
  set(TORCH_LIBRARY_DIR "${_libdir}" PARENT_SCOPE)
  set(TORCH_CXX11_ABI "${_abi}" PARENT_SCOPE)
  set(TORCH_VERSION_STRING "${_ver}" PARENT_SCOPE)
  set(TORCH_CUDA_VERSION "${_cuda}" PARENT_SCOPE)
endfunction()
