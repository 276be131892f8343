// The CPU backend: host memory and the fp32 reference ops of host/cpu_ops.h.
#pragma once
#include <memory>

#include "model/backend.h"

namespace l2v {

std::unique_ptr<Backend> make_cpu_backend();

}  // namespace l2v
