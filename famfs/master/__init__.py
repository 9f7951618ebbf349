"""The master's tools: allocation, mkfs, the writing session, fsck, verify's PRNG, famfsctl.

Only the master host writes the log. The follower (agent) and the mount (fusefs) never import
this package: tests/test_layering.py keeps that true.
"""
