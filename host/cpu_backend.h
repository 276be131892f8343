// The CPU backend: host memory and the fp32 reference ops of host/cpu_ops.h.
#pragma once
#include <memory>

#include "model/backend.h"

namespace l2v {

std::unique_ptr<Backend> make_cpu_backend();

// The memory a CPU backend has allocated (alloc minus release, as rounded up to 64 bytes): now, and the
// most at any time (the memory planner's tests compare it with model/memory_plan.h). Throws for a
// backend that is not the CPU backend.
struct BackendMemory {
  size_t current = 0, peak = 0;
};
BackendMemory cpu_backend_memory(const Backend& backend);

}  // namespace l2v
