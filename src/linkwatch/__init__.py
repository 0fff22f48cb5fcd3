"""LinkWatch: finds where customer journeys break, live, and says whom to re-engage."""

__version__ = "0.1.0"
