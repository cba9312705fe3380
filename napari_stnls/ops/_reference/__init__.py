"""The pure-PyTorch reference twin of every op: readable, differentiable by autograd, on any
device. The public ops run it when the compiled kernels cannot (or ``backend="reference"``);
the tests hold the kernels to it and to the loop oracle.

``taps`` is the machinery they share: mirrored, possibly sub-pixel patches read from and
written into a flattened channels-last video.
"""
