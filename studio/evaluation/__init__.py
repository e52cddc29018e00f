"""The automatic evaluation phase (paper §5.1-5.2): test sets, metrics, evaluation runs and the tables.

``testsets`` (who is generated from which face with which prompt), ``metrics`` (CLIP-T, CLIP-I,
Face Sim and attribute following in one pass), ``score_ray`` (the same scoring on Ray),
``evaluate`` (models x test sets x λ -> samples -> scores -> Table 2) and ``report`` (the paper's
tables as Markdown).
"""
