// Opens a model checkpoint from a path of any supported kind and returns its config and tensors:
//  - a Hugging Face model directory (config.json + model.safetensors or a sharded index);
//  - a llama2.c legacy checkpoint file (*.bin), imported under Hugging Face names.
#pragma once
#include <memory>
#include <string>

#include "model/config.h"
#include "model/tensor_source.h"

namespace l2v {

struct Checkpoint {
  ModelConfig config;
  std::unique_ptr<TensorSource> tensors;
};

Checkpoint open_checkpoint(const std::string& path);

}  // namespace l2v
