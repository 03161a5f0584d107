"""axk: auditory knowledge for text-only language models, in JAX/Flax.

AudioBERT (retrieval) and Imagine to Hear (generation) on AuditoryBench.
"""

__version__ = "0.1.0"
