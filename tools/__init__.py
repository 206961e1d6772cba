"""Perception tools, each wrapping one pretrained model. See :mod:`tools.base`."""
