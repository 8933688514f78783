"""scikit-learn through the stepdown joblib backend: the same scores as loky, with the ladder.

python examples/joblib_sklearn.py
"""

from __future__ import annotations

from joblib import parallel_config
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import cross_val_score

import stepdown.integrations.joblib  # noqa: F401  (registers the "stepdown" backend)

if __name__ == "__main__":
    X, y = load_iris(return_X_y=True)
    with parallel_config(backend="stepdown", n_jobs=2):
        scores = cross_val_score(LogisticRegression(max_iter=500), X, y, cv=5)
    print("cross-validation scores:", scores.round(3))
