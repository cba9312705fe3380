// The compiled module napari_stnls._C and its operator library. Importing the module loads
// this shared library, whose static initialisers register the operators in the napari_stnls
// namespace: the schemas of each op family in its own file (search.cpp, gather.cpp, fold.cpp,
// as TORCH_LIBRARY_FRAGMENT), the kernels in one file per device and family (cpu/, cuda/,
// TORCH_LIBRARY_IMPL). Autograd and fake (shape-only) kernels are registered in Python
// (napari_stnls/ops/), so torch.compile sees through the ops.
#include <Python.h>
#include <torch/library.h>

extern "C" {
// An empty module: importing napari_stnls._C loads this library and registers the ops.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  return PyModule_Create(&module_def);
}
}

// The project's one operator namespace (a namespace has one TORCH_LIBRARY; the families add
// their schemas to it with TORCH_LIBRARY_FRAGMENT).
TORCH_LIBRARY(napari_stnls, m) {}
