"""The Ray layer of EnlightenGAN at scale: storage URIs, prepare, train, enhance, submit.

Everything that knows about URIs, clusters and jobs lives here; the model itself is in the
pure-PyTorch package :mod:`enlightengan`.
"""
