"""Tables of the admin API and console."""
