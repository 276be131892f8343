#include "model/sentence_transformers.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <filesystem>
#include <sstream>
#include <stdexcept>

#include "data/file_io.h"
#include "host/cpu_backend.h"
#include "model/checkpoint.h"

namespace l2v {

namespace fs = std::filesystem;

namespace {

nlohmann::json read_json(const fs::path& path) { return read_json_file(path.string(), "a JSON file of the export"); }

void write_json(const fs::path& path, const nlohmann::json& j) { write_file_atomic(path.string(), j.dump(2) + "\n"); }

// The directory holding the Hugging Face tokenizer named by `tokenizer` (a directory or its tokenizer.json).
fs::path hf_tokenizer_dir(const std::string& tokenizer) {
  const fs::path p(tokenizer);
  const fs::path dir = fs::is_directory(p) ? p : p.parent_path();
  if (!fs::is_regular_file(dir / "tokenizer.json"))
    throw std::runtime_error(tokenizer +
                             ": sentence-transformers loads a Hugging Face tokenizer (tokenizer.json), and this "
                             "tokenizer has none (llama2.c's tok*.bin has no Hugging Face form)");
  return dir;
}

// The pooling module's flag for `mode`, or the reason the library cannot express it.
const char* pooling_flag(PoolingMode mode) {
  switch (mode) {
    case PoolingMode::kMean: return "pooling_mode_mean_tokens";
    case PoolingMode::kWeightedMean: return "pooling_mode_weightedmean_tokens";
    case PoolingMode::kLastToken: return "pooling_mode_lasttoken";
    case PoolingMode::kEosToken: return "pooling_mode_lasttoken";  // of the EOS the tokenizer then appends
    case PoolingMode::kBosToken: return "pooling_mode_cls_token";
    case PoolingMode::kLatentAttention:
      throw std::runtime_error(
          "pooling_mode latent_attention cannot be exported to sentence-transformers: NV-Embed's latent-attention "
          "block is no sentence-transformers module (its parameters are in pooling_head.safetensors)");
  }
  throw std::logic_error("pooling_flag: unknown mode");
}

// eos_token: llm2vec appends the EOS to every text (after truncation, so it is kept) and pools it. The
// exported tokenizer does the same through its post-processor: a TemplateProcessing that ends each sequence
// with the EOS (added to the tokenizer's own template, or made when it has none); the library's lasttoken
// then pools it. Another post-processor type is refused.
void append_eos(nlohmann::json& tokenizer_json, const std::string& eos, int eos_id, const std::string& where) {
  nlohmann::json& pp = tokenizer_json["post_processor"];
  if (pp.is_null()) {
    pp = {{"type", "TemplateProcessing"},
          {"single", {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}}},
          {"pair", {{{"Sequence", {{"id", "A"}, {"type_id", 0}}}}, {{"Sequence", {{"id", "B"}, {"type_id", 1}}}}}},
          {"special_tokens", nlohmann::json::object()}};
  } else if (pp.value("type", "") != "TemplateProcessing") {
    throw std::runtime_error(where + ": pooling_mode eos_token needs the exported tokenizer to append the EOS, and "
                             "its post-processor (" + pp.value("type", std::string("?")) +
                             ") is not a TemplateProcessing this export can extend");
  }
  // The EOS right after each sequence, with its type id: [BOS] A [EOS] ([BOS] B [EOS]).
  for (const char* which : {"single", "pair"}) {
    nlohmann::json out = nlohmann::json::array();
    for (const nlohmann::json& item : pp[which]) {
      out.push_back(item);
      if (item.contains("Sequence"))
        out.push_back({{"SpecialToken", {{"id", eos}, {"type_id", item["Sequence"].value("type_id", 0)}}}});
    }
    pp[which] = out;
  }
  pp["special_tokens"][eos] = {{"id", eos}, {"ids", {eos_id}}, {"tokens", {eos}}};
}

nlohmann::json pooling_config(PoolingMode mode, int dim, bool include_prompt) {
  nlohmann::json j = {{"word_embedding_dimension", dim}, {"include_prompt", include_prompt}};
  for (const char* flag : {"pooling_mode_cls_token", "pooling_mode_mean_tokens", "pooling_mode_max_tokens",
                           "pooling_mode_mean_sqrt_len_tokens", "pooling_mode_weightedmean_tokens",
                           "pooling_mode_lasttoken"})
    j[flag] = false;
  j[pooling_flag(mode)] = true;
  return j;
}

std::string model_card(const EncoderSpec& spec, const SentenceTransformersOptions& opt,
                       const SentenceTransformersExport& result) {
  const int max_length = result.max_seq_length;
  std::ostringstream s;
  s << "# Exported by `llm2vec export --format sentence-transformers`\n\n"
    << "- base: `" << spec.model_name_or_path << "`\n";
  for (const std::string& a : spec.adapters) s << "- adapter merged: `" << a << "`\n";
  s << "- attention: " << (spec.bidirectional ? "bidirectional (`is_causal: false` in config.json; transformers >= 5.2 "
                                                "reads it, older versions run the model causally)"
                                              : "causal")
    << "\n- pooling: " << pooling_mode_name(spec.pooling) << ", then L2 normalisation\n"
    << "- max_seq_length: " << max_length
    << (max_length < spec.max_length ? " (the model's context; the encoder's max_length was larger)" : "") << "\n";
  if (!opt.query_instruction.empty())
    s << "- query prompt (`prompt_name=\"query\"`): `" << opt.query_instruction << " `"
      << (spec.skip_instruction ? ", not pooled" : ", pooled") << "\n";
  s << "\n```python\nfrom sentence_transformers import SentenceTransformer\n"
    << "model = SentenceTransformer(\"PATH\")\n"
    << "docs = model.encode([\"a document\"])\n";
  if (!opt.query_instruction.empty()) s << "queries = model.encode([\"a query\"], prompt_name=\"query\")\n";
  s << "```\n\nThe texts are padded on the right here (llm2vec pads on the left: the same embeddings, since padding is "
       "masked).\n";
  if (!result.differences.empty()) s << "\n## Where the library's embeddings differ from llm2vec's\n\n";
  for (const std::string& d : result.differences) s << "- " << d << "\n";
  return s.str();
}

// Everything but the rename: the files of the export in `stage`.
void write_export(const fs::path& stage, const EncoderSpec& spec, const SentenceTransformersOptions& opt,
                  const Encoder& encoder, const fs::path& tok_dir, const SentenceTransformersExport& result) {
  const Tokenizer& tokenizer = encoder.tokenizer();
  const int max_length = result.max_seq_length;
  const nlohmann::json pooling = pooling_config(spec.pooling, encoder.dim(), !spec.skip_instruction);
  save_model_hf(encoder.model(), stage.string());
  nlohmann::json config = read_json(stage / "config.json");
  if (spec.bidirectional) config["is_causal"] = false;
  write_json(stage / "config.json", config);

  // The tokenizer: padding on the right, a padding token, the encoder's length; for eos_token, the EOS
  // appended to every text.
  if (spec.pooling == PoolingMode::kEosToken) {
    if (tokenizer.eos_id() < 0) throw std::runtime_error(spec.tokenizer + ": eos_token pooling needs an EOS token");
    nlohmann::json tj = read_json(tok_dir / "tokenizer.json");
    append_eos(tj, tokenizer.decode({tokenizer.eos_id()}, false), tokenizer.eos_id(), spec.tokenizer);
    write_file_atomic((stage / "tokenizer.json").string(), tj.dump() + "\n");
  } else {
    fs::copy_file(tok_dir / "tokenizer.json", stage / "tokenizer.json");
  }
  if (fs::is_regular_file(tok_dir / "special_tokens_map.json"))
    fs::copy_file(tok_dir / "special_tokens_map.json", stage / "special_tokens_map.json");
  nlohmann::json tok_config = fs::is_regular_file(tok_dir / "tokenizer_config.json")
                                  ? read_json(tok_dir / "tokenizer_config.json")
                                  : nlohmann::json::object();
  tok_config["padding_side"] = "right";
  tok_config["model_max_length"] = max_length;
  if (!tok_config.contains("pad_token") || tok_config["pad_token"].is_null()) {
    const int pad = tokenizer.eos_id() >= 0 ? tokenizer.eos_id() : tokenizer.bos_id();
    if (pad < 0) throw std::runtime_error(spec.tokenizer + ": the tokenizer has no EOS or BOS token to pad with");
    tok_config["pad_token"] = tokenizer.decode({pad}, false);
  }
  write_json(stage / "tokenizer_config.json", tok_config);

  write_json(stage / "modules.json",
             nlohmann::json::array({{{"idx", 0}, {"name", "0"}, {"path", ""}, {"type", "sentence_transformers.models.Transformer"}},
                                    {{"idx", 1}, {"name", "1"}, {"path", "1_Pooling"}, {"type", "sentence_transformers.models.Pooling"}},
                                    {{"idx", 2}, {"name", "2"}, {"path", "2_Normalize"}, {"type", "sentence_transformers.models.Normalize"}}}));
  write_json(stage / "sentence_bert_config.json", {{"max_seq_length", max_length}, {"do_lower_case", false}});
  fs::create_directories(stage / "1_Pooling");
  write_json(stage / "1_Pooling" / "config.json", pooling);
  fs::create_directories(stage / "2_Normalize");
  nlohmann::json prompts = nlohmann::json::object();
  if (!opt.query_instruction.empty()) {
    prompts["query"] = strip_instruction(opt.query_instruction) + " ";  // llm2vec's format
  }
  write_json(stage / "config_sentence_transformers.json",
             {{"prompts", prompts}, {"default_prompt_name", nullptr}, {"similarity_fn_name", "cosine"}});
  write_file_atomic((stage / "README.md").string(), model_card(spec, opt, result));

}

}  // namespace

