"""mnasdsl test suite."""
