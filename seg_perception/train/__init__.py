"""seg_perception.train: the offline trainer (recipes, stages, checkpoints, DDP).

Entry points: ``seg-perception train`` (:mod:`seg_perception.commands.train`),
``torchrun -m seg_perception.train``, :class:`seg_perception.train.trainer.Trainer` and
:func:`seg_perception.train.checkpoint.export_weights`. Heavy modules are imported on use.
"""
