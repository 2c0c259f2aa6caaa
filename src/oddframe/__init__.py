"""oddframe: find what is unusual in video and image sequences without labelled anomalies."""

__version__ = "0.1.0"
