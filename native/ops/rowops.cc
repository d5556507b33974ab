// Run-time choice of the row kernels.
#include "rowops_api.h"

#include "../cpu_features.h"

namespace peft {
namespace rowops_generic { const RowOps& get(); }
#if defined(__x86_64__) || defined(__i386__)
namespace rowops_avx2 { const RowOps& get(); }
#endif

const RowOps& row_ops() {
  static const RowOps* ops = [] {
#if defined(__x86_64__) || defined(__i386__)
    if (kernel_level() != KernelLevel::Generic) return &rowops_avx2::get();
#endif
    return &rowops_generic::get();
  }();
  return *ops;
}

}  // namespace peft
