// The binary's help is true (build/llm2vec, or the build named by L2V_BIN, run as a child process):
// `--help` lists every command and exits 0; `<command> --help` prints that command's usage and exits 0
// for every command; the `eval` group without a task lists its tasks (`eval --help`: on stdout, status
// 0; `eval` alone: an error, status 2), and an unknown command or task is status 2 with the usage.
// Bugs these catch: a command missing from the table or its help, `llm2vec eval --help` answering
// "unknown command eval" (as it did), a help request reported as an error.
#include <gtest/gtest.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <string>
#include <utility>

#include <nlohmann/json.hpp>

#include "test/run_command.h"
#include "test/temp_dir.h"

namespace {

const std::string kBin = std::getenv("L2V_BIN") ? std::getenv("L2V_BIN") : "build/llm2vec";

// Runs the binary with `args` (a shell word list); returns (exit status, stdout), stderr to stdout
// when `merge` is set, else discarded.
std::pair<int, std::string> run(const std::string& args, bool merge) {
  const l2v::test::CommandResult r =
      l2v::test::run_command(kBin + " " + args + (merge ? " 2>&1" : " 2>/dev/null"));
  return {r.status, r.output};
}

bool has(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

const char* const kCommands[] = {"demo",     "generate",        "convert",        "prepare",
                                 "train",    "plan",            "bench-step",     "embed",
                                 "export",   "eval sts",        "eval clustering", "eval retrieval",
                                 "eval classification"};

TEST(Cli, HelpListsEveryCommandAndEachCommandHasItsOwn) {
  const auto [rc, out] = run("--help", false);
  EXPECT_EQ(0, rc);
  for (const std::string name : kCommands) {
    EXPECT_TRUE(has(out, "  " + name + " ")) << name << " missing from --help:\n" << out;
    const auto [c_rc, c_out] = run(name + " --help", false);
    EXPECT_EQ(0, c_rc) << name;
    EXPECT_TRUE(has(c_out, "usage: llm2vec " + name + " [options]")) << c_out;
  }
}

TEST(Cli, TheEvalGroupListsItsTasks) {
  const auto [rc, out] = run("eval --help", false);
  EXPECT_EQ(0, rc) << out;
  EXPECT_TRUE(has(out, "usage: llm2vec eval <task>")) << out;
  EXPECT_TRUE(has(out, "  sts ") && has(out, "  clustering ") && has(out, "  retrieval ") &&
              has(out, "  classification "))
      << out;
  const auto [bare_rc, bare] = run("eval", true);
  EXPECT_EQ(2, bare_rc);
  EXPECT_TRUE(has(bare, "missing task") && has(bare, "  sts ")) << bare;
}

// `llm2vec export`: the sentence-transformers directory from the command line, its notes of where the
// library will differ on stderr, and usage errors for another format or a missing --out.
TEST(Cli, ExportWritesASentenceTransformersDirectory) {
  l2v::test::TempDir dir("cli_export");
  const std::string base = "test/fixtures/st_export/base", out = dir / "st";
  const auto [rc, text] = run("export --format sentence-transformers --model " + base + " --out " + out +
                                  " --causal --pooling_mode last_token --query_instruction 'Find the passage:'",
                              true);
  EXPECT_EQ(0, rc) << text;
  EXPECT_TRUE(has(text, "wrote " + out + ": a sentence-transformers model (last_token pooling, causal attention, "
                                         "max_seq_length 256, query prompt)"))
      << text;
  EXPECT_TRUE(has(text, "note: the library's embeddings will differ from embed's: queries:")) << text;
  for (const char* f : {"modules.json", "1_Pooling/config.json", "config_sentence_transformers.json", "README.md",
                        "model.safetensors", "tokenizer.json"})
    EXPECT_TRUE(std::filesystem::exists(out + "/" + f)) << f;
  const auto [fmt_rc, fmt] = run("export --format onnx --model " + base + " --out " + out + "2", true);
  EXPECT_EQ(2, fmt_rc) << fmt;
  EXPECT_TRUE(has(fmt, "the one format is sentence-transformers")) << fmt;
  const auto [out_rc, no_out] = run("export --format sentence-transformers --model " + base, true);
  EXPECT_EQ(2, out_rc) << no_out;
}

TEST(Cli, UnknownCommandsAndTasksAreUsageErrors) {
  for (const char* args : {"", "nosuch", "eval nosuch"}) {
    const auto [rc, out] = run(args, true);
    EXPECT_EQ(2, rc) << "'" << args << "': " << out;
    EXPECT_TRUE(has(out, "usage: llm2vec <command>")) << out;
  }
}

}  // namespace

namespace {

// `llm2vec plan`: a table whose last line is the total against the budget; status 1 when the step
// cannot fit even with every layer recomputed.
TEST(Cli, PlanPrintsTheTotalLastAndFailsWhenNothingFits) {
  const std::string args = "plan --model_name_or_path assets/configs/Mistral-7B-v0.1 --stage mntp "
                           "--per_device_train_batch_size 32 --max_seq_length 512";
  const auto [rc, out] = run(args, true);
  EXPECT_EQ(0, rc) << out;
  const std::string last = out.substr(out.rfind("total: "));
  EXPECT_EQ(0u, last.find("total: ")) << out;
  EXPECT_NE(std::string::npos, last.find(" GB of 80.00 GB\n")) << out;
  EXPECT_NE(std::string::npos, out.find("recomputation: ")) << out;
  const auto [small_rc, small] = run(args + " --gpu_memory_gb 10", true);
  EXPECT_EQ(1, small_rc) << small;
  EXPECT_NE(std::string::npos, small.find("does not fit: the step needs")) << small;
}

}  // namespace

namespace {

// `llm2vec bench-step` on a tiny config.json (no weights, tokenizer or data): a first step, then
// --max_steps timed ones, and the summary with the model FLOPs of the step, which must be the plan's for
// the same options; another stage than MNTP is refused with a message.
TEST(Cli, BenchStepTimesMntpStepsOfAConfigWithRandomWeights) {
  l2v::test::TempDir dir("bench_step");
  {
    std::ofstream f(dir / "config.json");
    f << R"({"model_type": "llama", "vocab_size": 64, "hidden_size": 32, "intermediate_size": 48,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 2,
             "max_position_embeddings": 64, "rms_norm_eps": 1e-5, "tie_word_embeddings": false})";
  }
  const std::string opts = " --model_name_or_path " + dir.path.string() +
                           " --per_device_train_batch_size 2 --max_seq_length 16 --lora_r 4";
  const auto [rc, out] = run("bench-step" + opts + " --stage mntp --max_steps 2", true);
  ASSERT_EQ(0, rc) << out;
  EXPECT_TRUE(has(out, "with random weights, MNTP 2 x 16 tokens")) << out;
  EXPECT_TRUE(has(out, "step 0 (first, not timed): ") && has(out, "step 1: ") && has(out, "step 2: ")) << out;
  EXPECT_FALSE(has(out, "step 3: ")) << out;
  EXPECT_TRUE(has(out, "ms/step over 2 steps") && has(out, " tokens/s, ")) << out;
  // The same FLOPs as the plan's table (both %.3g).
  const auto [plan_rc, plan] = run("plan" + opts + " --stage mntp", true);
  ASSERT_EQ(0, plan_rc) << plan;
  const size_t at = plan.find("model FLOPs per step: ") + 22;
  const std::string flops = plan.substr(at, plan.find(' ', at) - at);
  EXPECT_TRUE(has(out, "; " + flops + " model FLOPs per step")) << flops << "\n" << out;
  const auto [simcse_rc, simcse] = run("bench-step" + opts + " --stage simcse", true);
  EXPECT_EQ(1, simcse_rc) << simcse;
  EXPECT_TRUE(has(simcse, "bench-step measures MNTP steps; --stage simcse is not supported")) << simcse;
}

}  // namespace

