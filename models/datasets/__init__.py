"""Data the zoo builds its calibration and evaluation sets from, all available offline.

digits (scikit-learn), photos (scikit-image), sentences (Python's docstrings), rendered documents (PIL with
DejaVu fonts), synthetic speech (source-filter synthesis). Each module documents why its data is realistic
enough for calibration and how its splits are kept disjoint.
"""
