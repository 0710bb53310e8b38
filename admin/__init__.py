"""The admin API (``{base}/api/v1``) and the admin console: IT admins configure idhub without editing files."""
