"""The labelling defaults, importable without model code (the CLI's help shows them)."""

DEFAULT_SCORE_THRESHOLD = 0.0
DEFAULT_MIN_AREA_FRACTION = 1e-4
DEFAULT_MAX_PIXELS = 8192 * 8192
DEFAULT_CLASS = "object"
