// The classification evaluation (data/classification.h) against scikit-learn
// (test/fixtures/classification/sklearn.json, scripts/make_classification_fixtures.py):
//   - the logistic regression reaches sklearn LogisticRegression's optimum (C = 1, newton-cg to tol 1e-14) for two
//     classes (the binary objective) and four (the multinomial one): the same coefficients and
//     intercepts, the same predictions on held-out points;
//   - accuracy and macro-F1 equal sklearn's, also with a predicted label that is never true;
//   - the undersampling takes per_label examples of every label (all of a rarer one), deterministic in
//     the seed, another subset for another seed.
// Tolerance of the fit: both sides stop with a gradient below ~1e-10 of an objective that is 1-strongly
// convex in the weights (the penalty |w|^2 / 2C, C = 1), so each coefficient is within ~1e-9 of the
// optimum; we assert 1e-6 (the binary objective fitted as a multinomial one, or a penalised intercept,
// moves them by > 1e-2).
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "data/classification.h"
#include "data/file_io.h"

namespace l2v {
namespace {

const nlohmann::json& fixture() {
  static const nlohmann::json j = read_json_file("test/fixtures/classification/sklearn.json", "the fixture");
  return j;
}

TEST(LogisticRegression, ReachesSklearnsOptimumForTwoAndForFourClasses) {
  for (const auto& fit : fixture().at("fits")) {
    const int classes = fit.at("classes").get<int>(), dim = fit.at("dim").get<int>();
    const std::vector<float> x = fit.at("x_train").get<std::vector<float>>();
    const std::vector<float> test = fit.at("x_test").get<std::vector<float>>();
    const LogisticRegression m =
        fit_logistic_regression(x.data(), fit.at("y_train").get<std::vector<int>>(), dim, classes);
    const std::vector<double> coef = fit.at("coef").get<std::vector<double>>();
    const std::vector<double> intercept = fit.at("intercept").get<std::vector<double>>();
    ASSERT_EQ(m.weights.size(), coef.size()) << classes << " classes";
    ASSERT_EQ(m.bias.size(), intercept.size()) << classes << " classes";
    for (size_t i = 0; i < coef.size(); ++i) EXPECT_NEAR(m.weights[i], coef[i], 1e-6) << classes << " classes, " << i;
    for (size_t i = 0; i < intercept.size(); ++i) EXPECT_NEAR(m.bias[i], intercept[i], 1e-6) << classes << " classes";
    const std::vector<int> predicted = fit.at("predicted").get<std::vector<int>>();
    std::set<int> seen;
    for (size_t i = 0; i < predicted.size(); ++i) {
      EXPECT_EQ(m.predict(test.data() + i * dim), predicted[i]) << classes << " classes, test point " << i;
      seen.insert(predicted[i]);
    }
    EXPECT_EQ((int)seen.size(), classes) << "the fixture should predict every class";
  }
  const std::vector<float> x = {0, 1, 2, 3};
  EXPECT_THROW(fit_logistic_regression(x.data(), {0, 0, 0, 0}, 1, 2), std::invalid_argument);  // class 1 absent
  EXPECT_THROW(fit_logistic_regression(x.data(), {0, 1, 0, 1}, 1, 2, 0.0), std::invalid_argument);
}

TEST(ClassificationScores, EqualSklearns) {
  for (const auto& c : fixture().at("scores")) {
    const ClassificationScores s =
        classification_scores(c.at("truth").get<std::vector<int>>(), c.at("pred").get<std::vector<int>>());
    EXPECT_NEAR(s.accuracy, c.at("accuracy").get<double>(), 1e-15);
    EXPECT_NEAR(s.macro_f1, c.at("macro_f1").get<double>(), 1e-15);
  }
  EXPECT_THROW(classification_scores({}, {}), std::invalid_argument);
}

TEST(Undersample, TakesPerLabelExamplesOfEveryLabelDeterministically) {
  std::vector<int> labels;
  for (int i = 0; i < 50; ++i) labels.push_back(i % 3);
  labels.push_back(3);  // a label with one example
  const std::vector<int> a = undersample(labels, 8, 1), b = undersample(labels, 8, 1), c = undersample(labels, 8, 2);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  std::map<int, int> per;
  std::set<int> distinct(a.begin(), a.end());
  for (int i : a) ++per[labels[i]];
  EXPECT_EQ(distinct.size(), a.size()) << "an example taken twice";
  EXPECT_EQ(per, (std::map<int, int>{{0, 8}, {1, 8}, {2, 8}, {3, 1}}));
}

}  // namespace
}  // namespace l2v
