"""`aipm-fast profile`: the power inside one inference at millisecond resolution, and the energy
of its parts.

- folding.py: the folding of many repetitions onto one inference's timeline and the reconstruction
  through the sensor's calibrated response (pure numpy, no GPU);
- run.py: running any callable many times on the GPU with CUDA events around it and its parts
  (forward hooks to a depth, named ranges), until the curve is known to a chosen precision;
- output.py: curve.csv, parts.csv, profile.json, profile.png.

    from aipm_fast.profile import Parts, profile
    result = profile(lambda: model(x), model=model, depth=2, precision=0.03)
    print(result.folded.energy_j, result.table)
"""

from aipm_fast.profile.folding import Folded, Span, fold
from aipm_fast.profile.run import NoCalibration, Parts, Profile, modules_at_depth, profile

__all__ = ["Folded", "NoCalibration", "Parts", "Profile", "Span", "fold", "modules_at_depth", "profile"]
