"""Backup media, jobs, catalogs and reports (issue 7)."""
