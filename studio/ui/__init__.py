"""Gradio UI: one module per tab; handlers call stage functions and never hold logic of their own."""