SentenceTransformersExport export_sentence_transformers(const EncoderSpec& spec,
                                                        const SentenceTransformersOptions& opt,
                                                        const std::string& out_dir) {
  const fs::path out(out_dir);
  if (fs::exists(out) && !(fs::is_directory(out) && fs::is_empty(out)))
    throw std::runtime_error(out_dir + ": exists and is not an empty directory (choose another --out)");
  pooling_flag(spec.pooling);  // refuse what the library cannot express before loading anything
  const fs::path tok_dir = hf_tokenizer_dir(spec.tokenizer);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Encoder encoder(spec, *backend);  // loads the base and merges the adapters in fp32
  SentenceTransformersExport result;
  // The library truncates to max_seq_length; positions past the model's context were never trained.
  result.max_seq_length = std::min(encoder.spec().max_length, encoder.model().config.max_position_embeddings);
  const Tokenizer& tokenizer = encoder.tokenizer();
  const std::vector<int> probe = tokenizer.encode("a", true);
  if ((spec.pooling == PoolingMode::kMean || spec.pooling == PoolingMode::kWeightedMean) && !probe.empty() &&
      probe.front() == tokenizer.bos_id())
    result.differences.push_back(
        std::string("the tokenizer adds a BOS token, which the library's ") + pooling_mode_name(spec.pooling) +
        " pooling includes and llm2vec's excludes (it pools the text's tokens only)");
  if (!opt.query_instruction.empty() && spec.skip_instruction)
    result.differences.push_back(
        "queries: the library leaves out as many leading tokens as the prompt has on its own, llm2vec the "
        "instruction's tokens inside `instruction text`; where the tokenizer merges the prompt's trailing space "
        "into the text's first token (byte-level BPE), the library also leaves out that token");

  const fs::path stage = out.parent_path() / ("." + out.filename().string() + ".tmp-export");
  fs::remove_all(stage);
  fs::create_directories(stage);
  try {
    write_export(stage, encoder.spec(), opt, encoder, tok_dir, result);
  } catch (...) {
    std::error_code ec;
    fs::remove_all(stage, ec);  // nothing half-written is left behind
    throw;
  }
  if (fs::exists(out)) fs::remove(out);  // empty (checked above)
  fs::rename(stage, out);
  return result;
}

}  // namespace l2v
