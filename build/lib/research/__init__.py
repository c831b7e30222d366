"""research: JAX deep learning on audio, with loss-landscape analysis.

Public modules: `research.models`, `research.train`, `research.optim`, `research.data`,
`research.losses`, `research.metrics`, `research.landscape`, `research.audio`.
"""

__version__ = "0.1.0"
