"""Test helpers shared by the browser and integration suites (a real hub process, a real SMTP sink)."""
