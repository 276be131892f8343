#include "train/train_config.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>

#include "data/batches.h"
#include "data/file_io.h"

namespace l2v {

const char* stage_name(Stage s) {
  switch (s) {
    case Stage::kMntp: return "mntp";
    case Stage::kSimcse: return "simcse";
    case Stage::kSupervised: return "supervised";
  }
  return "?";
}

const std::vector<ConfigKey>& train_config_keys() {
  using nlohmann::json;
  static const std::vector<ConfigKey> keys = {
      {"stage", 's', nullptr, "mntp | simcse | supervised (required)"},
      {"model_name_or_path", 's', nullptr, "base checkpoint: HF model directory or llama2.c .bin (required)"},
      {"tokenizer", 's', "", "tokenizer.json, its directory or a llama2.c tokenizer .bin (default: the\nmodel directory)"},
      {"peft_model_name_or_path", 'l', json::array(),
       "adapter directories merged into the base, in order, before this stage's new\nLoRA (llm2vec: the MNTP adapter for SimCSE / supervised)"},
      {"dataset_file_path", 's', nullptr,
       "training shards from `llm2vec prepare`: comma-separated files or globs\n(PREFIX-*.bin): documents for mntp, sentences for simcse, supervised triples for supervised (required)"},
      {"output_dir", 's', nullptr, "where checkpoints, the log and the outputs go (required)"},
      {"backend", 's', "", "cpu | cuda (default: cuda in build/llm2vec_cuda, cpu in build/llm2vec)"},
      {"attention_impl", 's', "", "cuda: simt | mma (tensor cores: bf16, head dim 16, 64 or 128) | cudnn\n(cuDNN SDPA: bf16, builds with cuDNN; left/right key padding only; its own dropout\nRNG, unlike the CPU reference's) (default: the fastest of simt/mma that supports the\ncase, printed at start)"},
      {"torch_dtype", 's', "", "bfloat16 | float32: the backend's precision (see --precision of embed; default:\nbfloat16 on cuda and on CPUs with AMX-BF16, else float32)"},
      {"per_device_train_batch_size", 'i', nullptr,
       "sequences (mntp), sentences (simcse) or triples per micro-batch (default 32 mntp,\n128 simcse, 64 supervised)"},
      {"gradient_accumulation_steps", 'i', 1, "micro-batches per optimizer step (contrastive: each is its own loss)"},
      {"max_steps", 'i', 1000, "optimizer steps (llm2vec: stop_after_n_steps)"},
      {"stop_after_n_steps", 'i', nullptr, "llm2vec's name for max_steps (the smaller wins when both are set)"},
      {"learning_rate", 'f', nullptr, "peak learning rate of AdamW (default 5e-5 mntp, 3e-5 simcse, 2e-4 supervised)"},
      {"warmup_steps", 'i', nullptr,
       "linear warmup from 0 over this many steps (default 0; supervised 300 unless\nwarmup_ratio is given)"},
      {"warmup_ratio", 'f', 0.0, "warmup as a fraction of max_steps (used when warmup_steps is 0)"},
      {"lr_scheduler_type", 's', "linear", "linear (decay to 0 at max_steps after warmup) | constant (after warmup)"},
      {"weight_decay", 'f', 0.0, "AdamW decoupled weight decay"},
      {"adam_beta1", 'f', 0.9, "AdamW beta1"},
      {"adam_beta2", 'f', 0.999, "AdamW beta2"},
      {"adam_epsilon", 'f', 1e-8, "AdamW epsilon"},
      {"max_grad_norm", 'f', 1.0, "clip the global gradient norm to this (0: no clipping)"},
      {"logging_steps", 'i', 10, "print a progress line every N steps (the JSONL log has every step)"},
      {"save_steps", 'i', 200, "write a checkpoint every N steps (and always at the end; 0: only at the end)"},
      {"save_total_limit", 'i', 2, "keep the newest N checkpoints"},
      {"seed", 'i', 42, "seeds LoRA init, data order, masking and dropout"},
      {"bidirectional", 'b', true, "true: bidirectional attention (LLM2Vec); false: causal (the Uni ablation)"},
      {"gradient_checkpointing", 'b', true, "recompute each layer in the backward instead of storing activations"},
      {"recompute_layers", 'i', -1, "recompute the first N layers in the backward and store the others' activations\n(-1: every layer with gradient_checkpointing, none without; or the planner's choice\nwith gpu_memory_gb)"},
      {"cuda_graphs", 'b', true, "cuda: queue each micro-batch's and each optimizer step's kernels as one CUDA graph\n(captured, then launched; one process only: not under mpirun) instead of launching\nthem one by one (false)"},
      {"gpu_memory_gb", 'f', 0.0, "plan the step to fit this many GB (model/memory_plan.h): the least recomputation\nthat fits, or a refusal before training when nothing fits (0: no plan)"},
      {"lora_r", 'i', 16, "LoRA rank of this stage's new adapter"},
      {"lora_alpha", 'f', nullptr, "LoRA alpha (default 2 * lora_r, as llm2vec)"},
      {"lora_dropout", 'f', 0.05, "dropout on the LoRA input (llm2vec's default)"},
      {"lora_target_modules", 'l', "all",
       "all, or a list of q_proj k_proj v_proj o_proj gate_proj up_proj down_proj"},
      {"max_seq_length", 'i', nullptr, "mntp: block length (default 512); simcse: truncation (128); supervised: 512"},
      {"mlm_probability", 'f', 0.2, "mntp: probability that a token is masked"},
      {"data_collator_type", 's', "default", "mntp: default (80% mask / 10% random / 10% kept) | all_mask"},
      {"mask_token_type", 's', "blank", "mntp: blank (the token \"_\") | eos | a token string of the vocabulary"},
      {"simcse_dropout", 'f', 0.3, "simcse: attention-probability dropout that makes the two views differ"},
      {"attention_dropout", 'f', 0.0, "mntp / supervised: attention-probability dropout"},
      {"pooling_mode", 's', "mean", "mean | weighted_mean | eos_token | last_token | bos_token | latent_attention"},
      {"latent_num_latents", 'i', 512, "latent_attention: number of latents r (NV-Embed: 512)"},
      {"latent_heads", 'i', 8, "latent_attention: cross-attention heads (NV-Embed: 8)"},
      {"latent_dim_head", 'i', 0, "latent_attention: per-head dimension (0: the hidden size, as NV-Embed)"},
      {"loss_scale", 'f', nullptr, "contrastive: cosine similarity multiplier (default 20 simcse, 50 supervised)"},
      {"in_batch_negatives", 'b', true, "supervised: false scores each query against its own positive and hard\nnegative only (NV-Embed's second stage)"},
      {"hard_negatives", 'b', true, "supervised: use the triples' hard negatives"},
      {"gather_negatives", 'b', true, "contrastive, under mpirun: score each query against every rank's texts (the\nglobal batch, as llm2vec's all-gather); false: against its own rank's only (the ablation)"},
      {"embedding_chunk_size", 'i', 0, "contrastive: embed each group in chunks of N texts and recompute them for the\nbackward (memory of one chunk, same result); 0: a whole group at once"},
      {"use_instructions", 'b', true, "supervised: false removes the instruction tokens from the queries"},
      {"skip_instruction", 'b', true, "supervised: exclude instruction tokens from pooling (llm2vec's default)"},
      {"padding_side", 's', "left", "left (llm2vec) | right"},
      {"save_merged_model", 'b', true, "also write <output_dir>/merged: the base with every adapter merged (F32)"},
      {"adapter_layout", 's', "llm2vec", "tensor names of the exported adapter: llm2vec (PEFT on the inner model, what\nllm2vec loads) | causal_lm (PEFT on AutoModelForCausalLM)"},
      {"resume_from_checkpoint", 's', "", "latest (the newest checkpoint in output_dir) or a checkpoint directory"},
      {"overwrite_output_dir", 'b', false, "start over even if output_dir holds checkpoints"},
  };
  return keys;
}

const std::vector<std::string>& ignored_llm2vec_keys() {
  static const std::vector<std::string> keys = {
      "do_train", "do_eval", "per_device_eval_batch_size", "evaluation_strategy", "eval_steps", "remove_unused_columns",
      "disable_tqdm", "save_only_model", "attn_implementation", "dataset_name", "dataset_config_name",
      "overwrite_cache", "preprocessing_num_workers", "report_to", "logging_dir", "run_name", "torch_compile",
      "num_train_epochs"};
  return keys;
}

namespace {

const ConfigKey* find_key(const std::string& name) {
  for (const ConfigKey& k : train_config_keys())
    if (k.name == name) return &k;
  return nullptr;
}

// Checks (and normalises) a JSON value for a key's type.
nlohmann::json typed(const ConfigKey& k, const nlohmann::json& v, const std::string& where) {
  const std::string what = where + ": '" + k.name + "' ";
  switch (k.type) {
    case 'i':
      if (v.is_number_integer()) return v;
      if (v.is_number_float() && std::floor(v.get<double>()) == v.get<double>()) return (int64_t)v.get<double>();
      throw std::runtime_error(what + "must be an integer, got " + v.dump());
    case 'f':
      if (v.is_number() && std::isfinite(v.get<double>())) return v.get<double>();
      throw std::runtime_error(what + "must be a number, got " + v.dump());
    case 'b':
      if (v.is_boolean()) return v;
      throw std::runtime_error(what + "must be true or false, got " + v.dump());
    case 's':
      if (v.is_string()) return v;
      throw std::runtime_error(what + "must be a string, got " + v.dump());
    case 'l':
      if (v.is_string()) return nlohmann::json::array({v});
      if (v.is_array()) {
        for (const auto& e : v)
          if (!e.is_string()) throw std::runtime_error(what + "must be a string or a list of strings, got " + v.dump());
        return v;
      }
      throw std::runtime_error(what + "must be a string or a list of strings, got " + v.dump());
  }
  return v;
}

// A command-line value as JSON of the key's type ("3" → 3, "true" → true, "a,b" → ["a", "b"]).
nlohmann::json from_text(const ConfigKey& k, const std::string& text) {
  const std::string what = "--" + k.name + " " + text;
  try {
    size_t used = 0;
    switch (k.type) {
      case 'i': {
        long long x = std::stoll(text, &used);
        if (used != text.size()) break;
        return x;
      }
      case 'f': {
        double x = std::stod(text, &used);
        if (used != text.size() || !std::isfinite(x)) break;  // nan / inf: refused, never echoed as null
        return x;
      }
      case 'b':
        if (text == "true" || text == "1") return true;
        if (text == "false" || text == "0") return false;
        break;
      case 's': return text;
      case 'l': {
        nlohmann::json list = nlohmann::json::array();
        size_t start = 0;
        while (start <= text.size()) {
          size_t comma = text.find(',', start);
          if (comma == std::string::npos) comma = text.size();
          if (comma > start) list.push_back(text.substr(start, comma - start));
          start = comma + 1;
        }
        return list;
      }
    }
  } catch (const std::exception&) {
  }
  throw std::runtime_error(what + ": not a valid " +
                           (k.type == 'i' ? "integer" : k.type == 'f' ? "finite number" : "true/false"));
}

}  // namespace

TrainConfig load_train_config(const std::string& config_path,
                              const std::vector<std::pair<std::string, std::string>>& overrides,
                              std::vector<std::string>* notes) {
  nlohmann::json j = nlohmann::json::object();
  if (!config_path.empty()) {
    const nlohmann::json file = read_json_file(config_path, "the config file");
    if (!file.is_object()) throw std::runtime_error(config_path + ": the config must be a JSON object");
    for (auto it = file.begin(); it != file.end(); ++it) {
      const ConfigKey* k = find_key(it.key());
      if (!k) {
        bool ignored = false;
        for (const std::string& name : ignored_llm2vec_keys()) ignored |= name == it.key();
        if (!ignored) throw std::runtime_error(config_path + ": unknown key '" + it.key() + "' (llm2vec train --help lists the keys)");
        if (notes) notes->push_back(config_path + ": '" + it.key() + "' has no effect here (ignored)");
        continue;
      }
      j[k->name] = typed(*k, it.value(), config_path);
    }
  }
  for (const auto& [name, text] : overrides) {
    const ConfigKey* k = find_key(name);
    if (!k) throw std::runtime_error("unknown option --" + name);
    j[name] = from_text(*k, text);
  }
  const std::string where = config_path.empty() ? "the command line" : config_path;
  auto has = [&](const char* key) { return j.contains(key); };
  const bool warmup_ratio_given = has("warmup_ratio");
  for (const ConfigKey& k : train_config_keys())
    if (!has(k.name.c_str()) && !k.fallback.is_null()) j[k.name] = typed(k, k.fallback, "default");
  for (const char* key : {"stage", "model_name_or_path", "dataset_file_path", "output_dir"})
    if (!has(key)) throw std::runtime_error(where + ": missing required key '" + key + "'");
  // The stage-dependent defaults (see train_config.h), resolved here so that a resume compares values.
  if (j.at("stage").is_string()) {
    const std::string s = j.at("stage").get<std::string>();
    const int i = s == "simcse" ? 1 : s == "supervised" ? 2 : 0;
    const nlohmann::json by_stage[][2] = {{"per_device_train_batch_size", {32, 128, 64}},
                                          {"learning_rate", {5e-5, 3e-5, 2e-4}},
                                          {"max_seq_length", {512, 128, 512}},
                                          {"loss_scale", {20.0, 20.0, 50.0}},
                                          {"warmup_steps", {0, 0, warmup_ratio_given ? 0 : 300}}};
    for (const auto& [key, values] : by_stage)
      if (!has(key.get<std::string>().c_str())) j[key.get<std::string>()] = values[i];
  }

  TrainConfig c;
  auto range_error = [&](const std::string& key, const std::string& rule) {
    return std::runtime_error(where + ": '" + key + "' = " + j.at(key).dump() + " " + rule);
  };
  auto positive = [&](const char* key) {
    const int64_t v = j.at(key).get<int64_t>();
    if (v < 1 || v > (1 << 30)) throw range_error(key, "must be a positive integer");
    return (int)v;
  };
  auto non_negative = [&](const char* key) {
    const int64_t v = j.at(key).get<int64_t>();
    if (v < 0 || v > (1 << 30)) throw range_error(key, "must be >= 0");
    return (int)v;
  };
  auto probability = [&](const char* key) {
    const double v = j.at(key).get<double>();
    if (!(v >= 0.0 && v < 1.0)) throw range_error(key, "must be in [0, 1)");
    return (float)v;
  };
  auto number = [&](const char* key) { return j.at(key).get<double>(); };
  auto str = [&](const char* key) { return j.at(key).get<std::string>(); };
  // A value parsed by the module that owns its names: that module's message, with the file and key.
  auto parsed = [&](const char* key, auto parse) {
    try {
      return parse(str(key));
    } catch (const std::exception& e) {  // runtime_error or invalid_argument, as the module chose
      throw std::runtime_error(where + ": '" + key + "': " + e.what());
    }
  };

  const std::string stage = str("stage");
  if (stage == "mntp") c.stage = Stage::kMntp;
  else if (stage == "simcse") c.stage = Stage::kSimcse;
  else if (stage == "supervised") c.stage = Stage::kSupervised;
  else throw range_error("stage", "must be mntp, simcse or supervised");
  c.model_name_or_path = str("model_name_or_path");
  c.tokenizer = str("tokenizer");
  if (c.tokenizer.empty()) c.tokenizer = c.model_name_or_path;
  c.peft_model_name_or_path = j.at("peft_model_name_or_path").get<std::vector<std::string>>();
  c.dataset_file_path = str("dataset_file_path");
  c.output_dir = str("output_dir");
  c.backend = str("backend");
  if (!c.backend.empty() && c.backend != "cpu" && c.backend != "cuda") throw range_error("backend", "must be cpu or cuda");
  c.attention_impl = str("attention_impl");
  if (!c.attention_impl.empty() && c.attention_impl != "simt" && c.attention_impl != "mma" && c.attention_impl != "cudnn")
    throw range_error("attention_impl", "must be simt, mma or cudnn");
  const std::string dtype = str("torch_dtype");
  if (dtype.empty()) c.precision = "";  // the backend's default
  else if (dtype == "bfloat16") c.precision = "bf16";
  else if (dtype == "float32") c.precision = "fp32";
  else throw range_error("torch_dtype", "must be bfloat16 or float32");
  c.batch_size = positive("per_device_train_batch_size");
  c.gradient_accumulation_steps = positive("gradient_accumulation_steps");
  c.max_steps = positive("max_steps");
  if (has("stop_after_n_steps")) c.max_steps = std::min(c.max_steps, positive("stop_after_n_steps"));
  c.learning_rate = number("learning_rate");
  if (!(c.learning_rate >= 0.0)) throw range_error("learning_rate", "must be >= 0");
  c.warmup_steps = non_negative("warmup_steps");
  c.warmup_ratio = number("warmup_ratio");
  if (!(c.warmup_ratio >= 0.0 && c.warmup_ratio <= 1.0)) throw range_error("warmup_ratio", "must be in [0, 1]");
  if (c.warmup_steps == 0) c.warmup_steps = (int)std::ceil(c.warmup_ratio * c.max_steps);  // HF's rule
  const std::string sched = str("lr_scheduler_type");
  if (sched != "linear" && sched != "constant") throw range_error("lr_scheduler_type", "must be linear or constant");
  c.linear_decay = sched == "linear";
  c.weight_decay = (float)number("weight_decay");
  if (!(c.weight_decay >= 0)) throw range_error("weight_decay", "must be >= 0");
  c.adam_beta1 = probability("adam_beta1");
  c.adam_beta2 = probability("adam_beta2");
  c.adam_epsilon = (float)number("adam_epsilon");
  if (!(c.adam_epsilon > 0)) throw range_error("adam_epsilon", "must be > 0");
  c.max_grad_norm = (float)number("max_grad_norm");
  if (!(c.max_grad_norm >= 0)) throw range_error("max_grad_norm", "must be >= 0 (0: no clipping)");
  c.logging_steps = positive("logging_steps");
  c.save_steps = non_negative("save_steps");
  c.save_total_limit = positive("save_total_limit");
  c.seed = (uint64_t)j.at("seed").get<int64_t>();
  c.bidirectional = j.at("bidirectional").get<bool>();
  c.gradient_checkpointing = j.at("gradient_checkpointing").get<bool>();
  c.recompute_layers = j.at("recompute_layers").get<int>();
  if (c.recompute_layers < -1) throw range_error("recompute_layers", "must be >= -1 (-1: automatic)");
  c.gpu_memory_gb = number("gpu_memory_gb");
  c.cuda_graphs = j.at("cuda_graphs").get<bool>();
  if (!(c.gpu_memory_gb >= 0)) throw range_error("gpu_memory_gb", "must be >= 0 (0: no plan)");
  c.lora.r = positive("lora_r");
  if (!has("lora_alpha")) j["lora_alpha"] = 2.0 * c.lora.r;  // resolved here so resume compares the value
  c.lora.alpha = (float)number("lora_alpha");
  if (!(c.lora.alpha > 0)) throw range_error("lora_alpha", "must be > 0");
  c.lora.dropout = probability("lora_dropout");
  const std::vector<std::string> targets = j.at("lora_target_modules").get<std::vector<std::string>>();
  if (targets.size() == 1 && targets[0] == "all") {
    c.lora.targets.fill(true);
  } else {
    c.lora.targets.fill(false);
    for (const std::string& t : targets) {
      int id;
      if (!parse_linear_name(t, &id)) throw range_error("lora_target_modules", "names an unknown module '" + t + "'");
      c.lora.targets[id] = true;
    }
  }
  c.max_seq_length = positive("max_seq_length");
  // MNTP predicts token i from position i-1: a block of one token has nothing to predict.
  if (c.stage == Stage::kMntp && c.max_seq_length < 2) throw range_error("max_seq_length", "must be >= 2 for mntp");
  c.mlm_probability = probability("mlm_probability");
  if (c.mlm_probability <= 0.0f) throw range_error("mlm_probability", "must be > 0");
  c.data_collator_type = str("data_collator_type");
  parsed("data_collator_type", parse_mntp_collator);
  c.mask_token_type = str("mask_token_type");
  c.attention_dropout = c.stage == Stage::kSimcse ? probability("simcse_dropout") : probability("attention_dropout");
  c.pooling = parsed("pooling_mode", parse_pooling_mode);
  c.latent.num_latents = positive("latent_num_latents");
  c.latent.heads = positive("latent_heads");
  c.latent.dim_head = non_negative("latent_dim_head");
  c.loss_scale = (float)number("loss_scale");
  if (!(c.loss_scale > 0)) throw range_error("loss_scale", "must be > 0");
  c.in_batch_negatives = j.at("in_batch_negatives").get<bool>();
  c.hard_negatives = j.at("hard_negatives").get<bool>();
  c.gather_negatives = j.at("gather_negatives").get<bool>();
  c.embedding_chunk_size = non_negative("embedding_chunk_size");
  c.use_instructions = j.at("use_instructions").get<bool>();
  c.skip_instruction = j.at("skip_instruction").get<bool>();
  if (c.stage == Stage::kSupervised && !c.in_batch_negatives && !c.hard_negatives)
    throw std::runtime_error(where + ": in_batch_negatives=false needs hard_negatives=true (no negative otherwise)");
  // (A contrastive batch with one candidate per query is refused by the trainer, which knows the number
  // of ranks whose rows are gathered.)
  c.padding_side = str("padding_side");
  if (c.padding_side != "left" && c.padding_side != "right") throw range_error("padding_side", "must be left or right");
  c.save_merged_model = j.at("save_merged_model").get<bool>();
  c.adapter_layout = str("adapter_layout");
  if (c.adapter_layout != "llm2vec" && c.adapter_layout != "causal_lm")
    throw range_error("adapter_layout", "must be llm2vec or causal_lm");
  c.resume_from_checkpoint = str("resume_from_checkpoint");
  c.overwrite_output_dir = j.at("overwrite_output_dir").get<bool>();
  if (!c.resume_from_checkpoint.empty() && c.overwrite_output_dir)
    throw std::runtime_error(where + ": resume_from_checkpoint and overwrite_output_dir exclude each other");
  c.resolved = j;
  return c;
}

double learning_rate_at(const TrainConfig& c, int step) {
  // The factor first, then the product, in double, as LambdaLR's base_lr * lambda(step).
  double factor = 1.0;
  if (step < c.warmup_steps) factor = (double)step / (double)std::max(1, c.warmup_steps);
  else if (c.linear_decay)
    factor = std::max(0.0, (double)(c.max_steps - step) / (double)std::max(1, c.max_steps - c.warmup_steps));
  return c.learning_rate * factor;
}

}  // namespace l2v
