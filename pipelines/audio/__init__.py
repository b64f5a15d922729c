"""Audio I/O, log-mel features, audio → landmarks → expression, head motion."""
