#include "model/encoder.h"

#include <algorithm>
#include <cctype>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "data/file_io.h"
#include "model/peft.h"
#include "model/safetensors.h"

namespace l2v {
namespace fs = std::filesystem;

uint64_t encoder_fingerprint(const EncoderSpec& spec, const std::string& backend_name) {
  std::string key = "llm2vec encoder v1\n" + backend_name + "\npooling " + pooling_mode_name(spec.pooling) +
                    "\nbidirectional " + std::to_string(spec.bidirectional) + "\nskip_instruction " +
                    std::to_string(spec.skip_instruction) + "\nmax_length " + std::to_string(spec.max_length) +
                    "\nleft padding " + std::to_string(spec.padding_side == PaddingSide::kLeft) + "\n";
  auto add_path = [&](const std::string& what, const std::string& path) {
    if (path.empty()) return;
    std::vector<fs::path> files;
    if (fs::is_directory(path)) {
      for (const fs::directory_entry& e : fs::directory_iterator(path))
        if (e.is_regular_file()) files.push_back(e.path());
      std::sort(files.begin(), files.end());
    } else {
      files.push_back(path);
    }
    for (const fs::path& f : files)
      key += what + " " + f.filename().string() + " " + checksum_hex(file_checksum64(f.string())) + "\n";
  };
  add_path("model", spec.model_name_or_path);
  add_path("tokenizer", spec.tokenizer);
  for (const std::string& a : spec.adapters) add_path("adapter", a);
  add_path("pooling head", spec.pooling_head);
  return checksum64(key.data(), key.size());
}

bool has_encoder_spec(const std::string& dir) { return fs::is_regular_file(fs::path(dir) / "llm2vec_run.json"); }

EncoderSpec read_encoder_spec(const std::string& dir) {
  check_export_complete(dir);
  const std::string path = (fs::path(dir) / "llm2vec_run.json").string();
  const nlohmann::json j = read_json_file(path, "(not an `llm2vec train` output directory?)");
  EncoderSpec s;
  try {
    auto resolve = [&](const std::string& p) { return (fs::path(dir) / p).lexically_normal().string(); };
    s.model_name_or_path = resolve(j.at("model_name_or_path").get<std::string>());
    s.tokenizer = resolve(j.at("tokenizer").get<std::string>());
    for (const auto& a : j.at("adapters")) s.adapters.push_back(resolve(a.get<std::string>()));
    s.pooling = parse_pooling_mode(j.at("pooling_mode").get<std::string>());
    if (j.contains("pooling_head")) s.pooling_head = resolve(j.at("pooling_head").get<std::string>());
    s.bidirectional = j.at("bidirectional").get<bool>();
    s.skip_instruction = j.at("skip_instruction").get<bool>();
    s.padding_side = parse_padding_side(j.at("padding_side").get<std::string>());
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + ": " + e.what());
  }
  return s;
}

std::string strip_instruction(std::string s) {
  while (!s.empty() && std::isspace((unsigned char)s.back())) s.pop_back();
  size_t i = 0;
  while (i < s.size() && std::isspace((unsigned char)s[i])) ++i;
  return s.substr(i);
}

Encoder::Encoder(const EncoderSpec& spec, Backend& backend, bool cuda_graphs) : spec_(spec), cuda_graphs_(cuda_graphs) {
  base_ = open_checkpoint(spec.model_name_or_path);
  tok_ = load_tokenizer(spec.tokenizer);
  if (tok_->vocab_size() > base_.config.vocab_size)
    throw std::runtime_error(spec.tokenizer + ": the tokenizer has more ids than the model's vocabulary");
  if (spec_.max_length < 0) throw std::runtime_error("embed: max_length must be positive");
  if (spec_.max_length == 0) spec_.max_length = std::min(512, base_.config.max_position_embeddings);
  load_model(model_, base_.config, *base_.tensors, backend);
  for (const std::string& dir : spec.adapters) {
    load_peft_adapter(model_, dir);
    merge_and_unload_lora(model_);
  }
  head_.mode = spec.pooling;
  if (spec.pooling == PoolingMode::kLatentAttention) {
    if (spec.pooling_head.empty()) throw std::runtime_error("latent_attention pooling needs a pooling head file");
    head_.latent = read_pooling_head_config(spec.pooling_head);
    add_pooling_head(model_, head_, 0);
    load_pooling_head(model_, head_, SafetensorsCheckpoint(spec.pooling_head));
  }
}

