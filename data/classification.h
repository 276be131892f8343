// Classification evaluation (MTEB's classification tasks, `llm2vec eval classification`): a logistic
// regression on the embeddings of a few training texts per label, scored on a test set by accuracy and
// macro-F1, averaged over repeated samplings of the training texts.
#pragma once
#include <cstdint>
#include <vector>

namespace l2v {

// L2-regularised logistic regression as scikit-learn's LogisticRegression(C) fits it (penalty "l2",
// intercept fitted and not penalised), to its unique optimum:
//   two classes:  minimise  sum_i log(1 + exp(-s_i (w.x_i + b))) + |w|^2 / (2C),  s_i = +1 for class 1
//   K > 2:        minimise  sum_i -log softmax(W x_i + b)[y_i] + |W|_F^2 / (2C)   (multinomial)
// by Newton's method with conjugate gradients in double (sklearn's newton-cg) until the gradient's largest
// component is below tol times its initial one (sklearn's default lbfgs stops at tol 1e-4 or 100
// iterations: MTEB's scores come from such an early stop, ours from the optimum).
struct LogisticRegression {
  int classes = 0, dim = 0;
  std::vector<double> weights;  // [1, dim] for two classes, else [classes, dim]
  std::vector<double> bias;     // [1] or [classes]
  int iterations = 0;  // Newton iterations
  // The class of x: two classes, 1 when w.x + b > 0; else the argmax (ties to the lower class).
  int predict(const float* x) const;
};

// x [n, dim], y [n] in [0, classes) with every class present. Throws std::invalid_argument on bad shapes,
// a class without an example, C <= 0 or a non-finite value.
LogisticRegression fit_logistic_regression(const float* x, const std::vector<int>& y, int dim, int classes,
                                           double C = 1.0, int max_iter = 1000, double tol = 1e-10);

struct ClassificationScores {
  double accuracy = 0.0, macro_f1 = 0.0;
};
// Accuracy, and sklearn's f1_score(average="macro"): the mean over every label present in truth or pred of
// 2 TP / (2 TP + FP + FN) (0 when that is 0 / 0). Throws std::invalid_argument on different or zero sizes.
ClassificationScores classification_scores(const std::vector<int>& truth, const std::vector<int>& pred);

// MTEB's undersampling of a training set: the indices of the first `per_label` examples of every label
// in an order shuffled by `seed` (all of a label's examples when it has fewer), in that shuffled order.
std::vector<int> undersample(const std::vector<int>& labels, int per_label, uint64_t seed);

}  // namespace l2v
