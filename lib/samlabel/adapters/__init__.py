"""The trained parts of SAM: adapter layers in the encoder and which parameters train (:mod:`.layers`),
adapter files on disk (:mod:`.files`), the versions a fine-tuning run publishes and which one is served
(:mod:`.versions`), and :mod:`.choice`, the one place that turns ``--conf adapter`` into an adapter.

May import :mod:`samlabel.model`; imported by inference, training, tasks and the server.
"""