namespace {

// Unicode code points of UTF-8 text (Python's len of the decoded string).
size_t code_points(const std::string& s) {
  size_t n = 0;
  for (unsigned char c : s) n += (c & 0xC0) != 0x80;
  return n;
}

// The order llm2vec's encode() embeds texts in: by decreasing length, in characters, of the string it
// builds (`instruction.strip() + " !@#$%^&*()" + text`, or `"!@#$%^&*()" + text` without instruction).
// Texts of a batch then have similar lengths, so little of it is padding. Ties keep input order (numpy's
// argsort may break them otherwise; that only moves a text between batches of the same lengths, which
// changes its embedding by rounding alone: padded keys are masked and RoPE depends on relative positions).
std::vector<size_t> length_order(const std::vector<EncoderInput>& inputs) {
  constexpr size_t kSeparator = 10;  // "!@#$%^&*()"
  std::vector<size_t> key(inputs.size()), order(inputs.size());
  for (size_t i = 0; i < inputs.size(); ++i) {
    const std::string instruction = strip_instruction(inputs[i].instruction);
    key[i] = (instruction.empty() ? 0 : code_points(instruction) + 1) + kSeparator + code_points(inputs[i].text);
    order[i] = i;
  }
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return key[a] > key[b]; });
  return order;
}

}  // namespace

std::vector<float> Encoder::embed(const std::vector<EncoderInput>& inputs, int batch_size, bool progress,
                                  EmbedStats* stats) {
  if (batch_size < 1) throw std::runtime_error("embed: batch size must be positive");
  const auto started = std::chrono::steady_clock::now();  // the progress lines' time: packing, tokenizing, forwards
  if (!forward_forms_only_) {  // inference from here on: e.g. 0.42 GB less for SmolLM2-135M in CPU bf16
    for (const LayerWeights& layer : model_.layers)
      for (const LinearGroup& g : kLinearGroups) {  // a group's weights are one allocation [W, IC]
        const Linear& first = layer.linear[g.ids[0]];
        model_.backend->keep_only_forward_form(first.weight, first.in, group_out_features(model_.config, g));
      }
    forward_forms_only_ = true;
  }
  const int C = dim();
  PadOptions pad;
  pad.max_length = spec_.max_length;
  pad.padding_side = spec_.padding_side;
  pad.append_eos = spec_.pooling == PoolingMode::kEosToken;
  std::vector<float> out(inputs.size() * (size_t)C);
  ForwardOptions opt;
  opt.causal = !spec_.bidirectional;
  opt.inference = true;  // one layer's activations at a time
  const std::vector<size_t> order = length_order(inputs);
  EmbedStats counted;
  counted.max_length = pad.max_length;
  counted.texts = inputs.size();
  for (size_t start = 0; start < inputs.size(); start += batch_size) {
    const size_t end = std::min(inputs.size(), start + (size_t)batch_size);
    std::vector<std::vector<int>> ids;
    std::vector<int> n_instruction;
    for (size_t k = start; k < end; ++k) {
      const EncoderInput& in = inputs[order[k]];
      const std::string instruction = strip_instruction(in.instruction);
      if (instruction.empty()) {
        ids.push_back(tok_->encode(in.text, true));
        n_instruction.push_back(0);
        continue;
      }
      ids.push_back(tok_->encode(instruction + " " + in.text, true));
      const int text_tokens = (int)tok_->encode(in.text, false).size();
      n_instruction.push_back(spec_.skip_instruction ? std::max(0, (int)ids.back().size() - text_tokens) : 0);
    }
    for (const std::vector<int>& t : ids) {
      const bool eos_added = pad.append_eos && (t.empty() || t.back() != tok_->eos_id());
      counted.truncated += t.size() + (eos_added ? 1 : 0) > (size_t)pad.max_length;
    }
    EmbedBatch b;
    try {
      b = build_embed_batch(ids, n_instruction, *tok_, pad);
    } catch (const std::exception& e) {
      std::string which;
      for (size_t k = start; k < end; ++k) which += (k > start ? ", " : "") + std::to_string(order[k] + 1);
      throw std::runtime_error("embed: the batch of texts " + which + ": " + e.what());
    }
    // The batch's device work, as one CUDA graph where the backend has them; the embeddings are read after.
    auto work = [&] {
      model_forward(model_, b.ids.data(), b.key_mask.data(), b.B, b.T, opt);
      pool_forward(model_, head_, b, tok_->bos_id(), tok_->eos_id(), model_.acts.pooled, nullptr);
    };
    if (!cuda_graphs_ || !model_.backend->run_as_graph(0, work)) work();
    const std::vector<float> pooled = download_floats(model_, model_.acts.pooled, (size_t)b.B * C);
    for (size_t k = start; k < end; ++k) {
      const float* row = &pooled[(k - start) * C];
      for (int c = 0; c < C; ++c)
        if (!std::isfinite(row[c]))
          throw std::runtime_error("embed: text " + std::to_string(order[k] + 1) +
                                   " has a non-finite embedding: the model's weights or activations overflow (" +
                                   spec_.model_name_or_path + ")");
      std::copy(row, row + C, out.begin() + order[k] * C);
    }
    if (progress && ((start / batch_size) % 20 == 19 || end == inputs.size())) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - started).count();
      std::fprintf(stderr, "embedded %zu/%zu texts in %.2f s (%.1f texts/s)\n", end, inputs.size(), seconds,
                   end / std::max(seconds, 1e-9));
    }
  }
  if (stats) *stats = counted;
  return out;
}

}  // namespace l2v
