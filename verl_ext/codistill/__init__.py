"""CoDistill-GRPO algorithm core: pure torch functions registered into verl.

Importing this package registers the ``codistill`` advantage estimator and the
``codistill_teacher`` policy loss in verl's registries.
"""
