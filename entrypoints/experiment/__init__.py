"""The example experiment's stages (``hydra_conf/pipeline/tinyexp.yaml``): a notebook turned into apps.

CPU stages (setup, prep, aggregate) use the standard library only; the GPU stages (train,
evaluate, attack) import torch inside ``run``. Each stage checks its inputs, writes its outputs
atomically and its completion flag last (``common.writing``), and exits non-zero on failure.
"""
