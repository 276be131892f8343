// The clustering evaluation (data/clustering.h) against scikit-learn (test/fixtures/clustering/sklearn.json,
// written by scripts/make_clustering_fixtures.py):
//   - homogeneity, completeness and V-measure equal sklearn's on random, noisy, identical, renamed,
//     degenerate (one cluster, singletons, one class, one item) and sparse-id labellings;
//   - k-means finds sklearn KMeans's partition of separated blobs, with the same inertia;
//   - properties sklearn does not check for us: the result is a Lloyd fixed point (every row nearest to
//     its own center, every center the mean of its rows), independent of the thread count, exact when
//     k = n, and refusals of bad arguments;
//   - the JSON-lines reader's records and its errors (file:line).
// Tolerances: the scores are sums of at most a few hundred terms p log(p) in double, done in another
// order than numpy's: off by a few hundred ulps of 1 at most, so 1e-12 (a swapped h/c, a missing
// term or another normalisation moves them by > 1e-3; the log base cancels in the ratios). Inertia: 720 squared differences summed in double in
// another order: relative 1e-12.
#include <gtest/gtest.h>
#include <omp.h>

#include <cstdio>
#include <fstream>
#include <limits>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "data/clustering.h"
#include "data/file_io.h"
#include "data/labelled_texts.h"
#include "test/temp_dir.h"

