"""Tuning: the lr range test (`tune.lr_find`, `cifarlab lr-find`) and hyperparameter sweeps on
Optuna (`tune.sweep`, `cifarlab sweep`; results written by `tune.summary`).

These sit above run.py (a sweep is many runs; lr-find builds a run's trainer): only the CLI
and the public API import them. Optuna is an optional extra (`pip install 'cifarlab[tune]'`),
imported by the sweep's modules only, so nothing is imported here.
"""
