"""medserve model runtime: a KServe custom model server for clinical models."""

__version__ = "0.1.0"
