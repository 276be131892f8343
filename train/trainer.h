// `llm2vec train`: one stage of the LLM2Vec recipe (MNTP, SimCSE or supervised contrastive) from a
// TrainConfig (train/train_config.h).
//
// A stage loads the base model, merges the previous stages' adapters into it (peft_model_name_or_path,
// PEFT's merge_and_unload, as llm2vec does), adds a fresh LoRA (plus NV-Embed's latent-attention head
// when pooling_mode is latent_attention) and trains them with AdamW (torch semantics, global-norm
// clipping, Hugging Face's linear warmup/decay schedule) and gradient accumulation.
//
// The contrastive steps pool every group of a batch (SimCSE: the doubled batch; supervised: queries,
// positives, hard negatives), compute the loss over all pooled vectors (gathered across ranks through
// train/comm.h), then run the backward of each group from the loss's gradient w.r.t. its embeddings —
// the last group from the stored activations, the earlier ones after recomputing their forward with the
// same dropout seed (bit-identical activations), so memory holds one group's activations at a time.
//
// Output directory:
//   train_config.json          every key with its resolved value
//   train_log.jsonl            one JSON object per optimizer step (step, loss, lr, grad_norm, tokens, seconds)
//   checkpoint-<step>/         state.safetensors (trainable tensors + AdamW moments) + trainer_state.json;
//                              written into a temporary directory and renamed, then `latest` (a file
//                              naming the newest checkpoint, for people and tools) is replaced atomically;
//                              the oldest beyond save_total_limit are removed. `--resume_from_checkpoint
//                              latest` takes the highest checkpoint-N (each is complete), so a kill between
//                              the rename and `latest` loses nothing. Resume is bit-exact on the CPU backend.
//   adapter_config.json, adapter_model.safetensors   this stage's LoRA as PEFT writes it
//   llm2vec_config.json        pooling_mode, max_length, skip_instruction (what llm2vec's from_pretrained reads)
//   pooling_head.safetensors   latent_attention only: the head under NV-Embed's tensor names
//   llm2vec_run.json           everything `llm2vec embed` needs: base, tokenizer, adapter chain, pooling
//   merged/                    the base with every adapter merged, as a Hugging Face model (save_merged_model)
//   .lock                      flock'ed for the whole run: a second run on the directory is refused
//
// Data parallelism (mpirun -np N; train/comm.h): rank r trains on rows [r·b, (r+1)·b) of every global
// batch of N·b items (data/loader.h), with dropout keyed by the global row (ForwardOptions::row0), the
// MNTP loss normalised by the global batch's label count, and the contrastive losses computed over the
// embeddings gathered from every rank (each rank back-propagating the gradient of its own rows), so
// the summed gradients equal those of one process with per_device_train_batch_size N·b (up to the
// order of fp32 sums). Gradients are summed over the ranks before the optimizer step, which every
// rank then takes identically. Rank 0 alone writes output_dir; every rank checks at start that its
// configuration, inputs and initial weights equal rank 0's. A checkpoint resumes at any world size
// with the same global batch.
//
// Safety of what is there: nothing in output_dir changes until the model, the data (checked against
// its shard manifest), the config and any checkpoint to resume have been read and accepted, so a typo
// or a refused resume destroys nothing. The outputs (adapter ... merged/) exist only for a finished
// run: they are removed when a run starts, written into .export/ at its end and moved into place
// while the file EXPORT_INCOMPLETE is present, which `embed` and adapter loading refuse. A resume
// compares the config except for paths; inputs are compared by content (fingerprints of the merged
// weights, the tokenizer and the shards), and state.safetensors by a checksum kept in trainer_state.json.
#pragma once
#include <functional>
#include <string>

#include "model/backend.h"
#include "train/comm.h"
#include "train/train_config.h"

namespace l2v {

struct TrainHooks {
  // Called after each optimizer step with the number of steps done; returning true stops the run as
  // an interruption (SIGINT/SIGTERM) does: a checkpoint is written and the outputs are not.
  std::function<bool(int steps_done)> stop_after;
  // Called before each output of a finished run is moved into output_dir (with its name, e.g.
  // "adapter_model.safetensors"): fault-injection tests throw here to stop an export midway.
  std::function<void(const std::string& output)> before_output_moved;
  bool progress = true;  // progress lines on stdout
};

struct TrainResult {
  int steps_done = 0;
  bool interrupted = false;
  double last_loss = 0.0;
  std::string last_checkpoint;
};

// Runs the stage on `backend`. Installs SIGINT/SIGTERM/SIGUSR1 handlers for its duration (first
// signal: finish the micro-batch, checkpoint, return interrupted). Throws std::runtime_error with a
// clear message on bad configs, missing files, incompatible data and non-finite losses; checkpoints
// already written are never touched by a failure. `comm` (train/comm.h): this process's rank of a
// data-parallel run; nullptr: a single process.
TrainResult run_training(const TrainConfig& cfg, Backend& backend, const TrainHooks& hooks = {}, Comm* comm = nullptr);

}  // namespace l2v
