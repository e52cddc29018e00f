"""The caption phase: every image captioned with the paper's prompt, then reviewed by people.

``captioner`` (GPT-4o or any OpenAI-compatible server, synchronously), ``batch`` (the Batch API at
half price), ``ratelimit`` (pacing by the key's own limits), ``checks`` (what the prompt exists to
prevent) and ``review`` (approve, reject, edit, regenerate: each a new version with who and when).
"""
