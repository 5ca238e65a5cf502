"""The ``sam_adapter`` trainer: what a fine-tuning run learns from (:mod:`.samples`), one click-simulation
step (:mod:`.step`), the loop with its validation gate (:mod:`.loop`), the MONAI Label task (:mod:`.task`),
one run at a time (:mod:`.runs`) and the save-count trigger (:mod:`.trigger`).

May import model, adapters, inference, evaluation and the datastore's names; never the server or the tools.
"""
