"""Runs and engines: every long stage as a recorded run, and what runs it.

``jobs`` (record, execute, submit, the worker, cancel, rerun, reap), ``settings`` (the typed
settings base every run kind derives from), ``stages`` (each run kind's settings, check and work),
``argcheck`` (a line of arguments parsed as the worker's own parser would), ``parallel`` (threads
with a bounded look-ahead) and ``ray_map`` (an actor pool on Ray for stages that outgrow one machine).
"""
