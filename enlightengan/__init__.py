"""EnlightenGAN in pure PyTorch: configs, networks, losses, training step, inference.

Nothing in this package knows about Ray, object storage or URIs (a test checks it).
"""
