// Opens a model checkpoint from a path of any supported kind and returns its config and tensors:
//  - a Hugging Face model directory (config.json + model.safetensors or a sharded index);
//  - a llama2.c legacy checkpoint file (*.bin), imported under Hugging Face names;
//  - a GGUF file (*.gguf, model/gguf_checkpoint.h), dequantised under Hugging Face names.
#pragma once
#include <memory>
#include <string>

#include "model/config.h"
#include "model/model.h"
#include "model/tensor_source.h"

namespace l2v {

struct Checkpoint {
  ModelConfig config;
  std::unique_ptr<TensorSource> tensors;
};

Checkpoint open_checkpoint(const std::string& path);

// Writes the model that `config` and `tensors` describe as a Hugging Face model directory: config.json
// and model.safetensors (F32, the base weights the config implies and nothing else), each written
// atomically (temp file + rename). Creates `dir` if needed. A missing tensor or a wrong shape is a
// std::runtime_error naming the tensor and tensors.describe(), thrown before anything is written.
void save_hf_checkpoint(const ModelConfig& config, const TensorSource& tensors, const std::string& dir);

// The model's current base weights (after merge_and_unload_lora: the merged model) as a Hugging Face
// model directory, like save_hf_checkpoint.
void save_model_hf(const Model& m, const std::string& dir);

}  // namespace l2v
