"""Models trained by other libraries, as multidiff denoisers.

* :mod:`multidiff.interop.diffusers`: a local diffusers UNet folder with its scheduler config.

Each submodule imports its library only inside the functions that need it, so importing
``multidiff`` (or this package) never imports them.
"""
