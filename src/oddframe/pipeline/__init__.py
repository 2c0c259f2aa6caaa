"""The pipeline: the streaming engine, and the tasks built on it (train, calibrate, detect, evaluate).

Imports go one way: front ends (cli, api, demo) -> pipeline -> models, data, features, scoring, metrics, render.
A task never imports a sibling task; what two tasks share lives in :mod:`~oddframe.pipeline.engine` (scoring
frames) or :mod:`~oddframe.pipeline.outputs` (writing what was scored).
"""
