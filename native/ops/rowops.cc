// Run-time choice of the row kernels: one table per kernel level (cpu_features.h is the probe).
#include "rowops_api.h"

#include "../cpu_features.h"

namespace peft {
namespace rowops_generic { const RowOps& get(); }
#if defined(__x86_64__)
namespace rowops_avx2 { const RowOps& get(); }
namespace rowops_avx512 { const RowOps& get(); }
#endif

const RowOps& row_ops() {
  static const RowOps* ops = [] {
#if defined(__x86_64__)
    if (kernel_level() == KernelLevel::Avx512) return &rowops_avx512::get();
    if (kernel_level() == KernelLevel::Avx2) return &rowops_avx2::get();
#endif
    return &rowops_generic::get();
  }();
  return *ops;
}

}  // namespace peft
