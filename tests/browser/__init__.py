"""End-to-end tests: a real idhub process, real SMTP, headless Chromium (marker ``browser``)."""
