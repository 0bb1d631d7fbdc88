"""xlt: cross-lingual adjustment of contextual word representations and
zero-shot transfer experiments (Efimov, Boytsov, Arslanova, Braslavski)."""

__version__ = "0.1.0"
