"""The configs that ship with sslbench, as package data: ``pretrain/``, ``finetune/``, ``suites/``.

They are read through ``importlib.resources``, so a wheel install finds them as a checkout does.
"""