namespace {

// `llm2vec eval clustering` end to end on the bundled stories260K model: the summary line, the JSON
// (V-measure in [0, 1] and equal to the printed one, the counts), and a bad line named by file:line.
TEST(Cli, EvalClusteringPrintsAndWritesTheVMeasure) {
  l2v::test::TempDir dir("cli_clustering");
  const std::string data = dir / "texts.jsonl", json = dir / "result.json";
  {
    std::ofstream f(data);
    const char* animals[] = {"The cat sat on the mat.", "The dog ran after the ball.", "A little bird sang a song.",
                             "The cat ate the fish."};
    const char* weather[] = {"The sun was hot and bright.", "It rained all day.", "The wind was cold.",
                             "Snow fell on the hill."};
    for (const char* t : animals) f << "{\"text\": \"" << t << "\", \"label\": \"animals\"}\n";
    for (const char* t : weather) f << "{\"text\": \"" << t << "\", \"label\": \"weather\"}\n";
  }
  const std::string model = " --model assets/stories260K/stories260K.bin --tokenizer assets/stories260K/tok512.bin";
  const auto [rc, out] = run("eval clustering --quiet --data " + data + model + " --json-out " + json, true);
  ASSERT_EQ(0, rc) << out;
  EXPECT_TRUE(has(out, "8 texts, 2 labels, 2 clusters: V-measure ")) << out;
  EXPECT_TRUE(has(out, "max_length ")) << out;
  std::ifstream in(json);
  const nlohmann::json j = nlohmann::json::parse(in);
  const double v = j.at("v_measure").get<double>();
  EXPECT_GE(v, 0.0);
  EXPECT_LE(v, 1.0);
  char printed[32];
  std::snprintf(printed, sizeof printed, "V-measure %.4f", v);
  EXPECT_TRUE(has(out, printed)) << out;
  EXPECT_EQ(j.at("texts").get<int>(), 8);
  EXPECT_EQ(j.at("labels").get<int>(), 2);
  EXPECT_EQ(j.at("clusters").get<int>(), 2);
  std::ofstream(data, std::ios::app) << "{\"text\": \"no label\"}\n";
  const auto [bad_rc, bad] = run("eval clustering --quiet --data " + data + model, true);
  EXPECT_NE(0, bad_rc);
  EXPECT_TRUE(has(bad, "texts.jsonl:9: missing \"label\"")) << bad;
}

}  // namespace

