"""Detection transfer with Detectron2: MoCo's R50-C4 recipe on VOC and COCO from any checkpoint.

Detectron2 is optional. ``tasks`` and ``availability`` import without it; ``heads``, ``datasets``,
``config`` and ``train`` import it at module level and are imported only by ``sslbench detect``.
"""
