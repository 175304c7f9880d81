from hpelib._version import __version__
