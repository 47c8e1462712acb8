# The CUDA architectures to build, in CMAKE_CUDA_ARCHITECTURES form ("80-real;90-real;90-virtual"):
#   1. TORCH_CUDA_ARCH_LIST from the environment, as torch's own extensions read it
#      ("8.0;9.0+PTX", spaces allowed; "+PTX" adds the PTX of that arch);
#   2. else WINNOW_CUDA_ARCHITECTURES, verbatim (setup.py passes a user's CMAKE_CUDA_ARCHITECTURES
#      or CUDAARCHS environment variable through it; plain cmake users set it with -D);
#   3. else the default list below.
set(WINNOW_DEFAULT_CUDA_ARCH_LIST "8.0;9.0+PTX;10.0")  # A100; H100/H200 (+PTX for newer GPUs); B200

function(winnow_cuda_architectures out_var)
  set(_list "$ENV{TORCH_CUDA_ARCH_LIST}")
  if(_list STREQUAL "" AND NOT "${WINNOW_CUDA_ARCHITECTURES}" STREQUAL "")
    set(${out_var} "${WINNOW_CUDA_ARCHITECTURES}" PARENT_SCOPE)
    return()
  endif()
  if(_list STREQUAL "")
    set(_list "${WINNOW_DEFAULT_CUDA_ARCH_LIST}")
  endif()
  winnow_translate_arch_list("${_list}" _archs)
  set(${out_var} "${_archs}" PARENT_SCOPE)
endfunction()

# "8.0;9.0+PTX" -> "80-real;90-real;90-virtual"
function(winnow_translate_arch_list arch_list out_var)
  set(_list "${arch_list}")
  string(REPLACE " " ";" _list "${_list}")
  set(_archs "")
  foreach(_a IN LISTS _list)
    if(_a STREQUAL "")
      continue()
    endif()
    set(_ptx OFF)
    if(_a MATCHES "\\+PTX$")
      set(_ptx ON)
      string(REPLACE "+PTX" "" _a "${_a}")
    endif()
    if(NOT _a MATCHES "^[0-9]+\\.[0-9]+[af]?$")
      message(FATAL_ERROR "winnow: bad entry '${_a}' in TORCH_CUDA_ARCH_LIST")
    endif()
    string(REPLACE "." "" _num "${_a}")
    list(APPEND _archs "${_num}-real")
    if(_ptx)
      list(APPEND _archs "${_num}-virtual")
    endif()
  endforeach()
  set(${out_var} "${_archs}" PARENT_SCOPE)
endfunction()
