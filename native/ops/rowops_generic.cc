// Portable build of the row kernels (SSE2 on x86-64, NEON on arm64).
#include "rowops_api.h"

namespace peft {
namespace rowops_generic {
#include "rowops.h"
const RowOps& get() { return kRowOps; }
}  // namespace rowops_generic
}  // namespace peft
