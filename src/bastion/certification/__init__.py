"""Certification and verification: guarantees, not just attacks.

Randomized smoothing (Cohen et al. 2019) and derandomized smoothing (Levine and Feizi 2020)
certify a smoothed classifier that needs only predictions; interval bound propagation (Gowal
et al. 2018), CROWN (Zhang et al. 2018) and alpha-CROWN (Xu et al. 2021) bound a torch model's
logits over a whole input ball; :func:`verify` turns bounds into per-sample verdicts, and
``method="complete"`` solves the exact mixed-integer program of Tjeng et al. 2019 with SciPy's
HiGHS. Certified trainers (IBP, CROWN-IBP, Gaussian noise, SmoothAdv) train models these
certificates hold for.
"""

# --- randomized smoothing (helper A) ---
from bastion.certification._smoothing import RandomizedSmoothing
from bastion.certification._smoothing_training import (
    GaussianNoiseTrainer,
    SmoothAdvTrainer,
    SmoothingEvaluation,
)

# isort: split
# --- derandomized smoothing (helper B) ---
from bastion.certification._derandomized import DerandomizedSmoothing

# isort: split
# --- bound propagation and verification (helper C) ---
from bastion.certification._verify import (
    CrownBounds,
    IntervalBounds,
    VerificationResult,
    verify,
)

# isort: split
# --- certified training (helper D) ---
from bastion.certification._training import CrownIBPTrainer, IBPTrainer
from bastion.certification._training_eval import CertifiedTrainingEvaluation

__all__: list[str] = [
    "CertifiedTrainingEvaluation",
    "CrownBounds",
    "CrownIBPTrainer",
    "DerandomizedSmoothing",
    "GaussianNoiseTrainer",
    "IBPTrainer",
    "IntervalBounds",
    "RandomizedSmoothing",
    "SmoothAdvTrainer",
    "SmoothingEvaluation",
    "VerificationResult",
    "verify",
]
