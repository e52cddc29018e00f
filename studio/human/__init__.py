"""The human evaluation phase (paper §5.3): blind studies, 0-5 scores per annotator, agreement, Table 3.

``studies`` owns it; the Annotate tab (``ui/annotate``) is how annotators score.
"""
