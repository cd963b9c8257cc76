"""tlpipe: a reproducible DVC pipeline from a folder of labelled images to a
transfer-learned Keras classifier.

Importing the package has no side effects; the stage scripts in ``stages/``
and the ``tlpipe`` command call into the modules below.
"""

__version__ = "0.1.0"
