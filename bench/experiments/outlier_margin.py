"""Margin of the converter's outlier rule (`jang.convert.MAX_OUTLIER`, 1e4) on real models:
the largest row peak over the median row peak, for every tensor the plan quantizes.

    python bench/experiments/outlier_margin.py [MODEL ...]   (`jang data` names; default both)
"""
