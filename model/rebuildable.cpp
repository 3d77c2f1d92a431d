#include "model/rebuildable.h"

#include <ATen/core/grad_mode.h>

namespace condense {
namespace {
thread_local RebuildSink* tls_sink = nullptr;
}  // namespace

RebuildSink* rebuild_sink() { return tls_sink && at::GradMode::is_enabled() ? tls_sink : nullptr; }

RebuildSinkScope::RebuildSinkScope(RebuildSink* sink) : previous_(tls_sink) { tls_sink = sink; }
RebuildSinkScope::~RebuildSinkScope() { tls_sink = previous_; }

}  // namespace condense
