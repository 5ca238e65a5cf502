"""Accuracy in process: Dice, targets and the standard simulated user, as the training gate and the tools
measure it. Imported by training and by :mod:`samlabel.tools`; never imports the tools.
"""
