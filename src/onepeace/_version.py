"""The version of onepeace (``onepeace.__version__``), here at the bottom so that any layer may read it
without importing the package itself."""

__version__ = "0.1.0"