namespace l2v {
namespace {

const nlohmann::json& fixture() {
  static const nlohmann::json j = read_json_file("test/fixtures/clustering/sklearn.json", "the fixture");
  return j;
}

TEST(ClusterScores, EqualSklearns) {
  ASSERT_GE(fixture().at("scores").size(), 10u);
  for (const auto& c : fixture().at("scores")) {
    const ClusterScores s = cluster_scores(c.at("truth").get<std::vector<int>>(), c.at("pred").get<std::vector<int>>());
    const std::string name = c.at("name").get<std::string>();
    EXPECT_NEAR(s.homogeneity, c.at("homogeneity").get<double>(), 1e-12) << name;
    EXPECT_NEAR(s.completeness, c.at("completeness").get<double>(), 1e-12) << name;
    EXPECT_NEAR(s.v_measure, c.at("v_measure").get<double>(), 1e-12) << name;
  }
  EXPECT_THROW(cluster_scores({0, 1}, {0}), std::invalid_argument);
  EXPECT_THROW(cluster_scores({}, {}), std::invalid_argument);
  EXPECT_THROW(cluster_scores({0, -1}, {0, 0}), std::invalid_argument);
}

struct Blobs {
  int n, d, k;
  std::vector<float> x;
  std::vector<int> truth, sklearn_labels;
  double inertia;
};

Blobs blobs() {
  const auto& j = fixture().at("kmeans");
  return {j.at("n").get<int>(),          j.at("d").get<int>(),
          j.at("k").get<int>(),          j.at("x").get<std::vector<float>>(),
          j.at("truth").get<std::vector<int>>(), j.at("labels").get<std::vector<int>>(),
          j.at("inertia_float64").get<double>()};
}

TEST(KMeans, FindsSklearnsPartitionOfSeparatedBlobsWithTheSameInertia) {
  const Blobs b = blobs();
  const KMeansResult r = kmeans(b.x.data(), b.n, b.d, b.k, 10, 300, 42);
  EXPECT_NEAR(cluster_scores(b.sklearn_labels, r.assignment).v_measure, 1.0, 1e-12) << "another partition than sklearn's";
  EXPECT_NEAR(cluster_scores(b.truth, r.assignment).v_measure, 1.0, 1e-12) << "the blobs were not recovered";
  EXPECT_NEAR(r.inertia, b.inertia, 1e-12 * b.inertia);
  EXPECT_GE(r.iterations, 1);
  // One seeding finds it too on data this clean, whatever the seed.
  for (uint64_t seed : {1, 2, 3})
    EXPECT_NEAR(cluster_scores(b.sklearn_labels, kmeans(b.x.data(), b.n, b.d, b.k, 1, 300, seed).assignment).v_measure,
                1.0, 1e-12)
        << seed;
}

// Two Lloyd fixed-point conditions and the inertia's definition, on overlapping data (where a bug in the
// update or the assignment would leave a row closer to another center).
TEST(KMeans, TheResultIsALloydFixedPoint) {
  Blobs b = blobs();
  for (size_t i = 0; i < b.x.size(); ++i) b.x[i] *= (i % 3 == 0) ? 0.2f : 1.0f;  // squeeze: overlapping clusters
  const int k = 6;
  const KMeansResult r = kmeans(b.x.data(), b.n, b.d, k, 3, 300, 5);
  ASSERT_LT(r.iterations, 300) << "did not converge";
  double inertia = 0.0;
  std::vector<double> mean((size_t)k * b.d, 0.0);
  std::vector<int> count(k, 0);
  for (int i = 0; i < b.n; ++i) {
    double own = 0.0, nearest = std::numeric_limits<double>::infinity();
    for (int c = 0; c < k; ++c) {
      double dist = 0.0;
      for (int j = 0; j < b.d; ++j) {
        const double t = b.x[(size_t)i * b.d + j] - r.centers[(size_t)c * b.d + j];
        dist += t * t;
      }
      if (c == r.assignment[i]) own = dist;
      nearest = std::min(nearest, dist);
    }
    EXPECT_EQ(own, nearest) << "row " << i << " is closer to another center";
    inertia += own;
    ++count[r.assignment[i]];
    for (int j = 0; j < b.d; ++j) mean[(size_t)r.assignment[i] * b.d + j] += b.x[(size_t)i * b.d + j];
  }
  for (int c = 0; c < k; ++c) {
    ASSERT_GT(count[c], 0) << "cluster " << c << " is empty";
    for (int j = 0; j < b.d; ++j)
      EXPECT_NEAR(r.centers[(size_t)c * b.d + j], mean[(size_t)c * b.d + j] / count[c], 1e-12) << c;
  }
  EXPECT_NEAR(r.inertia, inertia, 1e-12 * inertia);
}

TEST(KMeans, IndependentOfTheThreadCountAndExactEdgeCases) {
  const Blobs b = blobs();
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const KMeansResult one = kmeans(b.x.data(), b.n, b.d, 5, 4, 300, 9);
  omp_set_num_threads(std::max(2, threads));
  const KMeansResult many = kmeans(b.x.data(), b.n, b.d, 5, 4, 300, 9);
  omp_set_num_threads(threads);
  EXPECT_EQ(one.assignment, many.assignment);
  EXPECT_EQ(one.inertia, many.inertia);
  EXPECT_EQ(one.centers, many.centers);
  // k = n: every row its own center.
  const KMeansResult all = kmeans(b.x.data(), 7, b.d, 7, 1, 300, 1);
  EXPECT_EQ(all.inertia, 0.0);
  // Identical rows and more clusters than distinct points: no crash, inertia 0.
  const std::vector<float> same(4 * 3, 2.5f);
  EXPECT_EQ(kmeans(same.data(), 4, 3, 3, 2, 300, 1).inertia, 0.0);
  EXPECT_THROW(kmeans(b.x.data(), 3, b.d, 4, 1, 300, 1), std::invalid_argument);  // k > n
  EXPECT_THROW(kmeans(b.x.data(), 3, b.d, 0, 1, 300, 1), std::invalid_argument);
  std::vector<float> bad = b.x;
  bad[17] = std::numeric_limits<float>::quiet_NaN();
  EXPECT_THROW(kmeans(bad.data(), b.n, b.d, 2, 1, 300, 1), std::invalid_argument);
}

TEST(ClusteringData, ReadsLabelledJsonLinesAndNamesTheLineOfAnError) {
  test::TempDir dir("clustering");
  const std::string good = dir / "good.jsonl";
  std::ofstream(good) << "{\"text\": \"a cat\", \"label\": \"animals\"}\n\n"
                         "{\"text\": \"the sun\", \"label\": 3, \"id\": 9}\r\n"
                         "{\"text\": \"a dog\", \"label\": \"animals\"}\n";
  const std::vector<LabelledText> t = read_labelled_jsonl(good);
  ASSERT_EQ(t.size(), 3u);
  EXPECT_EQ(t[1].text, "the sun");
  EXPECT_EQ(t[1].label, "3");
  std::map<std::string, int> ids;
  EXPECT_EQ(label_ids(t, &ids), (std::vector<int>{0, 1, 0}));
  EXPECT_EQ(ids.size(), 2u);
  // Known labels keep their ids, new ones get the next: a test set read after a training set.
  EXPECT_EQ(label_ids({{"x", "3"}, {"y", "birds"}, {"z", "animals"}}, &ids), (std::vector<int>{1, 2, 0}));
  struct Bad {
    const char* content;
    const char* message;
  };
  for (const Bad& b : {Bad{"{\"text\": \"a\", \"label\": 1}\nnot json\n", "bad.jsonl:2: not valid JSON"},
                       Bad{"[1, 2]\n", "bad.jsonl:1: expected a JSON object"},
                       Bad{"{\"label\": 1}\n", "bad.jsonl:1: missing or empty \"text\""},
                       Bad{"{\"text\": \"a\", \"label\": 1.5}\n", "bad.jsonl:1: \"label\" must be a string or an integer"},
                       Bad{"{\"text\": \"a\"}\n", "bad.jsonl:1: missing \"label\""},
                       Bad{"{\"text\": \"a\", \"label\": 1}\n{\"text\": \"b\", \"label\": 1}\n", "same label"},
                       Bad{"\n", "no texts"}}) {
    const std::string path = dir / "bad.jsonl";
    std::ofstream(path) << b.content;
    try {
      read_labelled_jsonl(path);
      ADD_FAILURE() << "accepted: " << b.content;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(b.message), std::string::npos) << e.what();
    }
  }
  EXPECT_THROW(read_labelled_jsonl(dir / "missing.jsonl"), std::runtime_error);
}

}  // namespace
}  // namespace l2v
