"""model/crossing package."""