namespace {

// `llm2vec eval retrieval` end to end on a four-document BEIR collection: the summary line and the JSON
// keys; a query judged in qrels but absent from queries.jsonl is named.
TEST(Cli, EvalRetrievalScoresABeirCollection) {
  l2v::test::TempDir dir("cli_retrieval");
  const std::string data = dir / "beir", json = dir / "result.json";
  std::filesystem::create_directories(data + "/qrels");
  std::ofstream(data + "/corpus.jsonl") << "{\"_id\": \"d1\", \"title\": \"Cats\", \"text\": \"The cat sat on the mat.\"}\n"
                                           "{\"_id\": \"d2\", \"text\": \"The sun was hot and bright.\"}\n"
                                           "{\"_id\": \"d3\", \"text\": \"The dog ran after the ball.\"}\n"
                                           "{\"_id\": \"d4\", \"text\": \"Tom had a red toy car.\"}\n";
  std::ofstream(data + "/queries.jsonl") << "{\"_id\": \"q1\", \"text\": \"a cat on a mat\"}\n"
                                            "{\"_id\": \"q2\", \"text\": \"a hot sun\"}\n"
                                            "{\"_id\": \"q3\", \"text\": \"not judged\"}\n";
  std::ofstream(data + "/qrels/test.tsv") << "query-id\tcorpus-id\tscore\nq1\td1\t1\nq2\td2\t2\n";
  const std::string base = " --model assets/stories260K/stories260K.bin --tokenizer assets/stories260K/tok512.bin";
  const std::string model = base + " --precision fp32";
  const auto [rc, out] = run("eval retrieval --quiet --data " + data + model + " --json-out " + json, true);
  ASSERT_EQ(0, rc) << out;
  EXPECT_TRUE(has(out, "(test): 2 queries, 4 documents: nDCG@10 ")) << out;
  std::ifstream in(json);
  const nlohmann::json j = nlohmann::json::parse(in);
  for (const char* key : {"ndcg@10", "mrr@10", "recall@100", "map@100"}) {
    EXPECT_GE(j.at(key).get<double>(), 0.0) << key;
    EXPECT_LE(j.at(key).get<double>(), 1.0) << key;
  }
  EXPECT_EQ(j.at("recall@100").get<double>(), 1.0);  // 4 documents: every relevant one is in the top 100
  // The corpus's embeddings were cached: a second run reads them and scores the same; another corpus
  // text misses the cache; --no-cache neither reads nor writes it.
  const auto [again_rc, again] = run("eval retrieval --data " + data + model, true);
  EXPECT_EQ(0, again_rc) << again;
  EXPECT_TRUE(has(again, "corpus embeddings from the cache: " + data + "/llm2vec_cache/corpus-")) << again;
  EXPECT_TRUE(has(again, out.substr(out.find("(test): ")))) << "the cached run scored otherwise:\n" << out << again;
  // The CPU's bf16 GEMMs embed otherwise: their run neither reads the fp32 cache nor fails; a precision the
  // CPU backend lacks is a usage error naming the choices.
  const auto [bf16_rc, bf16] = run("eval retrieval --precision bf16 --data " + data + base, true);
  EXPECT_EQ(0, bf16_rc) << bf16;
  EXPECT_TRUE(has(bf16, "note: cpu backend in bf16") && has(bf16, "embedding 4 documents") &&
              !has(bf16, "from the cache"))
      << bf16;
  const auto [fp16_rc, fp16] = run("eval retrieval --precision fp16 --data " + data + base, true);
  EXPECT_EQ(2, fp16_rc) << fp16;
  EXPECT_TRUE(has(fp16, "--precision for the cpu backend: fp32 or bf16, got 'fp16'")) << fp16;
  std::ofstream(data + "/corpus.jsonl", std::ios::app) << "{\"_id\": \"d5\", \"text\": \"A new text.\"}\n";
  const auto [changed_rc, changed] = run("eval retrieval --data " + data + model, true);
  EXPECT_EQ(0, changed_rc) << changed;
  EXPECT_TRUE(has(changed, "embedding 5 documents") && !has(changed, "from the cache")) << changed;
  std::filesystem::remove_all(data + "/llm2vec_cache");
  const auto [none_rc, none] = run("eval retrieval --no-cache --data " + data + model, true);
  EXPECT_EQ(0, none_rc) << none;
  EXPECT_FALSE(std::filesystem::exists(data + "/llm2vec_cache")) << none;
  std::ofstream(data + "/qrels/test.tsv", std::ios::app) << "q9\td3\t1\n";
  const auto [bad_rc, bad] = run("eval retrieval --quiet --data " + data + model, true);
  EXPECT_NE(0, bad_rc);
  EXPECT_TRUE(has(bad, "query q9 is not in queries.jsonl")) << bad;
}

}  // namespace

