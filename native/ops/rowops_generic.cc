// Portable build of the row kernels (4-float vectors: one SSE2 register on x86-64, one NEON
// register on arm64; wider generic vectors get their comparisons scalarised by GCC 12).
#include "rowops_api.h"

namespace peft {
namespace rowops_generic {
#define ROWOPS_VW 4
#define ROWOPS_NAME "generic"
#include "rowops.h"
const RowOps& get() { return kRowOps; }
}  // namespace rowops_generic
}  // namespace peft
