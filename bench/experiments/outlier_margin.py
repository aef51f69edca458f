"""Margin of the converter's outlier rule (`jang.convert.MAX_OUTLIER`, 1e4) on real models:
the largest row peak over the median row peak, for every tensor the plan quantizes.

    python bench/experiments/outlier_margin.py [MODEL ...]   (`jang data` names; default both)
"""

import sys

import mlx.core as mx
import numpy as np

from jang import data
from jang.mlx_view import open_for_mlx
from jang.plan import plan_source

for name in sys.argv[1:] or ("smollm2", "gemma3"):
    path = data.resolve_model(name, quiet=True)
    plan = plan_source(path, bits=3.0)
    source = open_for_mlx(path)
    worst = (0.0, None)
    for info in source.tensors():
        if not plan["tensors"][info.name]["quantized"]:
            continue
        w = source.read(info.name)
        peak = np.array(mx.max(mx.abs(w.reshape(-1, w.shape[-1]).astype(mx.float32)), axis=-1))
        worst = max(worst, (float(peak.max() / np.median(peak)), info.name))
    print(f"{name}: largest row peak / median row peak = {worst[0]:.1f} ({worst[1]})")
