// Run-time choice of the row kernels.
#include "rowops_api.h"

#include <cstdlib>
#include <string>

namespace peft {
namespace rowops_generic { const RowOps& get(); }
#if defined(__x86_64__) || defined(__i386__)
namespace rowops_avx2 { const RowOps& get(); }
#endif

const RowOps& row_ops() {
  static const RowOps* ops = [] {
    const char* force = std::getenv("PEFT_KERNELS");
    if (force && std::string(force) == "generic") return &rowops_generic::get();
#if defined(__x86_64__) || defined(__i386__)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return &rowops_avx2::get();
#endif
    return &rowops_generic::get();
  }();
  return *ops;
}

}  // namespace peft
