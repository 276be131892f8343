// Sentence-similarity data and metric (data/sts.h) and .npy files (data/npy.h): Spearman against
// scipy.stats.spearmanr and rankdata (test/fixtures/sts/spearman.json, scripts/make_sts_fixtures.py) and
// its exact properties; the bundled SICK file and its SemEval-2014 split sizes; both SICK layouts, STS
// TSV files, and errors naming file and line; the SICK supervised-triple rule and its JSONL going through
// `llm2vec prepare --format supervised`; write_npy_f32 byte for byte against numpy.save, read_npy_f32 on
// what numpy writes and refusing what it cannot represent.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <map>
#include <nlohmann/json.hpp>

#include "data/npy.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/sts.h"
#include "data/tokenizer.h"
#include "test/temp_dir.h"
#include "test/test_util.h"

namespace l2v {
namespace {

const std::string kFixtures = "test/fixtures/sts/";

std::string sick_path() {
  if (std::ifstream("assets/sick/SICK.txt")) return "assets/sick/SICK.txt";
  return "../shared/data/sick/SICK.txt";
}

std::string read_bytes(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  EXPECT_TRUE(in) << path;
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

nlohmann::json read_json(const std::string& path) { return nlohmann::json::parse(read_bytes(path)); }

std::string write(const test::TempDir& dir, const std::string& name, const std::string& content) {
  std::string path = dir / name;
  std::ofstream(path, std::ios::binary) << content;
  return path;
}

using test::error_of;

#define EXPECT_CONTAINS(haystack, needle) \
  EXPECT_NE(std::string::npos, std::string(haystack).find(needle)) << "'" << (haystack) << "' lacks '" << (needle) << "'"

// ---------------------------------------------------------------------------------------------------
// Spearman

TEST(Spearman, MatchesScipy) {
  const nlohmann::json fx = read_json(kFixtures + "spearman.json");
  ASSERT_GE(fx["cases"].size(), 8u);
  double worst = 0.0;
  for (const auto& c : fx["cases"]) {
    const std::string name = c["name"];
    const std::vector<double> x = c["x"], y = c["y"];
    const double want = c["rho"];
    // Ranks are sums of small integers and halves: exact.
    EXPECT_EQ(c["rank_x"].get<std::vector<double>>(), average_ranks(x)) << name;
    EXPECT_EQ(c["rank_y"].get<std::vector<double>>(), average_ranks(y)) << name;
    const double got = spearman(x, y);
    EXPECT_NEAR(want, got, 1e-15) << name;
    worst = std::max(worst, std::fabs(got - want));
  }
  std::printf("largest |spearman - scipy| over %zu cases: %.3g\n", fx["cases"].size(), worst);
}

TEST(Spearman, ExactProperties) {
  std::vector<double> x = {0.3, -1.0, 2.5, 7.0, 0.0, 1.25, -3.5, 4.0};
  std::vector<double> up(x.size()), down(x.size()), ex(x.size()), cube(x.size());
  for (size_t i = 0; i < x.size(); ++i) {
    up[i] = 2.0 * x[i] + 1.0;
    down[i] = -x[i];
    ex[i] = std::exp(x[i]);
    cube[i] = x[i] * x[i] * x[i];
  }
  EXPECT_EQ(1.0, spearman(x, up));
  EXPECT_EQ(1.0, spearman(x, ex));
  EXPECT_EQ(-1.0, spearman(x, down));
  EXPECT_EQ(1.0, spearman(x, x));
  // Any strictly increasing transform of either input leaves the ranks, hence the result, unchanged.
  const std::vector<double> y = {1.0, 1.0, 0.5, 3.0, -2.0, 1.0, 0.25, 3.0};
  std::vector<double> ty(y.size());
  for (size_t i = 0; i < y.size(); ++i) ty[i] = std::atan(y[i]) + 10.0;
  const double r = spearman(x, y);
  EXPECT_GT(std::fabs(r), 0.1);
  EXPECT_LT(std::fabs(r), 0.99);
  EXPECT_EQ(r, spearman(ex, ty));
  EXPECT_EQ(r, spearman(cube, y));
  EXPECT_EQ(r, spearman(y, x));       // symmetric
  EXPECT_EQ(-r, spearman(down, y));  // reversing one input flips the sign
  // Ties: a tie in x with a perfectly monotone y is still < 1.
  EXPECT_LT(spearman({1, 2, 2, 3}, {1, 2, 3, 4}), 1.0);
  EXPECT_EQ(1.0, spearman({1, 2, 2, 3}, {5, 6, 6, 7}));
}

TEST(Spearman, RefusesUndefinedInputs) {
  EXPECT_THROW(spearman({1, 2, 3}, {1, 2}), std::invalid_argument);
  EXPECT_THROW(spearman({1}, {1}), std::invalid_argument);
  EXPECT_THROW(spearman({}, {}), std::invalid_argument);
  EXPECT_THROW(spearman({1, 1, 1}, {1, 2, 3}), std::invalid_argument);
  EXPECT_THROW(spearman({1, 2, 3}, {4, 4, 4}), std::invalid_argument);
  EXPECT_THROW(spearman({1, NAN, 3}, {1, 2, 3}), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------------
// SICK and STS files

TEST(Sick, BundledFileHasTheSemEval2014Split) {
  // Measured on assets/sick/SICK.txt with awk (SemEval_set column); they are the SemEval-2014 Task 1
  // sizes: 4,439 train, 495 trial, 4,906 test, 9,840 in all.
  const std::string path = sick_path();
  const auto train = read_sick(path, "TRAIN"), trial = read_sick(path, "TRIAL"), test = read_sick(path, "TEST");
  const auto all = read_sick(path, "ALL");
  EXPECT_EQ(4439u, train.size());
  EXPECT_EQ(495u, trial.size());
  EXPECT_EQ(4906u, test.size());
  EXPECT_EQ(9840u, all.size());
  size_t e = 0, n = 0, c = 0;
  for (const StsPair& p : all) {
    e += p.entailment == "ENTAILMENT";
    n += p.entailment == "NEUTRAL";
    c += p.entailment == "CONTRADICTION";
    ASSERT_GE(p.score, 1.0);
    ASSERT_LE(p.score, 5.0);
  }
  EXPECT_EQ(2821u, e);
  EXPECT_EQ(5595u, n);
  EXPECT_EQ(1424u, c);
  // Pair 1 (line 2) and the last pair (line 9841, no final newline).
  EXPECT_EQ("A group of kids is playing in a yard and an old man is standing in the background", all[0].a);
  EXPECT_EQ("A group of boys in a yard is playing and a man is standing in the background", all[0].b);
  EXPECT_EQ(4.5, all[0].score);
  EXPECT_EQ("NEUTRAL", all[0].entailment);
  EXPECT_EQ("TRAIN", all[0].split);
  for (const StsPair& p : test) ASSERT_EQ("TEST", p.split);
  EXPECT_EQ("TRAIN", all.back().split);
  // The 414 triples of the whole file (counted independently with a Python script over the file).
  EXPECT_EQ(104u, sick_triples(train).size());
  EXPECT_EQ(414u, sick_triples(all).size());
}

TEST(Sick, SemEval2014AllLayoutHasOnlyTheAllSplit) {
  test::TempDir dir("sts");
  const std::string path = write(dir, "semeval.txt",
                                 "pair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\r\n"
                                 "1\tA man runs\tA person runs\t4.2\tENTAILMENT\r\n"
                                 "2\tA cat sleeps\tA man runs\t1.0\tNEUTRAL\r\n");
  auto all = read_sick(path, "ALL");
  ASSERT_EQ(2u, all.size());
  EXPECT_EQ("A person runs", all[0].b);  // '\r' removed
  EXPECT_EQ(4.2, all[0].score);
  EXPECT_EQ("ENTAILMENT", all[0].entailment);
  EXPECT_EQ("", all[0].split);
  EXPECT_EQ("NEUTRAL", all[1].entailment);
  const std::string msg = error_of([&] { read_sick(path, "TEST"); });
  EXPECT_CONTAINS(msg, path);
  EXPECT_CONTAINS(msg, "SemEval_set");
  EXPECT_CONTAINS(msg, "ALL");
  // The real release, when the shared data is there (not bundled): 9,927 pairs.
  const std::string real = "../shared/data/sick/SICK_semeval2014_all.txt";
  if (std::ifstream(real)) {
    EXPECT_EQ(9927u, read_sick(real, "ALL").size());
  }
}

TEST(Sick, ColumnsAreFoundByName) {
  test::TempDir dir("sts");
  const std::string path = write(dir, "cols.txt",
                                 "SemEval_set\trelatedness_score\tsentence_B\textra\tentailment_label\tsentence_A\n"
                                 "TRIAL\t3\tb1\tx\tNEUTRAL\ta1\n"
                                 "\n"
                                 "TEST\t5\tb2\tx\tENTAILMENT\ta2\n");
  auto test = read_sick(path, "TEST");
  ASSERT_EQ(1u, test.size());
  EXPECT_EQ("a2", test[0].a);
  EXPECT_EQ("b2", test[0].b);
  EXPECT_EQ(5.0, test[0].score);
  EXPECT_EQ("ENTAILMENT", test[0].entailment);
  EXPECT_EQ(2u, read_sick(path, "ALL").size());
}

TEST(Sick, ErrorsNameFileAndLine) {
  test::TempDir dir("sts");
  const std::string header = "pair_ID\tsentence_A\tsentence_B\tentailment_label\trelatedness_score\tSemEval_set\n";
  const std::string good = "1\ta\tb\tNEUTRAL\t3.5\tTRAIN\n";
  struct Case {
    std::string name, content, split, expect;
  };
  const std::vector<Case> cases = {
      {"fields", header + good + "2\ta\tb\tNEUTRAL\t3.5\n", "ALL", ":3: expected 6 tab-separated fields"},
      {"score", header + good + good + "3\ta\tb\tNEUTRAL\thigh\tTRAIN\n", "ALL", ":4: relatedness_score 'high' is not a number"},
      {"inf", header + "1\ta\tb\tNEUTRAL\tinf\tTRAIN\n", "ALL", ":2: relatedness_score 'inf' is not finite"},
      {"nan", header + "1\ta\tb\tNEUTRAL\tnan\tTRAIN\n", "TRAIN", ":2: relatedness_score 'nan' is not finite"},
      {"empty_a", header + good + "2\t \tb\tNEUTRAL\t3\tTRAIN\n", "ALL", ":3: empty sentence_A"},
      {"empty_b", header + "1\ta\t\tNEUTRAL\t3\tTRAIN\n", "TEST", ":2: empty sentence_B"},
      {"set", header + "1\ta\tb\tNEUTRAL\t3\tDEV\n", "ALL", ":2: unknown SemEval_set 'DEV'"},
      {"utf8", header + "1\ta\xff\tb\tNEUTRAL\t3\tTRAIN\n", "ALL", ":2: not valid UTF-8"},
      {"column", "pair_ID\tsentence_A\tsentence_B\tentailment_label\tSemEval_set\n", "ALL",
       ":1: header has no column relatedness_score"},
      {"entail", "sentence_A\tsentence_B\trelatedness_score\n", "ALL",
       ":1: header has no column entailment_label or entailment_judgment"},
      {"nopairs", header + good, "TEST", ": no sentence pairs in split TEST"},
      {"header_only", header, "ALL", ": no sentence pairs in split ALL"},
      {"empty", "", "ALL", ": empty file"},
      {"badsplit", header + good, "VALID", ": unknown split 'VALID'"},
  };
  for (const Case& c : cases) {
    const std::string path = write(dir, c.name + ".txt", c.content);
    const std::string msg = error_of([&] { read_sick(path, c.split); });
    EXPECT_CONTAINS(msg, path + c.expect);
  }
  EXPECT_CONTAINS(error_of([&] { read_sick(dir / "absent.txt", "ALL"); }), dir / "absent.txt" + ": cannot open");
}

TEST(Sts, TsvWithAndWithoutHeader) {
  test::TempDir dir("sts");
  const std::string with = write(dir, "h.tsv", "sentence1\tsentence2\tscore\na b\tc d\t0.5\n\ne f\tg h\t-2e1\r\n");
  auto p = read_sts_tsv(with);
  ASSERT_EQ(2u, p.size());
  EXPECT_EQ("a b", p[0].a);
  EXPECT_EQ("c d", p[0].b);
  EXPECT_EQ(0.5, p[0].score);
  EXPECT_EQ(-20.0, p[1].score);
  EXPECT_EQ("g h", p[1].b);
  EXPECT_EQ("", p[1].split);
  const std::string without = write(dir, "n.tsv", "x\ty\t4\n");
  ASSERT_EQ(1u, read_sts_tsv(without).size());
  EXPECT_EQ(4.0, read_sts_tsv(without)[0].score);

  struct Case {
    std::string name, content, expect;
  };
  const std::vector<Case> cases = {
      {"late_header", "x\ty\t4\ns1\ts2\tscore\n", ":2: score 'score' is not a number"},
      {"fields", "x\ty\t4\nx\ty\n", ":2: expected 3 tab-separated fields"},
      {"extra", "s1\ts2\tscore\nx\ty\t1\t2\n", ":2: expected 3 tab-separated fields"},
      {"empty1", "\t y\t1\n", ":1: empty sentence1"},
      {"empty2", "h\th\th\nx\t\t1\n", ":2: empty sentence2"},
      {"inf", "x\ty\t1e999\n", ":1: score '1e999' is not finite"},
      {"nopairs", "s1\ts2\tscore\n\n", ": no sentence pairs"},
  };
  for (const Case& c : cases) {
    const std::string path = write(dir, c.name + ".tsv", c.content);
    EXPECT_CONTAINS(error_of([&] { read_sts_tsv(path); }), path + c.expect);
  }
  EXPECT_CONTAINS(error_of([&] { read_sts_tsv(dir / "absent.tsv"); }), dir / "absent.tsv" + ": cannot open");
}

// What `eval sts` reads a file as without --format: SICK by its header's column names, else TSV.
TEST(Sts, FormatIsRecognisedByTheHeader) {
  test::TempDir dir("sts_format");
  EXPECT_EQ("sick", sts_format_of("assets/sick/SICK.txt"));
  EXPECT_EQ("sick", sts_format_of(write(dir, "semeval.txt",
                                        "\npair_ID\tsentence_A\tsentence_B\trelatedness_score\tentailment_judgment\n")));
  EXPECT_EQ("tsv", sts_format_of(write(dir, "h.tsv", "sentence1\tsentence2\tscore\na\tb\t1\n")));
  EXPECT_EQ("tsv", sts_format_of(write(dir, "n.tsv", "a\tb\t1\n")));
  EXPECT_CONTAINS(error_of([&] { sts_format_of(dir / "absent.tsv"); }), dir / "absent.tsv");
}

// ---------------------------------------------------------------------------------------------------
// Supervised triples

TEST(SickTriples, FirstEntailmentAndFirstContradictionPerQuery) {
  test::TempDir dir("sts");
  const std::string path = write(dir, "tri.txt",
                                 "sentence_A\tsentence_B\tentailment_label\trelatedness_score\tSemEval_set\n"
                                 "q1\tn1\tNEUTRAL\t3\tTRAIN\n"          // q1 first seen here
                                 "q2\tc2\tCONTRADICTION\t2\tTRAIN\n"    // q2: contradiction before entailment
                                 "q1\tc1\tCONTRADICTION\t2\tTRAIN\n"
                                 "q3\te3\tENTAILMENT\t5\tTRAIN\n"       // q3: never contradicted
                                 "q1\te1\tENTAILMENT\t5\tTRAIN\n"
                                 "q1\te1b\tENTAILMENT\t4\tTRAIN\n"      // not the first: ignored
                                 "q2\te2\tENTAILMENT\t4\tTRAIN\n"
                                 "q2\tc2b\tCONTRADICTION\t1\tTRAIN\n"
                                 "c1\tq1\tENTAILMENT\t4\tTRAIN\n"       // B is never a query
                                 "q4\te4\tENTAILMENT\t4\tTEST\n"        // another split
                                 "q4\tc4\tCONTRADICTION\t1\tTEST\n"
                                 "q5\tn5\tNEUTRAL\t3\tTRAIN\n");
  const auto train = sick_triples(read_sick(path, "TRAIN"));
  ASSERT_EQ(2u, train.size());
  EXPECT_EQ("q1", train[0].query);
  EXPECT_EQ("e1", train[0].positive);
  EXPECT_EQ("c1", train[0].negative);
  EXPECT_EQ("q2", train[1].query);
  EXPECT_EQ("e2", train[1].positive);
  EXPECT_EQ("c2", train[1].negative);
  const auto all = sick_triples(read_sick(path, "ALL"));
  ASSERT_EQ(3u, all.size());
  EXPECT_EQ("q4", all[2].query);
  EXPECT_TRUE(sick_triples({}).empty());
}

TEST(SickTriples, JsonlGoesThroughPrepareSupervised) {
  test::TempDir dir("sts");
  const auto triples = sick_triples(read_sick(sick_path(), "TRAIN"));
  ASSERT_EQ(104u, triples.size());
  const std::string jsonl = dir / "sick.jsonl";
  const std::string instruction = "Retrieve semantically similar text";
  write_supervised_jsonl(triples, jsonl, instruction, "sick");
  EXPECT_EQ(std::vector<std::string>{"sick.jsonl"}, dir.files());  // no temporary file left

  // The JSONL itself: one object per triple with the fields prepare reads.
  std::ifstream in(jsonl);
  std::string line;
  size_t n = 0;
  while (std::getline(in, line)) {
    const auto j = nlohmann::json::parse(line);
    ASSERT_EQ(triples[n].query, j.at("query"));
    ASSERT_EQ(triples[n].positive, j.at("positive"));
    ASSERT_EQ(triples[n].negative, j.at("negative"));
    ASSERT_EQ(instruction, j.at("instruction"));
    ASSERT_EQ("sick", j.at("dataset"));
    ++n;
  }
  EXPECT_EQ(triples.size(), n);

  std::string tok_path = "assets/stories260K/tok512.bin";
  if (!std::ifstream(tok_path)) tok_path = "../shared/data/llama2c/tok512.bin";
  const auto tok = load_tokenizer(tok_path);
  PrepareOptions o;
  o.inputs = {jsonl};
  o.format = parse_prepare_format("supervised");
  o.output_prefix = dir / "sick";
  o.progress = false;
  const PrepareReport r = run_prepare(o, *tok);
  EXPECT_EQ(triples.size(), r.records);
  EXPECT_EQ(0u, r.bad_lines);
  ShardSet set(r.shards);
  ASSERT_EQ(ShardKind::kTriples, set.kind());
  ASSERT_EQ(triples.size(), set.num_triples());
  ASSERT_EQ(std::vector<std::string>{"sick"}, set.dataset_names());
  for (size_t i : {size_t{0}, triples.size() - 1}) {
    const Triple t = set.triple(i);
    const std::vector<int> q = tok->encode(instruction + "; " + triples[i].query, true);
    const std::vector<int> neg = tok->encode(triples[i].negative, true);
    EXPECT_EQ(std::vector<int32_t>(q.begin(), q.end()), t.query.to_vector());
    EXPECT_EQ(std::vector<int32_t>(neg.begin(), neg.end()), t.negative.to_vector());
  }

  // Without instruction and dataset the optional fields are left out.
  write_supervised_jsonl({{"a", "b", "c"}}, jsonl, "", "");
  EXPECT_EQ("{\"query\":\"a\",\"positive\":\"b\",\"negative\":\"c\"}\n", read_bytes(jsonl));
  EXPECT_CONTAINS(error_of([&] { write_supervised_jsonl({}, jsonl, "", ""); }), jsonl + ": no supervised triples");
  EXPECT_CONTAINS(error_of([&] { write_supervised_jsonl({{"a", "b", "c"}}, dir / "no/such/dir.jsonl", "", ""); }),
                  dir / "no/such/dir.jsonl");
}

// ---------------------------------------------------------------------------------------------------
// .npy

TEST(Npy, WritesWhatNumpySaveWrites) {
  const nlohmann::json fx = read_json(kFixtures + "npy.json");
  test::TempDir dir("npy");
  ASSERT_GE(fx["valid"].size(), 4u);
  for (const auto& c : fx["valid"]) {
    const std::string name = c["file"];
    const size_t rows = c["rows"], cols = c["cols"];
    const std::vector<double> values = c["data"];
    std::vector<float> data(values.begin(), values.end());  // float32 values stored as exact doubles
    ASSERT_EQ(rows * cols, data.size()) << name;
    const std::string out = dir / name;
    write_npy_f32(out, data.data(), rows, cols);
    const std::string want = read_bytes(kFixtures + name), got = read_bytes(out);
    EXPECT_EQ(want, got) << name;
    EXPECT_EQ(0u, (got.size() - rows * cols * 4) % 64) << name;  // the data starts 64-byte aligned

    size_t r = 0, k = 0;
    const std::vector<float> back = read_npy_f32(kFixtures + name, &r, &k);
    EXPECT_EQ(rows, r) << name;
    EXPECT_EQ(cols, k) << name;
    ASSERT_EQ(data.size(), back.size()) << name;
    for (size_t i = 0; i < data.size(); ++i)  // bit for bit (-0.0 and the denormal included)
      ASSERT_EQ(0, std::memcmp(&data[i], &back[i], sizeof(float))) << name << " [" << i << "]";
  }
  EXPECT_EQ(fx["valid"].size(), dir.files().size());  // no temporary files left
}

TEST(Npy, RoundTripsLargeShapes) {
  test::TempDir dir("npy");
  // A first axis with more digits changes the padding; the header must stay 64-byte aligned.
  for (size_t rows : {size_t{9}, size_t{10}, size_t{12345}}) {
    std::vector<float> data(rows * 2);
    for (size_t i = 0; i < data.size(); ++i) data[i] = (float)i * 0.5f - 3.0f;
    write_npy_f32(dir / "x.npy", data.data(), rows, 2);
    const std::string bytes = read_bytes(dir / "x.npy");
    const size_t header = bytes.size() - data.size() * 4;
    EXPECT_EQ(0u, header % 64);
    EXPECT_EQ('\n', bytes[header - 1]);
    size_t r = 0, c = 0;
    EXPECT_EQ(data, read_npy_f32(dir / "x.npy", &r, &c));
    EXPECT_EQ(rows, r);
    EXPECT_EQ(2u, c);
  }
}

TEST(Npy, RefusesWhatIsNotA2dFloat32CArray) {
  const nlohmann::json fx = read_json(kFixtures + "npy.json");
  const std::map<std::string, std::string> expect = {
      {"f64_2x2.npy", "dtype '<f8' is not little-endian float32"},
      {"f32_fortran_2x3.npy", "array is in Fortran order"},
      {"f32_1d.npy", "array has 1 dimensions, expected 2"},
      {"f32_bigendian_2x2.npy", "dtype '>f4'"},
  };
  ASSERT_EQ(expect.size(), fx["invalid"].size());
  size_t r = 0, c = 0;
  for (const auto& f : fx["invalid"]) {
    const std::string path = kFixtures + f["file"].get<std::string>();
    EXPECT_CONTAINS(error_of([&] { read_npy_f32(path, &r, &c); }), path + ": " + expect.at(f["file"]));
  }

  test::TempDir dir("npy");
  const std::string good = read_bytes(kFixtures + "f32_3x4.npy");
  struct Case {
    std::string name, bytes, expect;
  };
  std::string bad_version = good, long_data = good + "xxxx", bad_header = good;
  bad_version[6] = '\x04';
  bad_header.replace(good.find("'shape'"), 7, "'shope'");
  const std::vector<Case> cases = {
      {"empty", "", "not a .npy file"},
      {"text", "hello world, not numpy", "not a .npy file"},
      {"version", bad_version, "unsupported .npy format version 4.0"},
      {"short_header", good.substr(0, 40), "truncated .npy header"},
      {"short_data", good.substr(0, good.size() - 4), "shape (3, 4) needs 48 data bytes, the file has 44"},
      {"long_data", long_data, "shape (3, 4) needs 48 data bytes, the file has 52"},
      {"key", bad_header, "malformed .npy header (unexpected key 'shope')"},
  };
  for (const Case& k : cases) {
    const std::string path = write(dir, k.name + ".npy", k.bytes);
    EXPECT_CONTAINS(error_of([&] { read_npy_f32(path, &r, &c); }), path + ": " + k.expect);
  }
  EXPECT_CONTAINS(error_of([&] { read_npy_f32(dir / "absent.npy", &r, &c); }), dir / "absent.npy" + ": cannot open");
  const float one = 1.0f;
  EXPECT_CONTAINS(error_of([&] { write_npy_f32(dir / "no/such/x.npy", &one, 1, 1); }), dir / "no/such/x.npy");
}

}  // namespace
}  // namespace l2v
