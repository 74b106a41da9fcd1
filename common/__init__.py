"""Shared by the online and batch paths: settings, model bundle, cache, metrics, errors."""
