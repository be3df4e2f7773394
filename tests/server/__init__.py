"""Tests of the web app and HTTP API (samkit.server, samkit serve)."""
