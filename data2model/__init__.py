"""data2model: shared pieces of the pipeline (typed params, table I/O, the DAG, preprocessing)."""

__version__ = "0.1.0"
