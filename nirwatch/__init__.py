"""nirwatch: streaming inline process monitoring with NIR spectroscopy."""

__version__ = "0.1.0"
