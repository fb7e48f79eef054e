"""Calibrated fusion: one learned score from the score columns of other attacks (beyond the papers).

SecMI's authors leave combining signals across timesteps as future work; each source paper's attack reads
one statistic at one (or a few) t. ``fusion`` stacks every score variant of its component attacks (every
t of a loss/PIA/SimA sweep, noise aggregation, SecMI, Data Forensics' statistics) into a feature vector
and learns, on the calibration rows only, how to weigh them:

* ``fusion`` (primary): scikit-learn logistic regression on standardised columns (each column first put
  on a log scale, sign(s) log(1 + |s|), because negated errors span orders of magnitude), balanced class
  weights;
* ``fusion[gb]``: a gradient-boosted tree ensemble (``HistGradientBoostingClassifier``) on the raw columns.

Threat model: the union of the components' (white-box for the defaults). Learned: fitted on calibration
rows only, with the cross-fitting every learned attack gets (``protocol.attack_scores``). In a run, the
components' features are the very chunks those attacks cache under their own names (same parameters, same
key), so fusion costs no new queries when they ran; ``queries_per_sample`` is the sum over the distinct
components. After ``fit``, ``weights_`` holds the logistic weight of every column (standardised units)
and ``component_weights()`` the share of each component: the report shows which ones carry the weight.
Components must be query attacks (not learned themselves), all of one access kind.
"""

from __future__ import annotations

import numpy as np

from ..errors import DiffmiaError
from .base import Attack, Param, integer, number

DEFAULT_COMPONENTS = ("sima", "pia", "loss", "noise_aggregation")
SEP = "|"


def _components_ok(v) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and len(set(v)) == len(v) and all(isinstance(x, str) for x in v)


def _params_ok(v) -> bool:
    return v is None or (isinstance(v, dict) and all(isinstance(k, str) and isinstance(p, dict) for k, p in v.items()))


COMPONENT_PARAMS = Param("a dict {attack: {parameter: value}} (or None)", _params_ok)


def build_components(names, params: dict | None, owner: str) -> dict[str, Attack]:
    """The component attacks ``names`` (registry entries) with ``params[name]`` (or their defaults)."""
    from . import ATTACKS

    out = {}
    for n in names:
        cls = ATTACKS.get(n)
        if cls is None or n == owner:
            raise DiffmiaError(f"{owner}: unknown component {n!r}; components are registered attacks")
        if cls.learned or cls.access != "model":
            raise DiffmiaError(f"{owner}: component {n!r} must be a model-access attack that is not learned itself")
        p = dict((params or {}).get(n) or {})
        unknown = set(p) - set(cls._param_names())
        if unknown:
            raise DiffmiaError(f"{owner}: component {n!r} has no parameter {sorted(unknown)}")
        comp = cls(**p)
        comp.check_params()
        out[n] = comp
    return out


def score_columns(components: dict[str, Attack], features: dict[str, dict]) -> dict[str, np.ndarray]:
    """``{component|variant: score}`` for every score variant of every component (duplicates dropped: a
    sweep's primary score is also one of its variants)."""
    cols = {}
    for n, comp in components.items():
        seen = []
        for v, s in comp.scores(features[n]).items():
            s = np.asarray(s, dtype=np.float64)
            if any(np.array_equal(s, o) for o in seen):
                continue
            seen.append(s)
            cols[f"{n}{SEP}{v}"] = s
    return cols


class Fusion(Attack):
    """Calibrated fusion of other attacks' score columns (beyond the papers). Learned.

    Arguments: ``components`` (default ("sima", "pia", "loss", "noise_aggregation"): 14 queries with their
    defaults), ``component_params`` (``{name: {param: value}}``; in a run, the run's own ``--param`` of a
    component fills it, so the cached features are shared), ``C`` (inverse l2 strength of the logistic
    regression, default 1.0), ``gb_iter`` (boosting rounds, default 200), ``seed``.
    Score = the logistic model's decision value (higher = member); variant ``fusion[gb]``.
    """

    name = "fusion"
    paper = "beyond the papers: calibrated fusion of the attacks' per-timestep scores (scikit-learn)"
    threat_model = "white-box"
    learned = True
    _parameter_constraints = {
        "components": Param("a non-empty sequence of distinct attack names", _components_ok),
        "component_params": COMPONENT_PARAMS,
        "C": number(0, strict=True), "gb_iter": integer(1), "seed": integer(0)}

    def __init__(self, components=DEFAULT_COMPONENTS, component_params=None, C: float = 1.0, gb_iter: int = 200,
                 seed: int = 0):
        self.components = components
        self.component_params = component_params
        self.C = C
        self.gb_iter = gb_iter
        self.seed = seed

    def component_attacks(self) -> dict[str, Attack]:
        return build_components(self.components, self.component_params, self.name)

    def _queries(self, num_train_timesteps):
        return sum(c.queries_per_sample(num_train_timesteps) for c in self.component_attacks().values())

    def _features(self, target, images, cond, seeds, cache):
        comps = self.component_attacks()
        feats = {n: c.features(target, images, cond, seeds, cache) for n, c in comps.items()}
        return self.combine(feats)

    def combine(self, component_features: dict[str, dict]) -> dict[str, np.ndarray]:
        """Fusion's features from each component's features (the runner passes its cached ones)."""
        return score_columns(self.component_attacks(), component_features)

    # -- learning
    @staticmethod
    def _matrix(features, columns):
        missing = [c for c in columns if c not in features]
        if missing:
            raise DiffmiaError(f"fusion: features lack the columns {missing[:3]}")
        return np.column_stack([np.asarray(features[c], dtype=np.float64) for c in columns])

    def _fit(self, features, is_member):
        from sklearn.ensemble import HistGradientBoostingClassifier
        from sklearn.linear_model import LogisticRegression
        from sklearn.pipeline import make_pipeline
        from sklearn.preprocessing import FunctionTransformer, StandardScaler

        y = np.asarray(is_member).astype(int)
        if y.min() == y.max():
            raise DiffmiaError("fusion: fitting needs members and non-members among the calibration rows")
        self.columns_ = sorted(features)
        x = self._matrix(features, self.columns_)
        if not np.isfinite(x).all():
            raise DiffmiaError("fusion: a component score is NaN or infinite")
        self.logreg_ = make_pipeline(FunctionTransformer(_signed_log), StandardScaler(),
                                     LogisticRegression(C=self.C, class_weight="balanced", max_iter=5000))
        self.logreg_.fit(x, y)
        self.gb_ = HistGradientBoostingClassifier(max_iter=self.gb_iter, learning_rate=0.05, max_leaf_nodes=15,
                                                  class_weight="balanced", random_state=self.seed)
        self.gb_.fit(x, y)
        self.weights_ = dict(zip(self.columns_, self.logreg_[-1].coef_[0].tolist()))

    def _scores(self, features):
        x = self._matrix(features, self.columns_)
        return {self.name: self.logreg_.decision_function(x),
                f"{self.name}[gb]": self.gb_.decision_function(x)}

    def component_weights(self) -> dict[str, float]:
        """Each component's share of the total absolute logistic weight (sums to 1)."""
        tot = sum(abs(w) for w in self.weights_.values()) or 1.0
        out: dict[str, float] = {}
        for col, w in self.weights_.items():
            comp = col.split(SEP, 1)[0]
            out[comp] = out.get(comp, 0.0) + abs(w) / tot
        return out


def _signed_log(x):
    return np.sign(x) * np.log1p(np.abs(x))
