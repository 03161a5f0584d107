"""The sentence-task scores against scikit-learn's and SciPy's on fixed inputs (ties, a class
never predicted, perfect and inverse orderings)."""

import numpy as np
import pytest
from scipy import stats
from sklearn import metrics

from axk.data import benchmark

LABELS = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1])
PREDICTED = np.array([1, 0, 0, 1, 1, 0, 1, 1, 1, 0])


def test_accuracy_and_f1_equal_scikit_learn():
  assert benchmark.accuracy(PREDICTED, LABELS) == pytest.approx(
      100 * metrics.accuracy_score(LABELS, PREDICTED))
  assert benchmark.binary_f1(PREDICTED, LABELS) == pytest.approx(
      100 * metrics.f1_score(LABELS, PREDICTED))
  # The other class as the positive one, and a positive class never predicted.
  assert benchmark.binary_f1(PREDICTED, LABELS, positive=0) == pytest.approx(
      100 * metrics.f1_score(LABELS, PREDICTED, pos_label=0))
  none = np.zeros_like(LABELS)
  assert benchmark.binary_f1(none, LABELS) == pytest.approx(
      100 * metrics.f1_score(LABELS, none, zero_division=0.0))
  three = np.array([0, 1, 2, 2, 1, 0]), np.array([0, 2, 2, 1, 1, 0])  # MNLI's three labels.
  assert benchmark.accuracy(*three) == pytest.approx(100 * metrics.accuracy_score(*three))


@pytest.mark.parametrize("x, y", [
    ([0.1, 2.5, 3.0, 4.2, 1.0, 5.0], [0.0, 2.0, 3.5, 4.0, 1.5, 4.8]),
    ([1, 2, 2, 3, 3, 3, 5], [2, 1, 4, 4, 3, 5, 5]),  # ties on both sides
    ([1, 2, 3, 4], [4, 3, 2, 1]),  # inverse
])
def test_correlations_equal_scipy(x, y):
  assert benchmark.pearson(x, y) == pytest.approx(100 * stats.pearsonr(x, y)[0], abs=1e-9)
  assert benchmark.spearman(x, y) == pytest.approx(100 * stats.spearmanr(x, y)[0], abs=1e-9)
