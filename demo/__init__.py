"""The multi-host famfs demo (`make demo`) and the cluster harness shared with tests and bench."""
