"""The cross-training phase: person splits, (target i, face j) pairs, their manifest, and training runs.

``pairs`` (splits by person, pairs of one person's photos, the manifest the trainer reads) and
``launch`` (a training run: ``accelerate launch training/train_instantid.py`` built as an argument
list, watched, stopped and registered as a model).
"""
