"""Curating raw footage before training: prep (clips, index, movie), review (set unusual clips aside), SDO fetch.

The workflow of seed 001's solar pipeline, for any footage. It writes prepared folders through
:mod:`oddframe.data.prepared`, which owns their format; training and calibration read them through the same
module.
"""
