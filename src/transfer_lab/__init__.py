"""Transfer Lab: transfer learning by feature extraction.

The library behind the Snakemake workflow. Importing the package is cheap (no torch);
each module imports what it needs so the workflow can hash sources and validate a
config without loading a network.
"""

__version__ = "0.1.0"