namespace {

// `llm2vec eval classification` end to end: two labels, 3 training texts each sampled 2 at a time in 3
// experiments; the summary line, the JSON; a test label absent from the training texts is named.
TEST(Cli, EvalClassificationPrintsAndWritesAccuracyAndF1) {
  l2v::test::TempDir dir("cli_classification");
  const std::string train = dir / "train.jsonl", test = dir / "test.jsonl", json = dir / "result.json";
  {
    std::ofstream t(train), e(test);
    for (const char* s : {"The cat sat on the mat.", "The dog ran after the ball.", "A little bird sang a song."})
      t << "{\"text\": \"" << s << "\", \"label\": \"animals\"}\n";
    for (const char* s : {"The sun was hot and bright.", "It rained all day.", "The wind was cold."})
      t << "{\"text\": \"" << s << "\", \"label\": \"weather\"}\n";
    e << "{\"text\": \"The cat ate the fish.\", \"label\": \"animals\"}\n"
         "{\"text\": \"Snow fell on the hill.\", \"label\": \"weather\"}\n";
  }
  const std::string model = " --model assets/stories260K/stories260K.bin --tokenizer assets/stories260K/tok512.bin";
  const std::string args = "eval classification --quiet --train " + train + " --test " + test + model +
                           " --samples_per_label 2 --n_experiments 3";
  const auto [rc, out] = run(args + " --json-out " + json, true);
  ASSERT_EQ(0, rc) << out;
  EXPECT_TRUE(has(out, "2 test texts, 2 labels, 3 experiments of 2 training texts per label: accuracy ")) << out;
  std::ifstream in(json);
  const nlohmann::json j = nlohmann::json::parse(in);
  for (const char* key : {"accuracy", "f1"}) {
    EXPECT_GE(j.at(key).get<double>(), 0.0) << key;
    EXPECT_LE(j.at(key).get<double>(), 1.0) << key;
  }
  EXPECT_EQ(j.at("n_experiments").get<int>(), 3);
  std::ofstream(test, std::ios::app) << "{\"text\": \"A red car.\", \"label\": \"toys\"}\n";
  const auto [bad_rc, bad] = run(args, true);
  EXPECT_NE(0, bad_rc);
  EXPECT_TRUE(has(bad, "label 'toys' is not in")) << bad;
}

}  // namespace

