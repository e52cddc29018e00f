"""CrossFaceID Studio: build, caption, train and evaluate FaceID-customization datasets and models."""

__version__ = "0.1.0"
