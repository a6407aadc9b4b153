"""Robustness: the CIFAR-10-C corruption suite and white-box attacks to measure it, and the
training objectives that improve it (AugMix's consistency loss, adversarial training).

corruptions.py  the 19 corruptions, batched        motion.py   ImageMagick's motion blur
suite.py        generation and the md5-checked cache  attacks.py  FGSM, PGD-L∞, PGD-L2
settings.py     names, flags and their checks         score.py    mean, relative drop, mCE
consistency.py  AugMix's Jensen-Shannon loss        adversarial.py  FGSM-RS / PGD training batches
"""

from .settings import ATTACKS, EXTRA, STANDARD, RobustnessConfig

__all__ = ["ATTACKS", "EXTRA", "STANDARD", "RobustnessConfig"]
